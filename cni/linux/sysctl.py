"""Writes to /proc/sys/net, which always act on the caller's current network namespace."""

from __future__ import annotations

import os


def write(key: str, value: str, missing_ok: bool = True) -> None:
    path = "/proc/sys/" + key.replace(".", "/") if not key.startswith("/") else key
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def iface_key(family: int, ifname: str, knob: str) -> str:
    """`net/ipv4/conf/<if>/<knob>`; path form, since interface names may contain dots."""
    return f"/proc/sys/net/ipv{family}/conf/{ifname}/{knob}"
