"""`pycni install`: put the frozen executable into a CNI bin dir and a conflist into a conf dir,
so that a runtime never sees a half-written file.

Layout in the bin dir (one-directory build, see README):

    BIN/.pycni/<version>-<digest>/pycni        the executable (PyInstaller's bootloader)
    BIN/.pycni/<version>-<digest>/pycni-launch the same program as a script for the build's own
                                               interpreter (_internal/bin/python3.11, no bootloader:
                                               ~4 ms less per call), written here with its path
    BIN/.pycni/<version>-<digest>/_internal/   Python and the libraries it loads
    BIN/pycni, BIN/pycni-ipam, BIN/pycni-portmap, BIN/pycni-bandwidth, BIN/pycni-loopback ->  .pycni/<id>/pycni-launch
    BIN/loopback  ->  the same, unless BIN already has a loopback plugin of its own

The launcher's first line names its interpreter by absolute path, as the node sees it: installing
into a directory that the node mounts elsewhere (an image root, a container's view of the host)
needs `--node-bin-dir`. Where that path would be too long for a `#!` line, or the build has no
interpreter of its own, the names point at the bootloader executable instead.

A new version is copied to a temporary directory and renamed into place; each name in BIN is then
switched with a symlink written under a temporary name and renamed over the old one (rename is
atomic, so an exec sees the old build or the new one, never "text file busy" or a partial file).
The previous build is kept (a process may be starting from it); older ones are removed.

Whatever the umask and the build's own modes, everything the installer creates is the installing
user's (root's) with explicit modes: directories 0755, executables 0755, other files 0644, the
build being copied 0700 until it is complete. A store or build directory someone else owns or can
write is refused or replaced, never used: root execs these files for every CNI call.

The conflist is written as `<name>.temp` (a name runtimes do not load) and renamed to its final
`.conflist` name, because runtimes pick the first config file in lexical order as soon as it appears.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
import shutil
import stat
import subprocess
import time
from typing import Any, Mapping

from cni.bandwidth import options as bandwidth
from cni.bridge import config
from cni.firewall.options import parse_options
from cni.spec.errors import CNIError, InvalidConfig
from cni.spec.version import PYCNI, SUPPORTED
from cni.tools.driver import load_conflist

NAMES = ("pycni", "pycni-ipam", "pycni-portmap", "pycni-bandwidth", "pycni-loopback")
LOOPBACK = "loopback"        # containerd's CRI runs it for every pod; installed only where none is
STORE = ".pycni"
EXE = "pycni"
KEEP = 2                     # the installed build and the one before it
# A build neither installed nor the one before it is retired, and removed only this long after:
# a CNI call started from it may still be running (runtimes give a call minutes, pycni's own
# deadlines are under one), and it loads modules from its directory as it goes.
RETIRE_GRACE_SECONDS = 900
RETIRED = ".retired"
STALE_TMP_SECONDS = 3600     # temporary dirs of an installer that died
INTERPRETER = "_internal/bin/python3.11"   # the build's own interpreter (build/build.sh adds it)
LAUNCHER = "pycni-launch"
MAX_SHEBANG = 255            # bytes the kernel reads of a `#!` line (BINPRM_BUF_SIZE - 1)


DIR_MODE, EXE_MODE, FILE_MODE = 0o755, 0o755, 0o644


def _own(path, mode: int | None) -> None:
    """`mode` (None: a symlink, whose mode means nothing) and, as root, owner root:root."""
    if mode is not None:
        os.chmod(path, mode, follow_symlinks=False)
    if os.geteuid() == 0:
        os.lchown(path, 0, 0)


def make_dirs(path: Path) -> None:
    """`mkdir -p` with every directory it creates DIR_MODE and the user's (the umask plays no part)."""
    missing = []
    p = Path(path)
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        _own(d, DIR_MODE)


def _seal_tree(root: Path) -> None:
    """Give a copied tree explicit modes (copytree keeps the source's, umask 000 ones included)."""
    for dirpath, dirnames, filenames in os.walk(root):
        _own(dirpath, DIR_MODE if dirpath != str(root) else 0o700)
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if os.path.islink(path):
                _own(path, None)
            elif name in filenames:
                _own(path, EXE_MODE if st.st_mode & 0o100 else FILE_MODE)


def running_bundle() -> Path | None:
    """The one-directory build this process runs from (bootloader or launcher), if any: the
    directory above the `_internal/` that holds this very package."""
    internal = Path(__file__).resolve().parents[2]
    if internal.name == "_internal" and (internal.parent / EXE).is_file():
        return internal.parent
    return None


def launcher_text(interpreter: str) -> str:
    return (f"#!{interpreter}\n"
            f"# pycni {PYCNI}, written by `pycni install`: the build's own interpreter runs the plugin\n"
            "# named by the path it was started as (pycni, pycni-ipam, pycni-portmap, loopback)\n"
            "import sys\n"
            "from cni.entry import by_name\n"
            "sys.exit(by_name(sys.argv[0]))\n")


def _write_launcher(build_dir: Path, node_build_dir: Path) -> bool:
    """Write (or rewrite, atomically) the launcher for the build at `build_dir`, which the node
    sees at `node_build_dir`. False when this build cannot have one."""
    if not (build_dir / INTERPRETER).is_file():
        return False
    text = launcher_text(str(node_build_dir / INTERPRETER))
    if len(text.split("\n", 1)[0].encode()) > MAX_SHEBANG:
        return False
    path = build_dir / LAUNCHER
    try:
        if path.read_text() == text:
            return True
    except OSError:
        pass
    tmp = build_dir / f".{LAUNCHER}.{os.getpid()}"
    _write_file(tmp, text.encode(), EXE_MODE)
    os.replace(tmp, path)
    return True


def _write_file(path: Path, data: bytes, mode: int, sync: bool = False) -> None:
    """A new file (a leftover of that name is removed first, never followed) with `mode`."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        if os.geteuid() == 0:
            os.fchown(fd, 0, 0)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def bundle_id(bundle: Path) -> str:
    """`<version>-<digest>` of the files that make up the build (same files, same id)."""
    h = hashlib.sha256()
    for path in sorted(_bundle_files(bundle)):
        rel = path.relative_to(bundle).as_posix()
        h.update(rel.encode() + b"\0")
        if path.is_symlink():
            h.update(b"L" + os.readlink(path).encode())
        else:
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        h.update(b"\0")
    return f"{PYCNI}-{h.hexdigest()[:12]}"


def _bundle_files(bundle: Path) -> list[Path]:
    files = [bundle / EXE]
    internal = bundle / "_internal"
    if internal.is_dir():
        files += [p for p in internal.rglob("*") if p.is_file() or p.is_symlink()]
    return files


def _check_bundle(bundle: Path) -> None:
    exe = bundle / EXE
    if not (exe.is_file() and os.access(exe, os.X_OK) and (bundle / "_internal").is_dir()):
        raise InvalidConfig("not a pycni build", f"{bundle} has no executable {EXE} and _internal/ "
                                                 "(build one with `make build`)")


def install_binaries(bundle: Path, bin_dir: Path, names: tuple[str, ...] = NAMES + (LOOPBACK,),
                     node_bin_dir: Path | None = None) -> Path:
    """Install `bundle` (a dist/pycni directory) into `bin_dir` (which the node sees as
    `node_bin_dir`, by default the same path); returns the installed executable's name."""
    _check_bundle(bundle)
    store = bin_dir / STORE
    make_dirs(bin_dir)
    _own_store(store)
    build = bundle_id(bundle)
    target = store / build
    if target.is_dir() and not target.is_symlink() and _tampered(target):
        shutil.rmtree(target)           # someone else could write it: copied afresh
    if not (target / EXE).is_file():
        tmp = store / f".tmp-{build}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        _own(tmp, 0o700)
        shutil.copy2(bundle / EXE, tmp / EXE)
        shutil.copytree(bundle / "_internal", tmp / "_internal", symlinks=True)
        _seal_tree(tmp)
        _sync_tree(tmp)
        _own(tmp, DIR_MODE)
        try:
            os.rename(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)   # a concurrent installer put the same build there
            if not (target / EXE).is_file():
                raise
    ours = [n for n in names if n != LOOPBACK]
    if LOOPBACK in names and _ours_or_absent(bin_dir / LOOPBACK):
        ours.append(LOOPBACK)
    previous = {_link_build(bin_dir / n) for n in ours} - {None, build}
    # written (or rewritten for another node path) here, for a new build and a present one alike
    launch = _write_launcher(target, Path(node_bin_dir or bin_dir).absolute() / STORE / build)
    relative = f"{STORE}/{build}/{LAUNCHER if launch else EXE}"
    for name in ours:
        _replace_symlink(bin_dir / name, relative)
    _fsync_dir(bin_dir)
    _prune(store, keep={build, *previous})
    return bin_dir / names[0]


def _own_store(store: Path) -> None:
    """BIN/.pycni: made DIR_MODE; an existing one must be the user's, and loses group/other write."""
    try:
        st = os.lstat(store)
    except FileNotFoundError:
        store.mkdir(mode=DIR_MODE)
        _own(store, DIR_MODE)
        return
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise CNIError("unsafe install directory", f"{store} is not a directory of uid {os.geteuid()} "
                       f"(uid {st.st_uid}, mode {st.st_mode & 0o7777:o}): remove it and install again")
    if st.st_mode & 0o022:
        _own(store, DIR_MODE)


def _tampered(build: Path) -> bool:
    """Whether anything in an installed build is another user's or writable by group/others."""
    for dirpath, dirnames, filenames in os.walk(build):
        for path in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
            st = os.lstat(path)
            if (st.st_uid != os.geteuid()) or (not os.path.islink(path) and st.st_mode & 0o022):
                return True
    return False


def _ours_or_absent(path: Path) -> bool:
    return not os.path.lexists(path) or _link_build(path) is not None


def _link_build(link: Path) -> str | None:
    try:
        parts = Path(os.readlink(link)).parts
    except OSError:
        return None
    return parts[1] if len(parts) == 3 and parts[0] == STORE else None


def _replace_symlink(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    os.symlink(target, tmp)
    _own(tmp, None)
    os.replace(tmp, link)


def _prune(store: Path, keep: set[str]) -> None:
    """Retire builds no name points at any more (keeping `keep`, at most KEEP newest of them), and
    remove those retired more than RETIRE_GRACE_SECONDS ago."""
    now = time.time()
    builds = []
    for entry in store.iterdir():
        if entry.name.startswith(".tmp-"):
            if now - entry.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_dir():
            builds.append(entry)
    builds.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    kept = [b for b in builds if b.name in keep][:KEEP]
    for b in builds:
        if b in kept:
            try:
                os.unlink(b / RETIRED)          # in use again (a downgrade): not retired any more
            except FileNotFoundError:
                pass
            continue
        marker = b / RETIRED
        try:
            retired_at = marker.stat().st_mtime
        except FileNotFoundError:
            _write_file(marker, b"", FILE_MODE)
            continue
        if now - retired_at > RETIRE_GRACE_SECONDS:
            shutil.rmtree(b, ignore_errors=True)


def _sync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ conflist


def validate_conflist(conf: Mapping[str, Any]) -> None:
    """What a runtime would reject, and pycni's own plugins' configs, before anything is written."""
    for key in ("name", "cniVersion"):
        if not isinstance(conf.get(key), str) or not conf[key]:
            raise InvalidConfig("invalid network configuration", f"missing {key!r}")
    if conf["cniVersion"] not in SUPPORTED:
        raise InvalidConfig("invalid network configuration",
                            f"cniVersion {conf['cniVersion']!r} not in {', '.join(SUPPORTED)}")
    for plugin in conf["plugins"]:
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str):
            raise InvalidConfig("invalid network configuration", "every plugin needs a \"type\"")
        full = {**plugin, "name": conf["name"], "cniVersion": conf["cniVersion"]}
        try:
            if plugin["type"] == "pycni":
                config.parse(full, {})
            elif plugin["type"] == "pycni-portmap":
                parse_options(full)
            elif plugin["type"] == "pycni-bandwidth":
                bandwidth.parse(full)
        except InvalidConfig:
            raise
        except CNIError as e:       # the shaping options' refusals carry the reference's code 999
            raise InvalidConfig(e.msg, e.details) from None


def conflist_filename(source: str, name: str | None = None) -> str:
    base = name or os.path.basename(source)
    stem = base.rsplit(".", 1)[0] if base.endswith((".conf", ".conflist", ".json", ".yaml", ".yml")) else base
    if not stem or "/" in stem or stem.startswith("."):
        raise InvalidConfig("invalid conflist file name", repr(base))
    return f"{stem}.conflist"


def install_conflist(conf: Mapping[str, Any], conf_dir: Path, filename: str) -> Path:
    validate_conflist(conf)
    make_dirs(conf_dir)
    final = conf_dir / filename
    tmp = conf_dir / f"{filename}.temp"
    _write_file(tmp, (json.dumps(conf, indent=2) + "\n").encode(), FILE_MODE, sync=True)
    os.replace(tmp, final)
    _fsync_dir(conf_dir)
    return final


HELPER_UNIT = "pycni-helper.service"


def helper_unit(bin_dir: Path, socket: str) -> str:
    """The systemd unit of the resident helper for a hand-made node. The helper is started as the
    bin dir's `pycni`, the name runtimes execute: it then serves exactly the installed build, and
    re-executes itself when a later `pycni install` switches that name to a new build."""
    return f"""[Unit]
Description=pycni resident helper (faster pod starts; CNI calls run in process without it)
After=local-fs.target
Before=containerd.service crio.service

[Service]
ExecStart={bin_dir / EXE} helper --socket {socket}
Restart=always
RestartSec=1
# a stop or restart signals the helper only: calls it is serving finish in their own processes
KillMode=process
# pod starts must never wait for it: out of memory, it goes first
OOMScoreAdjust=500

[Install]
WantedBy=multi-user.target
"""


def install_helper_unit(bin_dir: Path, unit_dir: Path, socket: str) -> list[str]:
    """Write the unit (atomically) and, where systemd runs, enable and (re)start it."""
    make_dirs(unit_dir)
    path = unit_dir / HELPER_UNIT
    tmp = unit_dir / f".{HELPER_UNIT}.{os.getpid()}"
    _write_file(tmp, helper_unit(bin_dir, socket).encode(), FILE_MODE)
    os.replace(tmp, path)
    done = [str(path)]
    if os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
        for cmd in (["systemctl", "daemon-reload"], ["systemctl", "enable", HELPER_UNIT],
                    ["systemctl", "restart", HELPER_UNIT]):
            subprocess.run(cmd, check=True, timeout=60)
        done.append(f"{HELPER_UNIT} enabled and started")
    else:
        done.append(f"{HELPER_UNIT} not enabled: systemd is not running here "
                    f"(start `{bin_dir / EXE} helper --socket {socket}` as the node's init does)")
    return done


def main(bin_dir: str, conf_dir: str, conflist: str | None, source: str | None,
         conf_name: str | None, helper_unit_dir: str | None = None,
         helper_socket: str = "/run/pycni/helper.sock", node_bin_dir: str | None = None) -> list[str]:
    """The `pycni install` command; returns what it did, one line per installed file."""
    bundle = Path(source) if source else running_bundle()
    if bundle is None:
        raise CNIError("pycni install needs the self-contained build",
                       "run dist/pycni/pycni install ... (make build), or pass --from dist/pycni")
    done = []
    conf = None
    if conflist:
        conf = load_conflist(conflist)
        validate_conflist(conf)          # before the binaries: a bad conflist changes nothing
    exe = install_binaries(bundle.resolve(), Path(bin_dir), node_bin_dir=Path(node_bin_dir) if node_bin_dir else None)
    also = [n for n in NAMES[1:] + (LOOPBACK,) if _link_build(Path(bin_dir) / n)]
    done.append(f"{exe} -> {os.readlink(exe)} (also {', '.join(also)})")
    if LOOPBACK not in also:
        done.append(f"kept {Path(bin_dir) / LOOPBACK}: it is another vendor's loopback plugin")
    if conf is not None:
        done.append(str(install_conflist(conf, Path(conf_dir), conflist_filename(conflist, conf_name))))
    if helper_unit_dir:
        done += install_helper_unit(Path(node_bin_dir or bin_dir).absolute(), Path(helper_unit_dir), helper_socket)
    return done
