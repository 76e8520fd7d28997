"""One call at a time per attachment, across processes: how a DEL waits for (or outlives) an ADD
of the same attachment that is still in flight.

Without the helper a runtime that gives up on an ADD kills the plugin and only then calls DEL, so
the two never overlap. With the helper the ADD runs in the helper's child: the helper kills that
child when its caller hangs up, but the runtime's DEL may reach the helper (or run in process) a
moment earlier, clean up, and the dying ADD could still create a veth after it. So the bridge and
portmap plugins hold an exclusive flock for the whole call, on one of STRIPES lock files chosen by
(plugin, network, container id, ifname): a DEL of that attachment starts only when the ADD has
finished or is dead (the kernel drops a dead process's locks), wherever each of them runs.

The files live in a `calls/` directory beside the helper's socket (default /run/pycni/calls, on
tmpfs); they are never removed (removing a lock file someone waits on breaks the lock), and there
are at most STRIPES of them. Two attachments that share a stripe merely take turns. Nested calls
(the IPAM plugin a bridge ADD delegates to) take no lock, so a process chain holds at most one.
Where the directory cannot be made (read-only /run, no rights), calls run unserialised, as before;
so they do where it is not root's alone (someone else could write it: their symlinks and flocks
must not steer or stall root's calls; the client hands no call to a helper beside it either).
Lock files are opened without following a symlink.
"""

from __future__ import annotations

import os
import stat
import zlib
from contextlib import contextmanager

from cni.linux import flock
from cni.runtime.client import WRITABLE_BY_OTHERS, socket_path
from cni.spec.errors import TryAgainLater
from cni.spec.log import log

STRIPES = 1024
WAIT_SECONDS = 100.0    # an ADD in flight gets this long to finish before a second call gives up


def lock_path(env, plugin: str, network: str, container_id: str, ifname: str) -> str:
    key = zlib.crc32(f"{plugin}\0{network}\0{container_id}\0{ifname}".encode()) % STRIPES
    return os.path.join(os.path.dirname(socket_path(env)), "calls", f"{key:03x}")


class Untrusted(Exception):
    pass


def _open_lock(path: str) -> int:
    """The lock file's fd; Untrusted when its directory (or the file) is not root's alone."""
    d = os.path.dirname(path)
    os.makedirs(d, mode=0o700, exist_ok=True)
    for where in (os.path.dirname(d), d):
        st = os.lstat(where)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & WRITABLE_BY_OTHERS:
            raise Untrusted(f"{where} is not a directory only root can write")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0:
        os.close(fd)
        raise Untrusted(f"{path} is not a file of root's")
    return fd


@contextmanager
def one_call_per_attachment(env, plugin: str, network: str, container_id: str, ifname: str,
                            wait: float = WAIT_SECONDS):
    path = lock_path(env, plugin, network, container_id, ifname)
    try:
        fd = _open_lock(path)
    except Untrusted as e:
        log.warning(f"not serialised with other calls of this attachment: {e}")
        yield
        return
    except OSError as e:
        log.debug(f"not serialised with other calls of this attachment: {path}: {e.strerror}")
        yield
        return
    try:
        if not flock.acquire(fd, wait):
            raise TryAgainLater("another call for this attachment is still running",
                                f"waited {wait:.0f} s for {path}")
        yield
    finally:
        os.close(fd)
