"""The helper client's bounds and its import rule (cni.runtime.client)."""

import subprocess
import sys

from cni.runtime import client
from cni.spec import stdin


def test_the_client_bounds_stdin_as_the_call_in_process_does():
    assert client.MAX_STDIN == stdin.MAX_STDIN


def test_the_client_imports_only_the_interpreters_built_in_modules():
    code = ("import sys; before = set(sys.modules); import cni.runtime.client; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    new = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2])).stdout.split()
    # the interpreter's C modules (built in, or _socket and _struct beside it) and struct, their
    # few-line front-end: nothing that costs an import
    allowed = {"cni", "cni.runtime", "cni.runtime.client", "_socket", "_struct", "struct"}
    assert set(new) - allowed <= set(sys.builtin_module_names), sorted(set(new) - allowed)


class _Conn:
    """A connection as the helper's bound holds it: what it was sent, whether it is closed."""

    def __init__(self, name):
        self.name, self.sent, self.closed = name, b"", False

    def setblocking(self, flag):
        pass

    def send(self, data):
        self.sent += data
        return len(data)

    def close(self):
        self.closed = True


def test_the_helpers_bound_serves_waiting_calls_in_order_and_refuses_those_that_waited_too_long():
    from cni.runtime import server

    now = [0.0]
    bound = server._Bound(2, clock=lambda: now[0])
    a, b, c = _Conn("a"), _Conn("b"), _Conn("c")
    bound.wait(a)
    now[0] = 0.2
    bound.wait(b)
    bound.wait(c)
    assert bound.next_free(running=2) is None           # both children busy: they wait
    assert bound.next_free(running=1) is a              # first come, first served
    now[0] = server.QUEUE_WAIT + 0.1                    # b and c waited QUEUE_WAIT - 0.1: not yet
    bound.expire()
    assert not b.closed and not c.closed
    now[0] = server.QUEUE_WAIT + 0.3
    bound.expire()
    assert (b.sent, b.closed, c.sent, c.closed) == (client.BUSY, True, client.BUSY, True)
    assert bound.refused == 2 and not bound.waiting and a.sent == b""


def test_the_helper_commands_default_bound_is_the_servers():
    from cni import cli
    from cni.runtime import server

    args = cli._parser().parse_args(["helper"])
    assert args.max_calls == server.DEFAULT_MAX_CALLS
