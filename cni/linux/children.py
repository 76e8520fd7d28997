"""Children that must not outlive a killed plugin.

A runtime that kills a plugin (its deadline passed, the pod was cancelled) runs DEL next. A child
still running then, an `nft` transaction or the IPv6 half of an iptables update, would commit after
that DEL and leave rules that nobody owns. So each such child asks the kernel to kill it with its
parent (PR_SET_PDEATHSIG), and leaves at once if the parent is already gone.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal

PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl   # looked up before any fork


def die_with(parent: int, sig: int = signal.SIGKILL) -> None:
    """In a forked child: get `sig` when `parent` dies (SIGKILL unless told); exit now if it
    already has. The kernel ties this to the parent *thread* that forked: fork from a thread that
    lives as long as the child should."""
    _prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def tied_to_me(sig: int = signal.SIGKILL):
    """A `preexec_fn` for subprocess: the program runs only as long as this process lives."""
    return functools.partial(die_with, os.getpid(), sig)
