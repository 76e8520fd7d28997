"""The thin side of the resident helper: hand one CNI call to `pycni helper` if it runs.

A plugin process spends most of its time starting Python and importing pyroute2 and friends. When
a per-node helper is listening (`pycni helper`, socket `$PYCNI_HELPER_SOCKET`, default
/run/pycni/helper.sock), the executable sends it the call (CNI_* environment, stdin, and its own
network namespace as a file descriptor) and prints the answer; nothing else is imported. With no
helper, `forward` returns None and the caller runs the call in process as usual.

Rule: this module imports only the standard library's cheapest modules.
"""

from __future__ import annotations

import json
import os
import socket
import struct

DEFAULT_SOCKET = "/run/pycni/helper.sock"
TIMEOUT = 240.0
CODE_TRY_AGAIN = 11


def socket_path(env) -> str:
    return env.get("PYCNI_HELPER_SOCKET") or DEFAULT_SOCKET


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("helper closed the connection")
        buf += chunk
    return buf


def forward(plugin: str, env, stdin, stdout) -> int | None:
    """Exit code of the call served by the helper, or None when no helper answers."""
    if env.get("PYCNI_HELPER", "1") == "0":
        return None
    path = socket_path(env)
    if not os.path.exists(path):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None     # a stale socket: nobody listens, run in process
    command = env.get("CNI_COMMAND", "")
    data = None
    try:
        data = stdin.read()
        request = json.dumps({
            "plugin": plugin,
            "env": {k: v for k, v in env.items() if k.startswith(("CNI_", "PYCNI_")) or k == "PATH"},
            "stdin": data.decode("latin-1"),
        }).encode()
        netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            sock.sendmsg([struct.pack("!I", len(request))],
                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", netns))])
        finally:
            os.close(netns)
        sock.sendall(request)
        sock.settimeout(TIMEOUT)
        size = struct.unpack("!I", _recv_exact(sock, 4))[0]
        reply = json.loads(_recv_exact(sock, size))
    except (OSError, ConnectionError, ValueError) as e:
        if command != "ADD" and data is not None:
            # DEL, CHECK, STATUS, GC are safe to run again: do it here. (stdin was consumed.)
            import io

            from cni.plugins import run

            return run(plugin, env, io.BytesIO(data), stdout)
        out = {"cniVersion": "1.1.0", "code": CODE_TRY_AGAIN,
               "msg": "pycni helper failed during the call", "details": str(e)}
        stdout.write(json.dumps(out) + "\n")
        stdout.flush()
        return 1
    finally:
        sock.close()
    stdout.write(reply.get("stdout", ""))
    stdout.flush()
    return int(reply.get("rc", 1))
