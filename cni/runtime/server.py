"""`pycni helper`: a resident per-node process that serves CNI calls with everything imported.

Each call arrives on a unix socket from `cni.runtime.client` (CNI_* environment, stdin, and the
caller's network and mount namespaces as file descriptors). The helper forks; the child takes on what
the call would have in process (the caller's network and mount namespaces, working directory,
environment and umask) and only then acknowledges with a pidfd of itself; a child that cannot
(a helper without CAP_SYS_ADMIN) says so instead, and the caller runs the call itself. After the
caller's GO (see the hand-over in `cni.runtime.client`) the child runs the very same `skel.run`
the executable would, answers, and exits. A child holds its own connection only. A child whose
caller went away before the answer is killed by the parent. At most `max_calls` children run at
once: a call beyond waits (accepted, nothing read) for a child to end, at most QUEUE_WAIT seconds;
then the parent itself answers BUSY, with nothing read or forked, and the caller runs the call in
process (in the runtime's memory, not the helper's: what the helper's container may use is bounded
however many pods start at once, and a burst is still served warm).

Only root may call (SO_PEERCRED); the socket is root's alone, in a directory only root can write
(the helper refuses another), and one helper at a time holds the socket's name (a lock beside it).
"""

from __future__ import annotations

import array
import collections
import fcntl
import gc
import io
import marshal
import os
import select
import signal
import socket
import struct
import sys
import time

from cni.linux import netns, rtnl, tc
from cni.linux.children import die_with
from cni.firewall import nft
from cni.runtime import client, registry
from cni.runtime.client import (ACK, BUSY, CANNOT, DEFAULT_SOCKET, GO, HANDOVER_TIMEOUT, INFO, MAX_STDIN, NOT_MINE,
                                WRITABLE_BY_OTHERS, _recv_exact, build_identity)
from cni.runtime.registry import PLUGINS
from cni.spec import names
from cni.spec.log import log
# what the calls need, imported once here so that every forked child starts warm
from cni.bandwidth import apply as _shaping, plugin as _bandwidth_plugin  # noqa: F401
from cni.bridge import apply as _bridge_apply, plugin as _bridge_plugin  # noqa: F401
from cni.firewall import rules as _firewall_rules  # noqa: F401
from cni.portmap import plugin as _portmap_plugin  # noqa: F401
from ipam import plugin as _ipam_plugin, service as _ipam_service  # noqa: F401
from cni.runtime import attachment_lock as _attachment_lock  # noqa: F401
from cni.spec import request as _request, result as _result  # noqa: F401

REQUEST_TIMEOUT = 5.0       # a caller that connects must send its request within this
MAX_REQUEST = 1 << 20       # the request without stdin: the caller's environment and a few fields
DEFAULT_MAX_CALLS = 16      # children at once (~5 MB each while it runs); a call beyond waits, then runs in its caller
QUEUE_WAIT = 0.5            # how long a call beyond them may wait for a child to end (of HANDOVER_TIMEOUT's 1 s)
BUSY_LOG_EVERY = 10.0       # seconds between two log lines about calls refused for the bound
METRICS_RESTART_AFTER = 5.0     # a metrics server that died is started again, at most this often
_PARENT_ONLY: list[int] = []    # descriptors of the helper itself, closed in every child it forks


def _warm_up() -> None:
    """Load once, in the parent, what every call needs, so every forked child starts warm."""
    names.sha256_hex("")    # its C module (every call hashes names): loaded once, not per child
    nft._library()          # dlopen libnftables once: children share the mapping
    ipr = rtnl.Rtnl()       # pyroute2's tables, built once (read-only dumps of our namespace)
    try:
        ipr.warm_up()
    finally:
        ipr.close()
    tc.warm_up()            # the traffic-control messages of shaping, likewise
    # what the parent holds stays where it is: a child's garbage collector would otherwise touch
    # (and so copy) every page of it; children run one call and exit, they collect nothing
    gc.freeze()


def _receive(conn: socket.socket) -> tuple[dict, bytes, list[int]]:
    """The request, the call's stdin and the caller's namespaces and working directory (network,
    mount, cwd). Bounded as in process: a request that announces more is not read."""
    fds = array.array("i")
    conn.settimeout(REQUEST_TIMEOUT)
    msg, anc, _, _ = conn.recvmsg(4, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    if len(msg) < 4 or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("malformed request")
    size = struct.unpack("!I", msg if len(msg) == 4 else msg + _recv_exact(conn, 4 - len(msg)))[0]
    if size > MAX_REQUEST:
        raise ValueError(f"request of {size} bytes")
    request = marshal.loads(_recv_exact(conn, size))    # from root only (SO_PEERCRED)
    if not isinstance(request, dict):
        raise ValueError("malformed request")
    stdin_size = request.get("stdin_size", 0)
    if not isinstance(stdin_size, int) or not 0 <= stdin_size <= MAX_STDIN:
        raise ValueError(f"stdin of {stdin_size!r} bytes")
    return request, _recv_exact(conn, stdin_size) if stdin_size else b"", list(fds)


def _become_caller(request: dict, caller_net: int, caller_mnt: int, caller_cwd: int) -> None:
    """Take on what the call would have in the caller's process: its namespaces (its network is
    our "host", and every path, CNI_NETNS, dataDir, logFile, CNI_PATH, nft, the xtables lock,
    resolves as there), its working directory, its environment (PATH decides which programs run
    and the firewall backend, PYCNI_NFT how nft runs) and its umask. Raises OSError when we
    cannot (setns needs CAP_SYS_ADMIN): before the ACK, so the caller runs the call itself."""
    try:
        netns._setns(caller_mnt, netns.CLONE_NEWNS)
        netns._setns(caller_net)
        os.fchdir(caller_cwd)
    finally:
        for fd in (caller_mnt, caller_net, caller_cwd):
            os.close(fd)
    env = request.get("env")
    if isinstance(env, dict):
        nft_exec = os.environ.get("PYCNI_NFT", "") == "exec"
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
        if (os.environ.get("PYCNI_NFT", "") == "exec") != nft_exec:
            nft._LIB.clear()        # how nft runs is the caller's choice, not the one made at warm-up
    umask = request.get("umask")
    if isinstance(umask, int):
        os.umask(umask & 0o777)


def _serve_one(conn: socket.socket, build: str) -> None:
    request, data, (caller_net, caller_mnt, caller_cwd) = _receive(conn)
    if request.get("build") != build:    # a caller of another build: it runs the call itself
        for fd in (caller_net, caller_mnt, caller_cwd):
            os.close(fd)
        conn.sendall(NOT_MINE)
        raise ConnectionError(f"caller of another build ({request.get('build')!r}; this is {build!r})")
    try:
        _become_caller(request, caller_net, caller_mnt, caller_cwd)
    except OSError as e:                    # nothing done: the caller runs the call (STATUS: not us)
        conn.sendall(CANNOT)
        raise ConnectionError(f"cannot act in the caller's namespaces ({e.strerror}; the helper needs "
                              "CAP_SYS_ADMIN): the caller runs the call itself") from None
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
    client.served_by_helper = os.getppid()

    env = dict(os.environ)
    log.configure(path=env.get("PYCNI_LOG_FILE", log.path))
    out = io.StringIO()
    name = request.get("plugin") if request.get("plugin") in PLUGINS else "pycni"
    rc = registry.run(name, env, io.BytesIO(data), out, about=f"{name}(helper)")
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


def _private_dir(path: str) -> str:
    """The socket's own directory (/run/pycni, or any named pycni*): root's, mode 0700, even when it
    was there before with looser rights. A shared directory the admin named is left as it is, but
    must be root's and writable by no one else (else a local user could put a socket, a symlink or
    a lock there that root's calls would use): the reason not to start, if it is not."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, mode=0o700, exist_ok=True)
    if os.path.basename(d).startswith("pycni"):
        os.chown(d, 0, 0)
        os.chmod(d, 0o700)
    for where in (d, os.path.join(d, "calls")):
        try:
            st = os.lstat(where)
        except FileNotFoundError:
            continue
        if not stat_is_dir(st.st_mode) or st.st_uid != 0 or st.st_mode & WRITABLE_BY_OTHERS:
            return f"{where} is not a directory only root can write"
    try:                        # the attachment locks' directory, root's from the start
        os.mkdir(os.path.join(d, "calls"), 0o700)
    except FileExistsError:
        pass
    return ""


def stat_is_dir(mode: int) -> bool:
    return mode & 0o170000 == 0o040000


def _hold_name(path: str) -> tuple[int, str]:
    """One helper at a time per socket name: an exclusive flock on `<socket>.lock`, held for the
    helper's life (the kernel drops it when the helper dies; a re-exec takes it again). The fd,
    or -1 and why not."""
    lock = path + ".lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as e:
        return -1, f"cannot open {lock}: {e.strerror}"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        return -1, f"another helper (pid {holder or '?'}) already serves {path} (it holds {lock})"
    except OSError as e:
        os.close(fd)
        return -1, f"cannot lock {lock}: {e.strerror}"
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, ""


def _log(text: str) -> None:
    sys.stderr.write(f"pycni helper: {text}\n")
    sys.stderr.flush()


class _Metrics:
    """The helper's metrics server, a child forked while the helper is one thread (a thread in the
    helper itself would be copied, half-locked, into every call's child). It dies with us; when it
    dies first it is reported and started again (at most every METRICS_RESTART_AFTER seconds).
    Signalled only through its pidfd, so never a process that took its pid after it was reaped."""

    def __init__(self, serve_metrics, path: str, address: str, conf_dir: str):
        self.serve_metrics, self.path, self.address, self.conf_dir = serve_metrics, path, address, conf_dir
        self.pid, self.pidfd, self.started, self.restart_at = 0, -1, 0.0, 0.0

    def start(self, close: list) -> None:
        helper = os.getpid()
        pid = os.fork()
        if pid:
            self.pid, self.pidfd, self.started = pid, os.pidfd_open(pid), time.monotonic()
            _PARENT_ONLY.append(self.pidfd)
            return
        code = 0
        try:
            for sock in close:
                sock.close()
            for fd in _PARENT_ONLY:
                os.close(fd)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            die_with(helper, signal.SIGTERM)
            self.serve_metrics(self.address, os.path.join(os.path.dirname(self.path), "calls.log"),
                               self.conf_dir, helper, self.path)
        except BaseException as e:
            code = 1
            try:
                _log(f"metrics server stopped: {e}")
            except Exception:
                pass
        finally:
            os._exit(code)

    def reaped(self, pid: int, status: int) -> bool:
        """Whether `pid` was the metrics server (then it is reported, and restarted when due)."""
        if not self.pid or pid != self.pid:
            return False
        _PARENT_ONLY.remove(self.pidfd)
        os.close(self.pidfd)
        self.pid, self.pidfd = 0, -1
        how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.waitstatus_to_exitcode(status)}"
        self.restart_at = max(time.monotonic(), self.started + METRICS_RESTART_AFTER)
        _log(f"metrics server (pid {pid}) ended ({how}); starting it again"
             + (f" in {self.restart_at - time.monotonic():.0f} s" if self.restart_at > time.monotonic() + 0.5 else ""))
        return True

    def due(self) -> bool:
        return not self.pid and bool(self.restart_at) and time.monotonic() >= self.restart_at

    def stop(self) -> None:
        if self.pidfd < 0:
            return
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGTERM)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        _PARENT_ONLY.remove(self.pidfd)
        os.close(self.pidfd)
        self.pid, self.pidfd = 0, -1


def serve(path: str = DEFAULT_SOCKET, metrics_address: str = "", conf_dir: str = "/etc/cni/net.d",
          serve_metrics=None, max_calls: int = DEFAULT_MAX_CALLS) -> int:
    """Serve calls on `path` until SIGTERM (or re-execute when the executable became a new build).
    With `metrics_address`, `serve_metrics(address, calls_file, conf_dir, helper_pid, path)` runs in a
    process of its own (handed in by the command line: the metrics server is not the runtime's)."""
    if metrics_address and serve_metrics is None:
        raise ValueError("a metrics address needs the metrics server to run there")
    if max_calls < 1:
        raise ValueError("the helper must be allowed at least one call at once")
    refused = _private_dir(path)
    if refused:
        _log(f"{refused}; not starting (name a socket in a directory of root's alone)")
        return 1
    name_lock, why = _hold_name(path)
    if name_lock < 0:
        _log(f"{why}; not starting")
        return 1
    _PARENT_ONLY.append(name_lock)      # a child holding it would keep the name after we die
    try:
        return _serve_holding(path, metrics_address, conf_dir, serve_metrics, max_calls)
    finally:
        _PARENT_ONLY.remove(name_lock)
        os.close(name_lock)


def _serve_holding(path: str, metrics_address: str, conf_dir: str, serve_metrics, max_calls: int) -> int:
    if _answering(path):
        _log(f"another helper already serves {path}; not starting")
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
    metrics = _Metrics(serve_metrics, path, metrics_address, conf_dir) if metrics_address else None
    if metrics:
        metrics.start([server])
    _log(f"serving on {path} (pid {os.getpid()}, at most {max_calls} calls at once)"
         + (f", metrics on {metrics_address}" if metrics_address else ""))
    build, started_as = build_identity(), _started_as()
    watching: dict[int, tuple[socket.socket, int]] = {}     # fd -> (connection, child pid)
    poller = select.poll()
    poller.register(server, select.POLLIN)
    try:
        _loop(server, poller, watching, build, started_as, _resolves(started_as) if started_as else "", metrics,
              lambda: _same_file(path, mine), _Bound(max_calls))
    except _Lost:
        _log(f"{path} is no longer this helper's socket (removed or replaced): stopping, so that a new "
             "helper can take the name")
        return 1
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
        if metrics:     # its port is the new build's metrics server's
            metrics.stop()
    if upgraded:        # the same pid becomes the new build; calls meanwhile run in process
        extra = ["--metrics-address", metrics_address, "--conf-dir", conf_dir] if metrics_address else []
        os.execv(started_as, [started_as, "helper", "--socket", path, "--max-calls", str(max_calls), *extra])
    return 0


class _Upgraded(Exception):
    pass


class _Lost(Exception):
    pass


def _same_file(path: str, mine: os.stat_result) -> bool:
    try:
        now = os.stat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)


class _Bound:
    """How many calls may run at once; the connections waiting for one of them to end (accepted,
    nothing read: oldest first) and the refusals (logged at most every BUSY_LOG_EVERY seconds)."""

    def __init__(self, max_calls: int, clock=time.monotonic):
        self.max_calls, self.clock = max_calls, clock
        self.waiting: collections.deque[tuple[socket.socket, float]] = collections.deque()
        self.refused, self.logged_at = 0, 0.0

    def wait(self, conn: socket.socket) -> None:
        self.waiting.append((conn, self.clock()))

    def next_free(self, running: int) -> socket.socket | None:
        """The oldest waiting connection, when fewer than max_calls run (else None)."""
        return self.waiting.popleft()[0] if self.waiting and running < self.max_calls else None

    def expire(self) -> None:
        """Answer BUSY to every connection that waited past QUEUE_WAIT (its caller runs the call)."""
        now = self.clock()
        while self.waiting and now - self.waiting[0][1] >= QUEUE_WAIT:
            conn, _ = self.waiting.popleft()
            try:
                conn.setblocking(False)
                conn.send(BUSY)     # nothing was ever sent on it: never blocks
            except OSError:
                pass                # the caller is gone, or runs the call itself on the error
            conn.close()
            self.refused += 1
            if now - self.logged_at >= BUSY_LOG_EVERY:
                self.logged_at = now
                _log(f"{self.max_calls} calls at once: {self.refused} refused so far, each run by its caller")


def _loop(server: socket.socket, poller, watching: dict, build: str, started_as: str, at_start: str,
          metrics: _Metrics | None = None, still_mine=None, bound: _Bound | None = None) -> None:
    """Accept calls, watch their callers, reap children; raise _Upgraded when the executable the
    helper was started as now points at another build, _Lost when our socket's name is gone (a
    helper listening on an unlinked socket would hold the name's lock and serve no one)."""
    bound = bound or _Bound(DEFAULT_MAX_CALLS)
    while True:
        ready = poller.poll(20 if bound.waiting else 500)
        if not ready and still_mine is not None and not still_mine():
            raise _Lost()
        for fd, events in ready:
            if fd == server.fileno():
                _accept(server, poller, watching, build, metrics, bound)
                if started_as and _resolves(started_as) != at_start:
                    raise _Upgraded()
            elif fd in watching:         # the caller hung up: its child must not go on
                conn, pid = watching.pop(fd)
                poller.unregister(fd)
                conn.close()
                try:
                    os.kill(pid, signal.SIGKILL)     # not reaped yet (that happens below): still ours
                except ProcessLookupError:
                    pass
        for pid, status in _reap():
            if metrics and metrics.reaped(pid, status):
                continue
            for fd, (conn, child) in list(watching.items()):
                if child == pid:
                    del watching[fd]
                    poller.unregister(fd)
                    conn.close()
        while (conn := bound.next_free(len(watching))) is not None:
            _start_child(conn, server, poller, watching, build, bound)
        bound.expire()
        if metrics and metrics.due():
            metrics.start([server, *(conn for conn, _ in watching.values()), *(conn for conn, _ in bound.waiting)])


def _accept(server: socket.socket, poller, watching: dict, build: str, metrics: _Metrics | None,
            bound: _Bound) -> None:
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        return
    uid = _peer_uid(conn)
    if uid != 0:
        _log(f"refused a caller with uid {uid}: only root may configure the node")
        conn.close()
        return
    if len(watching) >= bound.max_calls or bound.waiting:
        bound.wait(conn)            # behind the others: first come, first served
        return
    _start_child(conn, server, poller, watching, build, bound)


def _start_child(conn: socket.socket, server: socket.socket, poller, watching: dict, build: str,
                 bound: _Bound) -> None:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            gc.disable()
            server.close()
            # this call's connection only: a sibling's caller must see its own child's end
            # (a copy here would keep its connection open until this call is over)
            for other, _ in (*watching.values(), *bound.waiting):
                other.close()
            for fd in _PARENT_ONLY:
                os.close(fd)
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


def _reap() -> list[tuple[int, int]]:
    done = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done.append((pid, status))
