"""Waiting on a netlink socket for news of work another thread has under way.

Used where the kernel announces that a change is in force well before the call that made it
returns (a link's RTM_DELLINK: `Rtnl.unregister_link`): the caller reads the socket until a
message says so, or until the other thread's call has returned and nothing is left to read.
"""

from __future__ import annotations

import errno
import select


def read_until(sock, returned, says_done) -> bool:
    """True as soon as `says_done(chunk)` is true for a chunk read from `sock`; False once
    `returned` (a threading.Event the other thread sets when its call is over) is set and the
    socket holds nothing more. A full socket buffer (ENOBUFS: messages dropped) is read past."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while True:
        over = returned.is_set()        # read before polling: once set, whatever the call
        if poller.poll(20):             # produced is queued already
            try:
                chunk = sock.recv(1 << 20)
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                continue
            if says_done(chunk):
                return True
        elif over:
            return False
