"""Exclusive `flock` with a deadline: the one lock wait (the IPAM store's lock and the xtables lock
both use it).

Rule: never block without a deadline, and wait in the kernel's queue, not by polling: a poller
that sleeps between tries loses the lock to every newcomer, and under load (64 ADDs at once on
legacy iptables, where every commit rewrites the table) some callers starved past their deadline.
So the wait is a blocking flock interrupted by a timer (setitimer) at the deadline. Where no
timer can be set (a thread other than the main one), it falls back to polling with a short
backoff. The caller turns a timeout into its own CNI error.
"""

from __future__ import annotations

import fcntl
import signal
import sys
import time


class _Deadline(Exception):
    pass


def acquire(fd: int, timeout: float, max_delay: float = 0.02) -> bool:
    """Take an exclusive flock on `fd` within `timeout` seconds: True when held, False when the
    deadline passed. Errors other than "held by someone else" propagate as OSError."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        pass
    threading = sys.modules.get("threading")       # no threads without it: then we are the main one
    if threading is not None and threading.current_thread() is not threading.main_thread():
        return _poll(fd, timeout, max_delay)
    waiting = [True]

    def at_deadline(signum, frame):
        if waiting[0]:                      # once the lock is ours, the timer no longer matters
            raise _Deadline()

    previous = signal.signal(signal.SIGALRM, at_deadline)
    try:
        signal.setitimer(signal.ITIMER_REAL, max(timeout, 0.001))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            waiting[0] = False
            return True
        except _Deadline:
            return False        # (if the lock was taken at that very instant, closing fd drops it)
    finally:
        waiting[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _poll(fd: int, timeout: float, max_delay: float) -> bool:
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
