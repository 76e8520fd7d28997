"""`pycni helper`: a resident per-node process that serves CNI calls with everything imported.

Each call arrives on a unix socket from `cni.runtime.client` (CNI_* environment, stdin, and the
caller's network and mount namespaces as file descriptors). The helper forks; the child acknowledges with a
pidfd of itself and waits for the caller's GO (see the hand-over in `cni.runtime.client`): only
then does it enter the caller's network namespace and run the very same `skel.run` the executable
would, answer, and exit. A child whose caller went away before the answer is killed by the parent.
Only root may call (SO_PEERCRED); the socket is root's alone.
"""

from __future__ import annotations

import array
import gc
import io
import marshal
import os
import select
import signal
import socket
import struct
import sys

from cni.linux import netns, rtnl
from cni.linux.children import die_with
from cni.firewall import nft
from cni.runtime import client, registry
from cni.runtime.client import ACK, DEFAULT_SOCKET, GO, HANDOVER_TIMEOUT, INFO, NOT_MINE, _recv_exact, build_identity
from cni.runtime.registry import PLUGINS
from cni.spec import names
from cni.spec.log import log
# what the calls need, imported once here so that every forked child starts warm
from cni.bridge import apply as _bridge_apply, plugin as _bridge_plugin  # noqa: F401
from cni.firewall import rules as _firewall_rules  # noqa: F401
from cni.portmap import plugin as _portmap_plugin  # noqa: F401
from ipam import plugin as _ipam_plugin, service as _ipam_service  # noqa: F401
from cni.runtime import attachment_lock as _attachment_lock  # noqa: F401
from cni.spec import request as _request, result as _result  # noqa: F401

REQUEST_TIMEOUT = 5.0       # a caller that connects must send its request within this


def _warm_up() -> None:
    """Load once, in the parent, what every call needs, so every forked child starts warm."""
    names.sha256_hex("")    # its C module (every call hashes names): loaded once, not per child
    nft._library()          # dlopen libnftables once: children share the mapping
    ipr = rtnl.Rtnl()       # pyroute2's tables, built once (read-only dumps of our namespace)
    try:
        ipr.warm_up()
    finally:
        ipr.close()
    # what the parent holds stays where it is: a child's garbage collector would otherwise touch
    # (and so copy) every page of it; children run one call and exit, they collect nothing
    gc.freeze()


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """The request and the caller's namespaces (network, mount)."""
    fds = array.array("i")
    conn.settimeout(REQUEST_TIMEOUT)
    msg, anc, _, _ = conn.recvmsg(4, socket.CMSG_SPACE(2 * fds.itemsize))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    if len(msg) < 4 or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("malformed request")
    size = struct.unpack("!I", msg if len(msg) == 4 else msg + _recv_exact(conn, 4 - len(msg)))[0]
    request = marshal.loads(_recv_exact(conn, size))    # from root only (SO_PEERCRED)
    if not isinstance(request, dict):
        raise ValueError("malformed request")
    return request, list(fds)


def _serve_one(conn: socket.socket, build: str) -> None:
    request, (caller_net, caller_mnt) = _receive(conn)
    if request.get("build") != build:    # a caller of another build: it runs the call itself
        conn.sendall(NOT_MINE)
        raise ConnectionError(f"caller of another build ({request.get('build')!r}; this is {build!r})")
    if request.get("probe"):                # STATUS asks whether we serve: yes, and who we are
        info = marshal.dumps({"pid": os.getppid()})
        conn.sendall(INFO + struct.pack("!I", len(info)) + info)
        return
    me = os.pidfd_open(os.getpid())
    try:
        conn.sendmsg([ACK], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", me))])
    finally:
        os.close(me)
    conn.settimeout(HANDOVER_TIMEOUT)
    if _recv_exact(conn, len(GO)) != GO:     # no GO: the caller runs the call itself (or gave up)
        raise ConnectionError("the caller did not commit the call")
    conn.settimeout(None)
    # the caller's namespaces are ours from here on: its network is our "host", and every path
    # (CNI_NETNS, dataDir, logFile, CNI_PATH, nft, the xtables lock) resolves as in the caller
    netns._setns(caller_mnt, netns.CLONE_NEWNS)
    netns._setns(caller_net)
    os.close(caller_mnt)
    os.close(caller_net)
    os.chdir("/")
    client.served_by_helper = os.getppid()

    env = request["env"]
    log.configure(path=env.get("PYCNI_LOG_FILE", log.path))
    out = io.StringIO()
    name = request.get("plugin") if request.get("plugin") in PLUGINS else "pycni"
    rc = registry.run(name, env, io.BytesIO(request["stdin"]), out, about=f"{name}(helper)")
    reply = marshal.dumps({"rc": rc, "stdout": out.getvalue()})
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


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _private_dir(path: str) -> None:
    """The socket's own directory (/run/pycni, or any named pycni*): root's, mode 0700, even when it
    was there before with looser rights. A shared directory the admin named is left as it is."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, mode=0o700, exist_ok=True)
    if os.path.basename(d).startswith("pycni"):
        os.chown(d, 0, 0)
        os.chmod(d, 0o700)


def _log(text: str) -> None:
    sys.stderr.write(f"pycni helper: {text}\n")
    sys.stderr.flush()


def _start_metrics(serve_metrics, path: str, address: str, conf_dir: str, server: socket.socket) -> int:
    """Fork the helper's metrics server while the helper is still one thread (a thread in the
    helper itself would be copied, half-locked, into every call's child). It dies with us."""
    helper = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        server.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

        die_with(helper, signal.SIGTERM)
        serve_metrics(address, os.path.join(os.path.dirname(path), "calls.log"), conf_dir, helper, path)
    except BaseException as e:
        code = 1
        try:
            _log(f"metrics server stopped: {e}")
        except Exception:
            pass
    finally:
        os._exit(code)


def serve(path: str = DEFAULT_SOCKET, metrics_address: str = "", conf_dir: str = "/etc/cni/net.d",
          serve_metrics=None) -> int:
    """Serve calls on `path` until SIGTERM (or re-execute when the executable became a new build).
    With `metrics_address`, `serve_metrics(address, calls_file, conf_dir, helper_pid, path)` runs in a
    process of its own (handed in by the command line: the metrics server is not the runtime's)."""
    if metrics_address and serve_metrics is None:
        raise ValueError("a metrics address needs the metrics server to run there")
    _private_dir(path)
    if _answering(path):
        _log(f"another helper is serving on {path}; not starting")
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
        _log(f"cannot bind {path}: {e.strerror}; not starting")
        server.close()
        return 1
    finally:
        os.umask(old_umask)
    mine = os.stat(path)
    server.listen(128)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    metrics_pid = _start_metrics(serve_metrics, path, metrics_address, conf_dir, server) if metrics_address else 0
    _log(f"serving on {path} (pid {os.getpid()})" + (f", metrics on {metrics_address}" if metrics_address else ""))
    build, started_as = build_identity(), _started_as()
    watching: dict[int, tuple[socket.socket, int]] = {}     # fd -> (connection, child pid)
    poller = select.poll()
    poller.register(server, select.POLLIN)
    try:
        _loop(server, poller, watching, build, started_as, _resolves(started_as) if started_as else "")
    except _Upgraded:
        _log(f"{started_as} is a new build now: re-executing")
        upgraded = True
    else:
        upgraded = False
    finally:
        server.close()
        try:            # only our own socket: another helper may have replaced the file since
            now = os.stat(path)
            if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                os.unlink(path)
        except OSError:
            pass
    if metrics_pid:     # its port is the new build's metrics server's
        try:
            os.kill(metrics_pid, signal.SIGTERM)
            os.waitpid(metrics_pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    if upgraded:        # the same pid becomes the new build; calls meanwhile run in process
        extra = ["--metrics-address", metrics_address, "--conf-dir", conf_dir] if metrics_address else []
        os.execv(started_as, [started_as, "helper", "--socket", path, *extra])
    return 0


class _Upgraded(Exception):
    pass


def _loop(server: socket.socket, poller, watching: dict, build: str, started_as: str, at_start: str) -> None:
    """Accept calls, watch their callers, reap children; raise _Upgraded when the executable the
    helper was started as now points at another build."""
    while True:
        for fd, events in poller.poll(500):
            if fd == server.fileno():
                _accept(server, poller, watching, build)
                if started_as and _resolves(started_as) != at_start:
                    raise _Upgraded()
            elif fd in watching:         # the caller hung up: its child must not go on
                conn, pid = watching.pop(fd)
                poller.unregister(fd)
                conn.close()
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for pid in _reap():
            for fd, (conn, child) in list(watching.items()):
                if child == pid:
                    del watching[fd]
                    poller.unregister(fd)
                    conn.close()


def _accept(server: socket.socket, poller, watching: dict, build: str) -> None:
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        return
    uid = _peer_uid(conn)
    if uid != 0:
        _log(f"refused a caller with uid {uid}: only root may configure the node")
        conn.close()
        return
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            gc.disable()
            server.close()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _serve_one(conn, build)
        except BaseException as e:   # never let a child return into the accept loop
            code = 1
            try:
                _log(f"request not served: {e}")
            except Exception:
                pass
        finally:
            os._exit(code)
    watching[conn.fileno()] = (conn, pid)
    poller.register(conn, select.POLLRDHUP | select.POLLHUP)


def _started_as() -> str:
    """The executable the helper was started as (e.g. /opt/cni/bin/pycni, the bootloader or the
    launcher of a build): `pycni install` swaps what it points at. Empty when it is not a build's
    (a development install's entry point)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if not argv0 or not os.path.isdir(os.path.join(os.path.dirname(_resolves(argv0)), "_internal")):
        return ""
    return os.path.abspath(argv0)


def _resolves(path: str) -> str:
    try:
        return os.path.realpath(path)
    except OSError:
        return ""


def _reap() -> list[int]:
    done = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done.append(pid)
