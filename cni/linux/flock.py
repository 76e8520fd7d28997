"""Exclusive `flock` with a deadline: the one lock-polling loop (the IPAM store's lock and the
xtables lock both use it).

Rule: never block without a deadline. A blocking flock cannot be given one without signals, so poll
a non-blocking attempt with a short exponential backoff; the caller turns a timeout into its own
CNI error.
"""

from __future__ import annotations

import fcntl
import time


def acquire(fd: int, timeout: float, max_delay: float = 0.02) -> bool:
    """Take an exclusive flock on `fd` within `timeout` seconds: True when held, False when the
    deadline passed. Errors other than "held by someone else" propagate as OSError."""
    deadline, delay = time.monotonic() + timeout, 0.0005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
