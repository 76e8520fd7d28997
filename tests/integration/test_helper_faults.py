"""The helper as a careful operator or a local attacker finds it (issue 23 rows 1, 4, 5, 6, 10 and
issue 28 rows 8, 12): each test starts the real executables the way the row says and looks at what
the call did, what the caller saw, or what an eavesdropper received."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from .conftest import BIN, IP, netconf, ready_line, sh
from .test_helper import call_env, served_by_helper, slow_ipam, start_call, start_helper, status_line, stop, \
    wait_for_process

NO_NFT_PATH = "/usr/bin:/bin"       # nft lives in /usr/sbin: a caller whose PATH has no `nft`


@pytest.fixture
def helper(node):
    proc = start_helper(node, node.tmp / "helper.sock")
    try:
        assert "serving on" in ready_line(proc, stream=proc.stderr)
        yield proc
    finally:
        stop(proc)


def calls_log(node) -> list[list[str]]:
    path = node.tmp / "calls.log"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


# ---------------------------------------------------------------- row 1: no CAP_SYS_ADMIN


def test_a_helper_without_cap_sys_admin_hands_every_call_back(node):
    """A helper started without CAP_SYS_ADMIN (a unit or DaemonSet with fewer capabilities) cannot
    enter its callers' namespaces: the caller learns it before the ACK and runs the call itself,
    and STATUS / `pycni exec status` never say the helper is in use."""
    path = node.tmp / "helper.sock"
    proc = subprocess.Popen([IP, "netns", "exec", node.name, "setpriv", "--bounding-set=-sys_admin",
                             "--inh-caps=-sys_admin", str(BIN / "pycni"), "helper", "--socket", str(path)],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert "serving on" in ready_line(proc, stream=proc.stderr)
        caps = int(re.search(r"CapEff:\s*([0-9a-f]+)", Path(f"/proc/{proc.pid}/status").read_text())[1], 16)
        assert not caps & (1 << 21), "the helper still has CAP_SYS_ADMIN"
        pod = node.pod()
        conf = netconf(node, "1.1.0", ipMasq=True)
        add = node.pycni("ADD", conf, pod, cid="nocap")
        assert add.rc == 0, add.out
        assert served_by_helper(node) == 0
        assert calls_log(node)[-1][6:] == ["process", "cannot_serve"], calls_log(node)
        assert node.pycni("STATUS", conf).rc == 0
        assert "in use" not in status_line(node) and "cannot enter" in status_line(node), status_line(node)
        conflist = node.tmp / "net.conflist"
        conflist.write_text(json.dumps({"cniVersion": "1.1.0", "name": conf["name"], "plugins": [
            {k: v for k, v in conf.items() if k not in ("cniVersion", "name")}]}))
        env = {**os.environ, "PYCNI_HELPER_SOCKET": str(path), "CNI_PATH": str(BIN)}
        env.pop("CNI_COMMAND", None)
        out = subprocess.run([IP, "netns", "exec", node.name, str(BIN / "pycni"), "exec", "status", str(conflist)],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "pycni helper: cannot serve" in out.stdout and "in use" not in out.stdout, out.stdout
        dele = node.pycni("DEL", conf, pod, cid="nocap")
        assert dele.rc == 0, dele.out
        assert node.reservations("testnet") == []
        assert proc.poll() is None
    finally:
        stop(proc)


# ---------------------------------------------------------------- row 4: the caller's environment


def fake_nft(tmp_path) -> tuple[Path, Path]:
    """A directory with an `nft` that records each run and then is the real one."""
    d = tmp_path / "fakebin"
    d.mkdir()
    record = tmp_path / "nft-runs"
    real = shutil.which("nft") or "/usr/sbin/nft"
    (d / "nft").write_text(f"#!/bin/sh\necho \"$@\" >> {record}\nexec {real} \"$@\"\n")
    (d / "nft").chmod(0o755)
    return d, record


def test_pycni_nft_exec_of_the_caller_is_honoured_by_the_helper(node, helper, tmp_path):
    """PYCNI_NFT=exec in the caller's environment: the helper's child runs the `nft` program of the
    caller's PATH, as the call in process would, not the library the helper loaded."""
    fakebin, record = fake_nft(tmp_path)
    pod = node.pod()
    conf = netconf(node, ipMasq=True, backend="nftables")
    env = {"PYCNI_NFT": "exec", "PATH": f"{fakebin}:{os.environ['PATH']}"}
    add = node.pycni("ADD", conf, pod, cid="exec", env=env)
    assert add.rc == 0, add.out
    assert served_by_helper(node) == 1
    assert record.exists() and record.read_text().strip(), "the helper's child did not run the caller's nft"
    assert node.pycni("DEL", conf, pod, cid="exec", env=env).rc == 0


def firewall_owners(node, backend) -> set[str]:
    if backend == "nftables":
        text = sh("nft", "list", "ruleset", ns=node.name)
    else:
        text = sh("iptables-legacy-save", ns=node.name) + sh("ip6tables-legacy-save", ns=node.name)
    return set(re.findall(r"pycni testnet/([^/\"]+)/", text))


def test_the_backend_follows_the_callers_path_through_the_helper(node, helper):
    """No backend configured and no legacy nat table: the backend is nftables when `nft` is on the
    caller's PATH, else iptables; the helper's child decides by the caller's PATH, not its own."""
    pod = node.pod()
    conf = netconf(node, ipMasq=True)
    add = node.pycni("ADD", conf, pod, cid="path", env={"PATH": NO_NFT_PATH})
    assert add.rc == 0, add.out
    assert served_by_helper(node) == 1
    assert firewall_owners(node, "iptables") == {"path"}
    assert firewall_owners(node, "nftables") == set()
    assert node.pycni("DEL", conf, pod, cid="path", env={"PATH": NO_NFT_PATH}).rc == 0
    assert firewall_owners(node, "iptables") == set()


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_del_without_nft_on_path_removes_what_an_add_through_the_helper_made(node, helper, backend):
    """ADD through the helper, then a DEL in process whose PATH has no `nft` (another runtime, a
    restarted one): the attachment's masquerade and DNAT elements go, whatever is on PATH."""
    pod = node.pod()
    conf = netconf(node, "1.1.0", ipMasq=True, backend=backend, capabilities={"portMappings": True},
                   runtimeConfig={"portMappings": [{"hostPort": 9300, "containerPort": 80, "protocol": "tcp"}]})
    add = node.pycni("ADD", conf, pod, cid="np")
    assert add.rc == 0, add.out
    assert served_by_helper(node) == 1
    assert firewall_owners(node, backend) == {"np"}
    dele = node.pycni("DEL", conf, pod, cid="np", env={"PATH": NO_NFT_PATH, "PYCNI_HELPER": "0"})
    assert dele.rc == 0, dele.out
    assert firewall_owners(node, backend) == set(), "DEL left firewall elements of a released address"
    assert node.reservations("testnet") == []


# ---------------------------------------------------------------- row 5: a child's own connection


def read_within(proc: subprocess.Popen, timeout: float) -> bytes:
    """All `proc` prints, or an assertion when its stdout is still open after `timeout`."""
    import selectors

    out, deadline = b"", time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            assert left > 0 and sel.select(left), f"no answer within {timeout:g} s"
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                return out
            out += chunk


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_killed_child_s_caller_does_not_wait_for_its_siblings(node, helper, tmp_path):
    """Two calls in flight, the second forked after the first: killing the first's child answers
    its caller at once (code 11), while the second still runs; a child held only its own
    connection."""
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    first_ipam, second_ipam = slow_ipam(first_dir, add_sleep=30.101), slow_ipam(second_dir, add_sleep=30.202)
    pods = [node.pod(), node.pod()]
    conf = {**netconf(node), "ipam": {"type": "slowipam"}}
    first = start_call(node, call_env(node, "ADD", pods[0], "first", first_ipam), conf)
    sleep1 = wait_for_process("sleep 30.101")
    second = start_call(node, call_env(node, "ADD", pods[1], "second", second_ipam), conf)
    sleep2 = wait_for_process("sleep 30.202")
    try:
        child1 = parent(parent(sleep1))             # sleep <- slowipam <- the helper's child
        assert parent(child1) == helper.pid
        os.kill(child1, signal.SIGKILL)
        out = read_within(first, 15)                # before the fix: only when the second is over
        assert second.poll() is None, "the second call ended first: the test proves nothing"
        assert json.loads(out)["code"] == 11
    finally:
        for pid in (sleep1, sleep2):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        first.kill()
        second.kill()
        first.wait()
        second.wait()


# ---------------------------------------------------------------- row 6: the metrics child


def test_a_dead_metrics_server_is_reported_and_started_again(node, tmp_path):
    """The helper's metrics child dies: the helper says so and starts another (signalled only
    through its pidfd); SIGTERM then stops the new one with the helper."""
    from .test_metrics import PORT, fetch

    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    proc = subprocess.Popen([IP, "netns", "exec", node.name, str(BIN / "pycni"), "helper", "--socket",
                             str(node.tmp / "helper.sock"), "--metrics-address", f"127.0.0.1:{PORT}",
                             "--conf-dir", str(conf_dir)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert "metrics on" in ready_line(proc, stream=proc.stderr)
        deadline = time.monotonic() + 20
        while fetch(node, "/healthz")[0] != 200:
            assert time.monotonic() < deadline, "the helper's metrics never ready"
            time.sleep(0.2)
        first = [int(p) for p in sh("pgrep", "-P", str(proc.pid)).split()]
        assert len(first) == 1
        os.kill(first[0], signal.SIGKILL)
        line = ready_line(proc, stream=proc.stderr, timeout=15)
        assert f"metrics server (pid {first[0]}) ended (signal 9)" in line, line
        deadline = time.monotonic() + 20
        while fetch(node, "/healthz")[0] != 200:
            assert time.monotonic() < deadline, "the metrics server was not started again"
            time.sleep(0.2)
        second = [int(p) for p in sh("pgrep", "-P", str(proc.pid)).split()]
        assert len(second) == 1 and second != first
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not os.path.exists(f"/proc/{second[0]}") or \
            Path(f"/proc/{second[0]}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    finally:
        stop(proc)


def test_stopping_signals_no_process_that_took_a_reaped_metrics_child_s_pid(node, tmp_path):
    """The metrics child dies and is reaped; before it is started again another process is given
    its pid (the kernel's next pid set to it). The helper's SIGTERM (the same stop as an upgrade's
    re-exec) must leave that process alone: the dead child is signalled through its pidfd only."""
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    proc = subprocess.Popen([IP, "netns", "exec", node.name, str(BIN / "pycni"), "helper", "--socket",
                             str(node.tmp / "helper.sock"), "--metrics-address", "127.0.0.1:9163",
                             "--conf-dir", str(conf_dir)], stderr=subprocess.PIPE, text=True, env=env)
    squatter = None
    try:
        assert "metrics on" in ready_line(proc, stream=proc.stderr)
        child = [int(p) for p in sh("pgrep", "-P", str(proc.pid)).split()]
        assert len(child) == 1
        os.kill(child[0], signal.SIGKILL)           # at once: its restart is due 5 s after its start
        line = ready_line(proc, stream=proc.stderr, timeout=15)
        assert f"metrics server (pid {child[0]}) ended (signal 9)" in line, line
        for _ in range(50):                         # other processes of the machine fork too
            Path("/proc/sys/kernel/ns_last_pid").write_text(str(child[0] - 1))
            squatter = subprocess.Popen(["sleep", "300.616"])
            if squatter.pid == child[0]:
                break
            squatter.kill()
            squatter.wait()
            squatter = None
        assert squatter is not None, f"pid {child[0]} could not be taken again"
        assert sh("pgrep", "-P", str(proc.pid), check=False).split() == [], \
            "the metrics child was started again before the test could stop the helper"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        time.sleep(0.2)
        assert squatter.poll() is None, f"the helper signalled pid {child[0]}, no longer its child"
    finally:
        if squatter is not None:
            squatter.kill()
            squatter.wait()
        stop(proc)


# ---------------------------------------------------------------- row 10: two at once


def test_two_helpers_started_at_the_same_moment_one_serves_the_other_says_why(node):
    path = node.tmp / "helper.sock"
    pod = node.pod()
    for round_ in range(6):
        procs = [start_helper(node, path), start_helper(node, path)]
        try:
            lines = [ready_line(p, stream=p.stderr, timeout=30) for p in procs]
            serving = [p for p, line in zip(procs, lines) if line.startswith("pycni helper: serving on")]
            losers = [(p, line) for p, line in zip(procs, lines) if p not in serving]
            assert len(serving) == 1, lines
            assert losers[0][0].wait(timeout=30) == 1 and "another helper" in losers[0][1], lines
            assert node.pycni("ADD", netconf(node), pod, cid=f"r{round_}").rc == 0
            assert served_by_helper(node) == round_ + 1, "the helper that says it serves does not"
            assert node.pycni("DEL", netconf(node), pod, cid=f"r{round_}").rc == 0
        finally:
            for p in procs:
                stop(p)


# ---------------------------------------------------------------- issue 28 row 8: whom root talks to

EAVESDROPPER = textwrap.dedent("""
    import os, socket, sys
    path, record, uid, bind_first = sys.argv[1], open(sys.argv[2], "ab"), int(sys.argv[3]), sys.argv[4] == "1"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if bind_first:              # as root, in a root-only directory; listen() below as the user
        s.bind(path)
        os.chmod(path, 0o777)
    os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
    if not bind_first:          # the user's own socket in a directory everyone can write
        s.bind(path)
        os.chmod(path, 0o777)
    s.listen(8)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        c.settimeout(3)
        got = b""
        try:
            msg, anc, _, _ = c.recvmsg(65536, socket.CMSG_SPACE(64))
            got += msg + b"".join(d for _, _, d in anc)
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
        record.write(b"CONNECTION %d\\n" % len(got))
        record.flush()
        c.close()
""")


def eavesdropper(tmp_path, path: Path, bind_as_root: bool, uid: int = 65534) -> tuple[subprocess.Popen, Path]:
    """A listener on `path` run as `uid` that records every byte a caller sends it."""
    script = tmp_path / "eavesdropper.py"
    script.write_text(EAVESDROPPER)
    record = tmp_path / "eavesdropped"
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(record), str(uid),
                             "1" if bind_as_root else "0"], stdout=subprocess.PIPE, text=True)
    assert ready_line(proc) == "ready\n"
    return proc, record


def received(record: Path) -> int:
    return sum(int(line.split()[1]) for line in record.read_text().splitlines())


@pytest.fixture
def shared_dir():
    d = Path(tempfile.mkdtemp(prefix="shared-", dir="/tmp"))
    os.chmod(d, 0o1777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_root_hands_no_call_to_a_listener_in_a_shared_directory(node, tmp_path, shared_dir):
    """An unprivileged user's listener named by PYCNI_HELPER_SOCKET in a world-writable directory:
    root's ADD and DEL run in process and the listener receives nothing (no env, stdin or fds)."""
    path = shared_dir / "helper.sock"
    listener, record = eavesdropper(tmp_path, path, bind_as_root=False)
    try:
        assert path.stat().st_uid == 65534
        pod = node.pod()
        conf = netconf(node, "1.1.0")
        env = {"PYCNI_HELPER_SOCKET": str(path)}
        assert node.pycni("ADD", conf, pod, cid="shared", env=env).rc == 0
        assert node.pycni("STATUS", conf, env=env).rc == 0
        assert node.pycni("DEL", conf, pod, cid="shared", env=env).rc == 0
        assert received(record) == 0, "root's call reached an unprivileged listener"
    finally:
        listener.kill()
        listener.wait()
        listener.stdout.close()


def test_root_hands_no_call_to_a_listener_that_is_not_root(node, tmp_path):
    """A root-owned socket in a root-only directory whose listener is not root (SO_PEERCRED): the
    caller checks whom it talks to before it sends anything."""
    d = tmp_path / "sockdir"
    d.mkdir(mode=0o755)
    path = d / "helper.sock"
    listener, record = eavesdropper(tmp_path, path, bind_as_root=True)
    try:
        assert path.stat().st_uid == 0
        pod = node.pod()
        conf = netconf(node)
        env = {"PYCNI_HELPER_SOCKET": str(path)}
        add = node.pycni("ADD", conf, pod, cid="peer", env=env)
        assert add.rc == 0, add.out
        assert node.pycni("DEL", conf, pod, cid="peer", env=env).rc == 0
        assert received(record) == 0, "root's call reached a listener that is not root"
        assert served_by_helper(node) == 0
    finally:
        listener.kill()
        listener.wait()
        listener.stdout.close()


def test_the_helper_refuses_a_socket_directory_others_can_write(node, shared_dir):
    proc = start_helper(node, shared_dir / "helper.sock")
    try:
        assert proc.wait(timeout=30) == 1
        assert "not a directory only root can write" in proc.stderr.read()
        assert not (shared_dir / "helper.sock").exists()
    finally:
        stop(proc)


def test_lock_stripes_in_a_shared_directory_steer_and_stall_nothing(node, tmp_path, shared_dir):
    """A local user made `calls/` in the shared directory first: every stripe a symlink into a
    root-only directory, one stripe flocked by that user. Root's ADD neither creates files through
    the links nor waits for that user's lock."""
    from cni.runtime.attachment_lock import STRIPES, lock_path

    calls = shared_dir / "calls"
    calls.mkdir()
    os.chown(calls, 65534, 65534)
    secret = tmp_path / "root-only"
    secret.mkdir(mode=0o700)
    for key in range(STRIPES):
        os.symlink(secret / f"made-{key:03x}", calls / f"{key:03x}")
    env = {"PYCNI_HELPER_SOCKET": str(shared_dir / "helper.sock"), "PYCNI_HELPER": "0"}
    stripe = Path(lock_path(env, "pycni", "testnet", "held", "eth0"))
    stripe.unlink()
    stripe.touch()
    os.chown(stripe, 65534, 65534)
    holder = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "flock", "-x",
                               str(stripe), "sleep", "300.404"])
    sleeper = 0
    try:
        sleeper = wait_for_process("sleep 300.404")
        pod = node.pod()
        conf = netconf(node)
        t0 = time.monotonic()
        add = node.pycni("ADD", conf, pod, cid="held", env=env)
        took = time.monotonic() - t0
        assert add.rc == 0, add.out
        assert took < 60, f"root's ADD waited {took:.0f} s for another user's lock"
        assert list(secret.iterdir()) == [], "root created files through another user's symlinks"
        assert "not serialised" in node.log_file.read_text()
        assert node.pycni("DEL", conf, pod, cid="held", env=env).rc == 0
    finally:
        for pid in (sleeper, holder.pid):
            try:
                if pid:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        holder.wait()


# ---------------------------------------------------------------- issue 28 row 12: stdin bound


def test_a_config_past_the_stdin_bound_is_refused_without_reaching_the_helper(node, helper):
    """17 MiB on stdin with a helper serving: code 5, answered by the caller itself from at most
    the bound + 1 byte (the helper's child never sees it)."""
    big = json.dumps({**netconf(node), "pad": "x" * (17 << 20)}).encode()
    pod = node.pod()
    res = node.pycni("ADD", big, pod, cid="big")
    assert res.rc != 0 and res.code == 5, res.out
    assert served_by_helper(node) == 0
    assert calls_log(node)[-1][6:] == ["process", "oversized"], calls_log(node)
    assert node.reservations("testnet") == []
