"""`Rtnl.unregister_link`: DEL's veth deletion ends on the kernel's RTM_DELLINK notification (or the
request's reply), not when the deleting call returns; when messages were lost, the call's return
and a lookup decide. Driven against a fake netlink socket that behaves as the kernel's does: the
request is processed inside `send` (which blocks until the "kernel" is done), replies and
multicast notifications are queued on the socket, notifications only while subscribed."""

from __future__ import annotations

import errno
import socket
import struct
import threading
import time

import pytest

from cni.linux import rtnl
from cni.linux.rtnl import NetlinkError, Rtnl

HDR = struct.Struct("IHHII")
IFINFO = struct.Struct("BxHiII")


def header(kind: int, payload: bytes, seq: int = 0, flags: int = 0) -> bytes:
    return HDR.pack(HDR.size + len(payload), kind, flags, seq, 0) + payload


def dellink(index: int, family: int = 0) -> bytes:
    return header(rtnl.RTM_DELLINK, IFINFO.pack(family, 1, index, 0, 0))


def error(seq: int, code: int) -> bytes:
    return header(rtnl.NLMSG_ERROR, struct.pack("i", -code) + HDR.pack(32, 0, 0, seq, 0), seq=seq)


class FakeKernel:
    """The socket `Rtnl` talks to. `script(kernel, kind, seq, index)` plays the kernel's part for
    each request, inside `send`, like netlink does."""

    def __init__(self, script):
        self.mine, self.kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.script = script
        self.groups: set[int] = set()
        self.links = {7}
        self.inside_send = threading.Event()

    # the socket API Rtnl uses
    def fileno(self) -> int:
        return self.mine.fileno()

    def recv(self, size: int) -> bytes:
        return self.mine.recv(size)

    def setsockopt(self, level, option, value) -> None:
        if level == rtnl.SOL_NETLINK and option == rtnl.NETLINK_ADD_MEMBERSHIP:
            self.groups.add(value)
        elif level == rtnl.SOL_NETLINK and option == rtnl.NETLINK_DROP_MEMBERSHIP:
            self.groups.discard(value)

    def send(self, data: bytes) -> int:
        _, kind, _, seq, _ = HDR.unpack_from(data)
        index = IFINFO.unpack_from(data, HDR.size)[2]
        if kind == rtnl.RTM_GETLINK:
            if index in self.links:
                msg = rtnl.ifinfmsg()
                msg["header"]["type"], msg["header"]["sequence_number"] = rtnl.RTM_NEWLINK, seq
                msg["index"], msg["attrs"] = index, [("IFLA_IFNAME", "vh0")]
                msg.encode()
                self.reply(msg.data)
            else:
                self.reply(error(seq, errno.ENODEV))
        else:
            self.inside_send.set()
            self.script(self, kind, seq, index)
        return len(data)

    # the kernel's side
    def reply(self, message: bytes) -> None:
        self.kernel.send(message)

    def notify(self, message: bytes) -> None:
        if rtnl.RTNLGRP_LINK in self.groups:
            self.kernel.send(message)


def rtnl_on(kernel: FakeKernel) -> Rtnl:
    r = Rtnl.__new__(Rtnl)
    r.sock, r.seq = kernel, 0
    return r


def test_returns_on_the_notification_while_the_deleting_call_is_still_in_the_kernel():
    release = threading.Event()

    def script(k, kind, seq, index):
        k.links.discard(index)
        k.notify(dellink(index, family=7))     # a bridge port's notice first: not the link's own
        k.notify(dellink(index + 1))           # another link's
        k.notify(dellink(index))
        release.wait(5)                        # RCU and references: the call has not returned
        k.reply(error(seq, 0))

    k = FakeKernel(script)
    started = time.monotonic()
    rtnl_on(k).unregister_link(7)
    assert time.monotonic() - started < 2 and not release.is_set()
    assert k.groups == set()                   # unsubscribed again
    release.set()


def test_an_early_sibling_notice_alone_does_not_end_the_wait():
    done = threading.Event()

    def script(k, kind, seq, index):
        k.notify(dellink(index, family=7))
        time.sleep(0.3)
        done.set()
        k.reply(error(seq, 0))

    rtnl_on(FakeKernel(script)).unregister_link(7)
    assert done.is_set()


def test_the_requests_error_is_raised():
    def script(k, kind, seq, index):
        k.reply(error(seq, errno.EPERM))

    with pytest.raises(NetlinkError) as e:
        rtnl_on(FakeKernel(script)).unregister_link(7)
    assert e.value.code == errno.EPERM


@pytest.mark.parametrize("deleted", [True, False])
def test_lost_messages_the_calls_return_and_a_lookup_decide(deleted):
    def script(k, kind, seq, index):   # a full receive buffer: no notice, no reply reach us
        if deleted:
            k.links.discard(index)
        time.sleep(0.1)

    k = FakeKernel(script)
    if deleted:
        rtnl_on(k).unregister_link(7)
    else:
        with pytest.raises(NetlinkError, match="still there"):
            rtnl_on(k).unregister_link(7)
    assert k.inside_send.is_set() and k.groups == set()


def test_parsing_a_batch_of_messages():
    batch = dellink(3) + dellink(7, family=7) + header(16, IFINFO.pack(0, 1, 7, 0, 0))
    assert rtnl._unregistered(batch, 5, 7) is False
    assert rtnl._unregistered(batch + dellink(7), 5, 7) is True
    assert rtnl._unregistered(error(5, 0), 5, 7) is True
    assert rtnl._unregistered(error(4, 0), 5, 7) is False
    with pytest.raises(NetlinkError):
        rtnl._unregistered(error(5, errno.EBUSY), 5, 7)
