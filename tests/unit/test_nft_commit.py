"""`nft.CommitWatch`: DEL's removal of a pod from NetworkPolicy sets ends on the kernel's
announcement that the batch is in force (NFT_MSG_NEWGEN naming the committing thread), not when
libnftables' call returns ~9 ms later; another thread's commit, a commit of the element-by-element
fallback, or no announcement at all leave the wait to the thread's end."""

from __future__ import annotations

import socket
import struct
import threading

from cni.firewall.nft import CommitWatch


def newgen(thread_id: int, generation: int = 9, name: bytes = b"pycni\0") -> bytes:
    attrs = struct.pack("HHI", 8, 1, socket.htonl(generation))                  # NFTA_GEN_ID
    attrs += struct.pack("HH", 8, 2) + struct.pack("!I", thread_id)             # NFTA_GEN_PROC_PID
    attrs += struct.pack("HH", 4 + len(name), 3) + name + b"\0" * (-len(name) % 4)  # NFTA_GEN_PROC_NAME
    body = struct.pack("BBH", 0, 0, 0) + attrs                                  # nfgenmsg
    return struct.pack("IHHII", 16 + len(body), CommitWatch.NEWGEN, 0, 0, 0) + body


def delsetelem() -> bytes:
    body = struct.pack("BBH", 1, 0, 0) + struct.pack("HH", 8, 1) + b"t\0\0\0"
    return struct.pack("IHHII", 16 + len(body), (10 << 8) | 14, 0, 0, 0) + body


def test_parsing():
    assert CommitWatch.committed_by(delsetelem() + newgen(4242), 4242)
    assert not CommitWatch.committed_by(delsetelem() + newgen(4243), 4242)
    assert not CommitWatch.committed_by(delsetelem(), 4242)
    assert not CommitWatch.committed_by(b"\x00" * 8, 4242)


class Watch(CommitWatch):
    """The real class over a socketpair: the test writes what the kernel would multicast."""

    def __init__(self):
        self.sock, self.kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)


def test_the_wait_ends_on_the_threads_own_announcement():
    w, finished = Watch(), threading.Event()
    w.kernel.send(delsetelem() + newgen(1))         # someone else's commit
    w.kernel.send(newgen(77))
    assert w.wait(77, finished) is True and not finished.is_set()


def test_another_threads_commit_does_not_count():
    w, finished = Watch(), threading.Event()
    w.kernel.send(newgen(78))
    threading.Timer(0.2, finished.set).start()
    assert w.wait(77, finished) is False and finished.is_set()


def test_no_announcement_leaves_it_to_the_thread():
    w, finished = Watch(), threading.Event()
    threading.Timer(0.1, finished.set).start()
    assert w.wait(77, finished) is False
