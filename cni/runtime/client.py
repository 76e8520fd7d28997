"""The thin side of the resident helper: hand one CNI call to `pycni helper` if it takes it.

A plugin process spends most of its time starting Python and importing pyroute2 and friends. When
a per-node helper is listening (`pycni helper`, socket `$PYCNI_HELPER_SOCKET`, default
/run/pycni/helper.sock), the executable offers it the call (CNI_* environment, stdin, and its own
network and mount namespaces as file descriptors) and prints the answer; nothing else is imported.

The hand-over, so that a call is carried out exactly once whatever the helper does:

    client                                   helper (a child forked for this call)
    request + netns fd        ------------>
                              <------------  ACK + a pidfd of the child  (nothing done yet)
    GO                        ------------>  only now does the child start the call
                              <------------  result

- No ACK within HANDOVER_TIMEOUT (helper absent, stopped, hung, overloaded, of another protocol,
  its child could not enter this process's namespaces and working directory, which it does
  before the ACK, or it already serves its maximum of calls at once and says BUSY without
  forking): the client closes the connection and runs the call in process. The child, if it ever wakes,
  finds no GO and does nothing: an unacknowledged call can never be run by the helper later.
- After GO the call is the helper's. If the answer does not come within CALL_TIMEOUT, or the child
  dies, the client kills the child through its pidfd (so it can never go on after the caller gave
  up); ADD then answers code 11 (the runtime DELs and retries), the other verbs, which are
  idempotent, run again in process. The helper also kills a child whose caller went away.

Whom a call is handed to: only a listener that is root (SO_PEERCRED, checked before anything is
sent), on a root-owned socket in a root-owned directory nobody else can write; else the call runs
in process (reason "untrusted"). What is handed over is bounded as in process: at most MAX_STDIN + 1
bytes of stdin are read; a larger config is answered (code 5) in process from what was read.

Rule: this module imports only modules that cost nothing to import: the interpreter's C modules
(`_socket`, not `socket`, which pulls in `enum` and `selectors`; `marshal`, not `json`, for the
messages, which only ever travel between two processes of the same build, root's alone).
"""

from __future__ import annotations

import _socket
import marshal
import os
import struct
import time

DEFAULT_SOCKET = "/run/pycni/helper.sock"
HANDOVER_TIMEOUT = 1.0      # connect, send, acknowledgement: all a call can lose to a bad helper
CALL_TIMEOUT = 110.0        # a call the helper took: below the kubelet's 2-minute request deadline
ACK, GO = b"ACK1", b"GO01"
NOT_MINE = b"NAK1"          # the helper is of another build: the caller runs the call itself
CANNOT = b"CNT1"            # the helper's child cannot enter the caller's namespaces (no CAP_SYS_ADMIN)
BUSY = b"BSY1"              # the helper serves as many calls as it may at once: the caller runs this one
MAX_STDIN = 16 * 1024 * 1024    # cni.spec.stdin.MAX_STDIN (not imported: the rule below; a test checks)
INFO = b"INF1"              # the answer to a probe (STATUS): the helper's pid
served_by_helper = 0        # in a helper's child: the helper's pid (this call is the helper's)
not_taken = ""              # why the helper did not take this call, when it did not
fallback = ""               # why this call ran in process (a cni.runtime.calls reason), if it did
answer_code = 0             # the CNI error code of the helper's answer (0: success)
CODE_TRY_AGAIN = 11


def build_identity() -> str:
    """Which build this process runs: pycni's version and the directory its code lives in (for an
    installed build `.pycni/<version>-<digest>/_internal/` under the bin dir: a new build is a new
    directory). The same for the bootloader executable and the launcher script of one build."""
    from cni.spec.version import PYCNI  # lazy: only on the path that needs it (the rule above)

    return f"{PYCNI} {os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))}"


def socket_path(env) -> str:
    return env.get("PYCNI_HELPER_SOCKET") or DEFAULT_SOCKET


S_IFSOCK, S_IFDIR, S_IFMT = 0o140000, 0o040000, 0o170000
WRITABLE_BY_OTHERS = 0o022


def _recv_exact(sock: _socket.socket, n: int) -> bytes:
    """Exactly `n` bytes, received into one buffer (no copy per chunk)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            raise ConnectionError("helper closed the connection")
        got += k
    return bytes(buf) if n < 4096 else buf


def _in_process(run_here, plugin: str, env, data: bytes, stdout) -> int:
    import io  # lazy: only on the path that needs it (the rule above)

    return run_here(plugin, env, io.BytesIO(data), stdout)


def _kill(pidfd: int | None) -> None:
    if pidfd is None:
        return
    import signal  # lazy: only on the path that needs it (the rule above)

    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass                    # already gone


def _hand_over(sock: _socket.socket, path: str, request: bytes, payload: bytes) -> int:
    """Connect, send, wait for the acknowledgement, commit with GO; the child's pidfd. Raises on
    anything that goes wrong before GO is sent (then the helper will never run the call)."""
    deadline = time.monotonic() + HANDOVER_TIMEOUT
    try:
        _send_request(sock, path, request, deadline, payload)
    except (BrokenPipeError, ConnectionResetError):
        _busy_or_raise(sock)    # a helper that answered BUSY closed before it read all we sent
        raise
    msg, anc, _, _ = sock.recvmsg(len(ACK), _socket.CMSG_SPACE(4))
    fds = [struct.unpack("i", data[:4])[0] for level, kind, data in anc
           if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS and len(data) >= 4]
    if msg != ACK or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        if msg == CANNOT:
            raise CannotServe("the helper cannot enter this process's namespaces")
        if msg == BUSY:
            raise Busy("the helper serves its maximum of calls at once")
        raise ConnectionError("the helper is of another build" if msg == NOT_MINE else
                              "the helper did not acknowledge the call")
    try:
        sock.settimeout(_left(deadline))
        sock.sendall(GO)
    except BaseException:
        os.close(fds[0])
        raise
    return fds[0]


def _busy_or_raise(sock: _socket.socket) -> None:
    """Raise Busy when what the helper sent before it closed says BUSY."""
    try:
        sock.setblocking(False)
        said = sock.recv(len(BUSY))
    except OSError:
        return
    if said == BUSY:
        raise Busy("the helper serves its maximum of calls at once")


def _left(deadline: float) -> float:
    """Seconds until `deadline`; TimeoutError once it has passed (the call is not handed over)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the helper did not take the call in time")
    return remaining


class CannotServe(ConnectionError):
    """The helper's child could not take on this process's namespaces (no CAP_SYS_ADMIN)."""


class Busy(ConnectionError):
    """The helper has its maximum of calls in flight (`pycni helper --max-calls`): it forked no
    child for this one."""


class Untrusted(PermissionError):
    """The socket, its directory or its listener is not root's alone: nothing is handed over."""


def _peer_uid(sock: _socket.socket) -> int:
    return struct.unpack("3i", sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12))[1]


def _send_request(sock: _socket.socket, path: str, request: bytes, deadline: float, payload: bytes = b"") -> None:
    sock.settimeout(_left(deadline))
    sock.connect(path)
    uid = _peer_uid(sock)       # before anything of ours (env, stdin, namespaces) leaves
    if uid != 0:
        raise Untrusted(f"the listener on {path} is uid {uid}, not root")
    # the call runs where and as we are: in our network and mount namespaces (paths resolve as
    # here), from our working directory
    fds = []
    try:
        for where, flags in (("/proc/self/ns/net", os.O_RDONLY), ("/proc/self/ns/mnt", os.O_RDONLY),
                             (".", os.O_PATH | os.O_DIRECTORY)):
            fds.append(os.open(where, flags | os.O_CLOEXEC))
        sock.settimeout(_left(deadline))
        sock.sendmsg([struct.pack("!I", len(request))],
                     [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
    finally:
        for fd in fds:
            os.close(fd)
    sock.settimeout(_left(deadline))
    sock.sendall(request)
    if payload:
        sock.sendall(payload)
    sock.settimeout(_left(deadline))


def _untrusted(path: str) -> str:
    """Why the socket at `path` must not be used ("" when it is a socket that root alone could
    have put there: root-owned, in a root-owned directory no one else can write); "missing" when
    there is no socket."""
    try:
        st = os.lstat(path)
    except OSError:
        return "missing"
    if st.st_mode & S_IFMT != S_IFSOCK:
        return "missing"        # something else in its place: no helper
    if st.st_uid != 0:
        return f"{path} is owned by uid {st.st_uid}"
    d = os.path.dirname(path) or "."
    try:
        dst = os.lstat(d)
    except OSError as e:
        return f"{d}: {e.strerror}"
    if dst.st_mode & S_IFMT != S_IFDIR or dst.st_uid != 0 or dst.st_mode & WRITABLE_BY_OTHERS:
        return f"{d} is not a directory only root can write"
    return ""


def helper_state(env) -> str:
    """Whether calls go through a helper, in one line (STATUS logs it, `pycni exec status` prints
    it). Never fails: a helper that is absent or broken is a fact, not an error."""
    if served_by_helper:
        return f"in use (this call was served by the helper, pid {served_by_helper})"
    if not_taken:               # this very call was offered and not taken: no second wait
        return f"did not take this call ({not_taken}): calls run in process"
    if env.get("PYCNI_HELPER", "1") == "0":
        return "off (PYCNI_HELPER=0): calls run in process"
    path = socket_path(env)
    why = _untrusted(path)
    if why == "missing":
        return f"none at {path}: calls run in process"
    if why:
        return f"not trusted ({why}): calls run in process"
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        _send_request(sock, path, marshal.dumps({"probe": True, "build": build_identity()}),
                      time.monotonic() + HANDOVER_TIMEOUT)
        head = _recv_exact(sock, len(INFO))
        if head == NOT_MINE:
            return f"of another build at {path}: calls run in process until it re-executes or restarts"
        if head == BUSY:
            return (f"in use, busy at {path} (its maximum of calls at once): calls beyond it run in "
                    "process")
        if head == CANNOT:
            return (f"cannot serve at {path} (it cannot enter this process's namespaces: "
                    "CAP_SYS_ADMIN missing?): calls run in process")
        if head != INFO:
            raise ConnectionError("unexpected answer")
        info = marshal.loads(_recv_exact(sock, struct.unpack("!I", _recv_exact(sock, 4))[0]))
        return f"in use (pid {info['pid']}, {path})"
    except Untrusted as e:
        return f"not trusted ({e}): calls run in process"
    except (OSError, ConnectionError, ValueError, EOFError, TypeError, KeyError) as e:
        return (f"not answering at {path} ({type(e).__name__}: stopped, hung or gone): calls run in "
                f"process, after at most {HANDOVER_TIMEOUT:.0f} s")
    finally:
        sock.close()


def forward(plugin: str, env, stdin, stdout, run_here) -> int | None:
    """Exit code of the call, served by the helper or (when the helper did not take it) by
    `run_here(plugin, env, stdin, stdout)` in process; None when there is no helper to ask."""
    global not_taken, fallback, answer_code
    if env.get("PYCNI_HELPER", "1") == "0":
        fallback = "disabled"
        return None
    path = socket_path(env)
    why = _untrusted(path)
    if why == "missing":
        fallback = "no_helper"
        return None             # no helper, or something else in its place
    if why:
        not_taken, fallback = why, "untrusted"
        return None
    data = stdin.read(MAX_STDIN + 1)    # as much as in process: a larger config is refused there
    if len(data) > MAX_STDIN:
        not_taken, fallback = f"more than {MAX_STDIN} bytes on stdin", "oversized"
        return _in_process(run_here, plugin, env, data, stdout)
    umask = os.umask(0o022)
    os.umask(umask)
    # what the call's behaviour depends on, as this process has it: its whole environment
    # (PATH picks programs and the firewall backend, PYCNI_NFT how nft runs, ...), its umask; the
    # namespaces and the working directory travel as descriptors
    request = marshal.dumps({"plugin": plugin, "build": build_identity(), "env": dict(env), "umask": umask,
                             "stdin_size": len(data)})
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        pidfd = _hand_over(sock, path, request, data)
    except (OSError, ConnectionError, ValueError) as e:
        not_taken = f"{type(e).__name__}: {e}"
        fallback = ("untrusted" if isinstance(e, Untrusted) else
                    "cannot_serve" if isinstance(e, CannotServe) else
                    "busy" if isinstance(e, Busy) else
                    "timeout" if isinstance(e, TimeoutError) else
                    "unavailable" if isinstance(e, (ConnectionRefusedError, FileNotFoundError)) else
                    "refused" if isinstance(e, ValueError) else "error")
        sock.close()            # never handed over: the helper will not run it; we do
        return _in_process(run_here, plugin, env, data, stdout)
    try:                        # from here on the call is the helper's
        sock.settimeout(CALL_TIMEOUT)
        size = struct.unpack("!I", _recv_exact(sock, 4))[0]
        reply = marshal.loads(_recv_exact(sock, size))
        rc, text = int(reply["rc"]), str(reply["stdout"])
    except (OSError, ConnectionError, ValueError, EOFError, TypeError, KeyError) as e:
        _kill(pidfd)            # it may not go on after we give up
        if env.get("CNI_COMMAND", "") != "ADD":
            fallback = "failed_mid_call"
            return _in_process(run_here, plugin, env, data, stdout)   # DEL, CHECK, STATUS, GC: idempotent
        answer_code = CODE_TRY_AGAIN
        out = {"cniVersion": "1.1.0", "code": CODE_TRY_AGAIN,
               "msg": "pycni helper failed during the call", "details": str(e) or type(e).__name__}
        from cni.spec import jsonio  # lazy: only on the path that needs it (the rule above)

        stdout.write(jsonio.dumps(out) + "\n")
        stdout.flush()
        return 1
    finally:
        sock.close()
        os.close(pidfd)
    if rc != 0:
        try:
            from cni.spec import jsonio  # lazy: only on the path that needs it (the rule above)

            answer_code = int(jsonio.loads(text).get("code") or 999)
        except (ValueError, TypeError, AttributeError):
            answer_code = 999
    stdout.write(text)
    stdout.flush()
    return rc
