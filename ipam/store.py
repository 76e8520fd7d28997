"""The file store: host-local's on-disk layout, so a node can switch between the two.

    <dataDir>/<network>/<ip>                   "<containerID>\\r\\n<ifname>" (old files: id only), 0600
    <dataDir>/<network>/last_reserved_ip.<n>   round-robin cursor of range set n
    <dataDir>/<network>/lock                   flock'ed around every operation
    <dataDir>/<network>/.pycni-reserve         pycni only: a reservation being written
    <dataDir>/<network>/.pycni-held/<key>/a-<ip>   pycni only: the address file's inode, linked
                                               again under its attachment (key: a hash of
                                               "<containerID>\r\n<ifname>")
    <dataDir>/<network>/.pycni-held/complete   every reservation has its link

Rule: `lock()` raises when it cannot lock (TryAgainLater after `timeout`). A reservation appears
whole or not at all: written to `.pycni-reserve`, fsync'ed, then hard-linked to its address name
(the link fails if the name exists, so two writers can never both own an address, even without
the lock). Who holds what is read from the address files themselves: DEL, CHECK, GC and rollback
read every one. ADD only asks whether the attachment holds anything already, and on a node with
500 pods reading 500 files was a third of its IPAM time; it may ask the attachment's links instead
(`held_by(..., exhaustive=False)`), each trusted only while it is the very inode at the address's
name: a link left by a crash, or an address since released and taken again, is a different inode
(or none) and does not count. The links are made before the address name (so every reservation
made here has one) and removed with it; a directory without `complete` (written by host-local or
an older pycni) gets its links from one full scan first. Reservations host-local writes into it
afterwards have no link; that matters only to ADD's question about the very attachment host-local
reserved for (the same pod ADDed again through pycni would get a second address, both released by
its DEL, which reads every file). No address is ever handed out twice, since that rests on the
address names, never on the links: a node switches between the two in both directions, each
releasing what the other reserved (tests/migration/test_switch.py).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
from typing import Iterator, Protocol

from cni.linux.flock import acquire
from cni.spec.log import log
from cni.spec.names import sha256_hex
from cni.spec.errors import IOFailure, TryAgainLater

from ipam.config import IPAddress

LOCK_NAME = "lock"
CURSOR_PREFIX = "last_reserved_ip."
SCRATCH = ".pycni-reserve"
INDEX = ".pycni-held"
COMPLETE = "complete"
LINK_PREFIX = "a-"       # not an address: host-local's scans (GetByID) never take it for one
# Every file of the store is opened without following a symlink: the store is root's, and a name
# in it that is a symlink was not made by pycni (host-local follows them: a local user's symlink
# at last_reserved_ip.0 had root truncate the file it named).
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class Store(Protocol):
    def present(self) -> bool: ...
    def lock(self, create: bool = True) -> contextlib.AbstractContextManager: ...
    def held_by(self, container_id: str, ifname: str, exhaustive: bool = True) -> list[IPAddress]: ...
    def reserve(self, ip: IPAddress, container_id: str, ifname: str, set_index: int) -> bool: ...
    def last_reserved(self, set_index: int) -> IPAddress | None: ...
    def release(self, ip: IPAddress) -> None: ...
    def holders(self) -> dict[IPAddress, tuple[str, str]]: ...
    def forget(self, container_id: str, ifname: str) -> None: ...
    def prune(self) -> None: ...


def _attachment_key(container_id: str, ifname: str) -> str:
    return sha256_hex(f"{container_id}\r\n{ifname}")[:32]


def _read(path: str, size: int = 4096) -> bytes:
    fd = os.open(path, os.O_RDONLY | NOFOLLOW)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _parse_holder(text: str) -> tuple[str, str]:
    parts = text.strip().split("\r\n" if "\r\n" in text else "\n", 1)
    cid = parts[0].strip()
    ifname = parts[1].strip() if len(parts) > 1 else ""
    return cid, ifname


def holds(holder: tuple[str, str], container_id: str, ifname: str) -> bool:
    """Whether a reservation whose holder `holders()` read as `holder` is the attachment's: an
    id-only file (host-local's old format) is held by its container whatever the interface. DEL
    (`held_by`), GC and `pycni inspect` all read holders so."""
    return holder[0] == container_id and holder[1] in (ifname, "")


class DiskStore:
    def __init__(self, network_dir: str, lock_timeout: float = 60.0):
        self.dir = network_dir
        self.lock_timeout = lock_timeout

    _safe = False

    def _ensure_dir(self) -> None:
        if self._safe:
            return
        try:
            os.makedirs(self.dir, mode=0o755, exist_ok=True)
        except OSError as e:
            raise IOFailure("cannot create IPAM data directory", f"{self.dir}: {e.strerror}") from None
        why = self.unsafe()
        if why:
            raise IOFailure("unsafe IPAM data directory", why)
        self._safe = True

    def unsafe(self) -> str:
        """'' when the data dir and the network's dir are this user's (root's) and nobody else can
        write them; else why not. Someone who can write either can plant names in the store."""
        for path in (os.path.dirname(os.path.abspath(self.dir)), self.dir):
            try:
                st = os.stat(path)
            except OSError as e:
                return f"{path}: {e.strerror}"
            if st.st_uid != os.geteuid():
                return (f"{path} is owned by uid {st.st_uid}, not {os.geteuid()}: only the user the "
                        "plugin runs as (root) may own the IPAM store")
            if st.st_mode & 0o022:
                return (f"{path} is writable by group or others (mode {st.st_mode & 0o7777:o}): "
                        "chmod go-w it, or choose another dataDir")
        return ""

    def present(self) -> bool:
        """Whether the network's data dir exists (a dangling symlink does not) and is one the store
        may use: DEL finds nothing in a directory ADD refuses (so it never wrote there)."""
        if not os.path.isdir(self.dir):
            return False
        why = self.unsafe()
        if why:
            log.warning(f"IPAM: not reading {self.dir}: {why}")
            return False
        return True

    @contextlib.contextmanager
    def lock(self, create: bool = True) -> Iterator[None]:
        """Hold the network's lock. With create=False (DEL) nothing is created: without a lock file
        no writer ever reserved here (each takes the lock first), so there is nothing to guard."""
        path = os.path.join(self.dir, LOCK_NAME)
        if create:
            self._ensure_dir()
        try:
            fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0) | NOFOLLOW, 0o600)
        except FileNotFoundError:
            if create:
                raise IOFailure("cannot open IPAM lock", f"{path}: no such file or directory") from None
            yield
            return
        except OSError as e:
            raise IOFailure("cannot open IPAM lock", f"{path}: {e.strerror}") from None
        try:
            try:
                held = acquire(fd, self.lock_timeout)
            except OSError as e:
                raise IOFailure("cannot lock IPAM store", f"{path}: {e.strerror}") from None
            if not held:
                raise TryAgainLater("IPAM store is busy", f"could not lock {path} in {self.lock_timeout:g}s")
            try:        # a scratch file seen under the lock belongs to a writer that was killed
                os.unlink(os.path.join(self.dir, SCRATCH))
            except OSError:
                pass
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _path(self, ip: IPAddress) -> str:
        return os.path.join(self.dir, str(ip))

    def reserve(self, ip: IPAddress, container_id: str, ifname: str, set_index: int) -> bool:
        """Create the address file, whole: False if the address is taken."""
        self._ensure_dir()
        scratch = os.path.join(self.dir, SCRATCH)
        try:
            fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW, 0o600)
            try:
                os.write(fd, f"{container_id}\r\n{ifname}".encode())
                os.fsync(fd)
            except OSError:
                os.unlink(scratch)      # a full disk: leave nothing behind
                raise
            finally:
                os.close(fd)
            try:
                link = self._link_attachment(scratch, ip, container_id, ifname)
                if link is None:
                    return False
                try:
                    os.link(scratch, self._path(ip))
                except FileExistsError:
                    self._unlink_attachment(link)
                    return False
            finally:
                os.unlink(scratch)
        except OSError as e:
            raise IOFailure("cannot reserve address", f"{self._path(ip)}: {e.strerror}") from None
        self._write_cursor(set_index, ip)
        return True

    def _write_cursor(self, set_index: int, ip: IPAddress) -> None:
        path = os.path.join(self.dir, f"{CURSOR_PREFIX}{set_index}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW, 0o644)
            try:
                os.write(fd, str(ip).encode())
            finally:
                os.close(fd)
        except OSError:
            pass  # the cursor is only a hint for round-robin

    def last_reserved(self, set_index: int) -> IPAddress | None:
        try:
            return ipaddress.ip_address(_read(os.path.join(self.dir, f"{CURSOR_PREFIX}{set_index}"), 64)
                                        .decode().strip())
        except (OSError, ValueError, UnicodeDecodeError):
            return None

    def release(self, ip: IPAddress) -> None:
        path = self._path(ip)
        try:
            holder = _parse_holder(_read(path).decode(errors="replace"))
        except OSError:
            holder = None
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise IOFailure("cannot release address", f"{path}: {e.strerror}") from None
        if holder is not None:
            self._unlink_attachment(self._link_path(ip, *holder))

    # ------------------------------------------------------------ the attachments' links

    def _link_path(self, ip: IPAddress, container_id: str, ifname: str) -> str:
        return os.path.join(self.dir, INDEX, _attachment_key(container_id, ifname), f"{LINK_PREFIX}{ip}")

    def _link_attachment(self, source: str, ip: IPAddress, container_id: str, ifname: str) -> str | None:
        """Link `source` as the attachment's link to `ip`; None when its link to the address
        already stands (then the address is held, by this very attachment)."""
        link = self._link_path(ip, container_id, ifname)
        os.makedirs(os.path.dirname(link), mode=0o700, exist_ok=True)
        try:
            os.link(source, link)
        except FileExistsError:
            if self._current(link, ip):
                return None
            os.unlink(link)         # left by a crash: a stale inode, replaced
            os.link(source, link)
        return link

    def _current(self, link: str, ip: IPAddress) -> bool:
        """Whether `link` is the inode at the address's name right now."""
        try:
            mine, current = os.stat(link), os.stat(self._path(ip))
        except OSError:
            return False
        return (mine.st_ino, mine.st_dev) == (current.st_ino, current.st_dev)

    def _unlink_attachment(self, link: str) -> None:
        try:
            os.unlink(link)
        except OSError:
            pass
        try:
            os.rmdir(os.path.dirname(link))     # the attachment's last one
        except OSError:
            pass

    def _current_links(self, folder: str) -> list[IPAddress]:
        """The addresses of one attachment's folder whose links are still their address files;
        the others (released since, maybe taken by another, or junk) are removed, and so is the
        folder once nothing is left in it."""
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise IOFailure("cannot read IPAM index", f"{folder}: {e.strerror}") from None
        out = []
        for name in names:
            link = os.path.join(folder, name)
            try:
                ip = ipaddress.ip_address(name[len(LINK_PREFIX):])
            except ValueError:
                ip = None
            if ip is not None and self._current(link, ip):
                out.append(ip)
            else:
                self._unlink_attachment(link)
        if not names:       # left empty by a crash between making it and linking into it
            try:
                os.rmdir(folder)
            except OSError:
                pass
        return out

    def _linked(self, container_id: str, ifname: str) -> list[IPAddress]:
        """The attachment's addresses by its links, each checked against the address name."""
        return [ip for key in {_attachment_key(container_id, ifname), _attachment_key(container_id, "")}
                for ip in self._current_links(os.path.join(self.dir, INDEX, key))]

    def forget(self, container_id: str, ifname: str) -> None:
        """After DEL released the attachment's addresses: drop its links a crash left behind."""
        self._linked(container_id, ifname)

    def prune(self) -> None:
        """GC: drop every link that is no longer its address file (left by crashes)."""
        top = os.path.join(self.dir, INDEX)
        try:
            keys = [k for k in os.listdir(top) if k != COMPLETE]
        except OSError:
            return
        for key in keys:
            try:
                self._current_links(os.path.join(top, key))
            except IOFailure:
                continue

    def _link_every_reservation(self) -> None:
        """Once per directory without `complete`: give every reservation its link (under the lock)."""
        for ip, (container_id, ifname) in self.holders().items():
            try:
                self._link_attachment(self._path(ip), ip, container_id, ifname)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise IOFailure("cannot write IPAM index", f"{self.dir}/{INDEX}: {e.strerror}") from None
        marker = os.path.join(self.dir, INDEX, COMPLETE)
        try:
            os.makedirs(os.path.dirname(marker), mode=0o700, exist_ok=True)
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | NOFOLLOW, 0o600))
        except OSError as e:
            raise IOFailure("cannot write IPAM index", f"{marker}: {e.strerror}") from None

    def holders(self) -> dict[IPAddress, tuple[str, str]]:
        out: dict[IPAddress, tuple[str, str]] = {}
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return out
        except OSError as e:
            raise IOFailure("cannot read IPAM data directory", f"{self.dir}: {e.strerror}") from None
        for entry in entries:
            name = entry.name
            if name == LOCK_NAME or name.startswith(CURSOR_PREFIX) or name.startswith("."):
                continue    # the lock, round-robin cursors, our index directory
            try:
                ip = ipaddress.ip_address(name)
            except ValueError:
                continue
            try:
                text = _read(entry.path).decode(errors="replace")
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ELOOP):
                    continue
                raise IOFailure("cannot read reservation", f"{entry.path}: {e.strerror}") from None
            out[ip] = _parse_holder(text)
        return out

    def held_by(self, container_id: str, ifname: str, exhaustive: bool = True) -> list[IPAddress]:
        """Every address held by the attachment (host-local's id-only files included), read from
        the address files: a scan that compares bytes and parses only what matches (about 3.5 us
        a file here, ~2 ms at 500 pods). `exhaustive=False` (ADD, under the lock): from the
        attachment's links instead, made first for a directory that has none."""
        if not exhaustive and os.path.isdir(self.dir):
            if not os.path.exists(os.path.join(self.dir, INDEX, COMPLETE)):
                self._link_every_reservation()
            return self._linked(container_id, ifname)
        whole, legacy = f"{container_id}\r\n{ifname}".encode(), container_id.encode()
        out = []
        try:
            dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return out
        except OSError as e:
            raise IOFailure("cannot read IPAM data directory", f"{self.dir}: {e.strerror}") from None
        try:
            for name in os.listdir(dir_fd):
                if name == LOCK_NAME or name.startswith((CURSOR_PREFIX, ".")):
                    continue
                try:
                    fd = os.open(name, os.O_RDONLY | NOFOLLOW, dir_fd=dir_fd)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    if e.errno == errno.ELOOP:
                        continue        # a symlink: not a reservation pycni or host-local wrote
                    raise IOFailure("cannot read reservation", f"{self.dir}/{name}: {e.strerror}") from None
                try:
                    data = os.read(fd, 4096)
                finally:
                    os.close(fd)
                if not data.startswith(legacy):
                    continue            # the common case: someone else's, decided on bytes alone
                if data not in (whole, legacy) and _parse_holder(data.decode(errors="replace")) not in (
                        (container_id, ifname), (container_id, "")):
                    continue
                try:
                    out.append(ipaddress.ip_address(name))
                except ValueError:
                    continue
        finally:
            os.close(dir_fd)
        return out

    def writable(self) -> str:
        """'' when reservations can be written here, else why not."""
        try:
            self._ensure_dir()
        except IOFailure as e:
            return str(e)
        if not os.access(self.dir, os.W_OK | os.X_OK):
            return f"{self.dir} is not writable"
        return ""
