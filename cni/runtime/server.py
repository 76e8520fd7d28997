"""`pycni helper`: a resident per-node process that serves CNI calls with everything imported.

Each call arrives on a unix socket from `cni.runtime.client` (CNI_* environment, stdin, and the
caller's network namespace as a file descriptor). The helper forks; the child enters the caller's
network namespace and runs the very same `skel.run` the executable would, then answers and exits.
So a call behaves exactly as in process, and if the helper dies between calls the executables go
back to running in process. If a child dies during an ADD, the caller answers code 11 (try again
later): the runtime then DELs and retries. Other verbs are rerun in process by the caller.
"""

from __future__ import annotations

import array
import io
import json
import os
import signal
import socket
import struct
import sys

from cni.linux import netns
from cni.runtime.client import DEFAULT_SOCKET, _recv_exact
from cni.plugins import PLUGINS


def _warm_up() -> None:
    """Import what the calls need once, in the parent, so every forked child starts warm."""
    from cni.bridge import apply, plugin  # noqa: F401
    from cni.firewall import nft, rules  # noqa: F401
    from cni.linux import rtnl  # noqa: F401
    from cni.portmap import plugin as portmap  # noqa: F401
    from ipam import plugin as ipam_plugin, service  # noqa: F401


def _serve_one(conn: socket.socket) -> None:
    fds = array.array("i")
    msg, anc, _, _ = conn.recvmsg(4, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    if len(msg) < 4 or not fds:
        raise ConnectionError("malformed request")
    size = struct.unpack("!I", msg if len(msg) == 4 else msg + _recv_exact(conn, 4 - len(msg)))[0]
    request = json.loads(_recv_exact(conn, size))
    netns._setns(fds[0])          # the caller's namespace is our "host" from here on
    os.close(fds[0])
    from cni import plugins
    from cni.spec.log import log

    env = request["env"]
    log.configure(path=env.get("PYCNI_LOG_FILE", log.path))
    out = io.StringIO()
    name = request.get("plugin") if request.get("plugin") in PLUGINS else "pycni"
    rc = plugins.run(name, env, io.BytesIO(request["stdin"].encode("latin-1")), out, about=f"{name}(helper)")
    reply = json.dumps({"rc": rc, "stdout": out.getvalue()}).encode()
    conn.sendall(struct.pack("!I", len(reply)) + reply)


def _answering(path: str) -> bool:
    """Whether a helper already listens on `path` (a stale socket file refuses connections)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def serve(path: str = DEFAULT_SOCKET) -> int:
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    if _answering(path):
        sys.stderr.write(f"pycni helper: another helper is serving on {path}; not starting\n")
        return 1
    _warm_up()
    try:
        os.unlink(path)                  # a stale socket of a helper that died
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177)          # the socket is root's only: it configures the node
    try:
        server.bind(path)                # fails if another helper bound it meanwhile
    except OSError as e:
        sys.stderr.write(f"pycni helper: cannot bind {path}: {e.strerror}; not starting\n")
        server.close()
        return 1
    finally:
        os.umask(old_umask)
    mine = os.stat(path)
    server.listen(128)
    signal.signal(signal.SIGCHLD, lambda *_: _reap())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.stderr.write(f"pycni helper: serving on {path} (pid {os.getpid()})\n")
    sys.stderr.flush()
    try:
        while True:
            conn, _ = server.accept()   # PEP 475: EINTR (SIGCHLD) is retried by Python itself
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    server.close()
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    _serve_one(conn)
                except BaseException as e:   # never let a child return into the accept loop
                    code = 1
                    try:
                        sys.stderr.write(f"pycni helper: request failed: {e}\n")
                    except Exception:
                        pass
                finally:
                    os._exit(code)
            conn.close()
    finally:
        server.close()
        try:            # only our own socket: another helper may have replaced the file since
            now = os.stat(path)
            if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                os.unlink(path)
        except OSError:
            pass


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
