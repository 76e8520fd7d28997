"""The only place that enters a network namespace.

Rule: enter with `entered(path)`, which saves the current namespace and restores it in `finally`.
pycni is single-threaded while inside (setns switches the calling thread only). A netlink socket
opened inside a namespace keeps working on that namespace after we leave it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Iterator

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000    # mount namespace: only the resident helper's child enters one
_libc = None


def _setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(path: str) -> Iterator[int]:
    """Run the block inside the namespace at `path`; yields an open fd of that namespace."""
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    saved = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield target
        finally:
            _setns(saved)
    finally:
        os.close(saved)
        os.close(target)


def exists(path: str) -> bool:
    return bool(path) and os.path.exists(path)
