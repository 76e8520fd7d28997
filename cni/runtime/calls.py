"""The record of CNI calls the agent turns into metrics: one line per call, appended by the
process that answered the runtime, to `calls.log` beside the helper's socket (default
/run/pycni/calls.log, on tmpfs).

    1 <unix time> <plugin> <command> <code> <seconds> <helper|process> <fallback reason or ->

`code` is 0 or the CNI error code; `seconds` the call as the runtime's process saw it (from the
entry point to the answer, the interpreter's own start excluded); the reason says why a call ran
in process: disabled (PYCNI_HELPER=0), no_helper, unavailable, timeout, refused, error (the hand-
over failed), cannot_serve (the helper could not enter the caller's namespaces), busy (the
helper had its maximum of calls at once), untrusted (the socket, its directory or its listener
not root's alone), oversized (more stdin than a call may have) or failed_mid_call (the helper
died during a DEL/CHECK, rerun here). The file is opened without following a symlink.

Rule: recording never fails or slows a call: one open(O_APPEND) + write + close (~30 us); a line
is far below PIPE_BUF, so lines of concurrent calls never interleave; nothing is written when the
directory is missing or the file has grown past MAX_BYTES (the agent rotates it). VERSION is not
recorded (it stays the cheapest call).
"""

from __future__ import annotations

import os
import time

from cni.runtime.client import socket_path

MAX_BYTES = 16 << 20
REASONS = ("disabled", "no_helper", "unavailable", "timeout", "refused", "error", "cannot_serve", "busy",
           "untrusted", "oversized", "failed_mid_call")


def path_for(env) -> str:
    return os.path.join(os.path.dirname(socket_path(env)), "calls.log")


def record(env, plugin: str, command: str, code: int, seconds: float, served: str, reason: str = "-") -> None:
    line = f"1 {time.time():.3f} {plugin} {command} {code} {seconds:.6f} {served} {reason or '-'}\n"
    try:
        fd = os.open(path_for(env), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
                     | os.O_NONBLOCK, 0o600)
    except OSError:
        return
    try:
        if os.fstat(fd).st_size < MAX_BYTES:
            os.write(fd, line.encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def parse(line: str) -> dict | None:
    parts = line.split()
    if len(parts) != 8 or parts[0] != "1":
        return None
    try:
        return {"time": float(parts[1]), "plugin": parts[2], "command": parts[3], "code": int(parts[4]),
                "seconds": float(parts[5]), "served": parts[6], "reason": None if parts[7] == "-" else parts[7]}
    except ValueError:
        return None
