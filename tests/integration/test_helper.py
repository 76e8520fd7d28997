"""The resident helper: same results as in process, and safe when it dies."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from .conftest import BIN, netconf, ready_line, sh
from .test_bridge import ping


@pytest.fixture
def helper(node):
    proc = start_helper(node, node.tmp / "helper.sock")
    try:
        assert "serving on" in ready_line(proc, stream=proc.stderr)
        yield proc
    finally:
        stop(proc)


def served_by_helper(node) -> int:
    if not node.log_file.exists():
        return 0
    return sum("(helper) ADD" in line and "added" in line for line in node.log_file.read_text().splitlines())


def test_calls_through_the_helper(node, helper):
    p1, p2 = node.pod(), node.pod()
    conf = netconf(node, "1.1.0", runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80}]})
    a = node.pycni("ADD", conf, p1, cid="a")
    b = node.pycni("ADD", {**conf, "runtimeConfig": {}}, p2, cid="b")
    assert a.rc == 0 and b.rc == 0, (a.out, b.out)
    assert served_by_helper(node) == 2
    assert ping(p1, b.out["ips"][0]["address"].split("/")[0])
    assert "pycni testnet/a/eth0" in sh("nft", "list", "ruleset", ns=node.name)
    assert node.pycni("CHECK", {**conf, "prevResult": a.out}, p1, cid="a").rc == 0
    assert node.pycni("STATUS", conf).rc == 0
    bad = node.pycni("ADD", {**conf, "name": "../x"}, p1, cid="c")
    assert bad.rc != 0 and bad.code == 7
    for cid, pod in (("a", p1), ("b", p2)):
        assert node.pycni("DEL", conf, pod, cid=cid).rc == 0
    assert node.reservations("testnet") == []
    assert "pycni testnet" not in sh("nft", "list", "ruleset", ns=node.name)
    ipam = node.run(BIN / "pycni-ipam", "ADD", {"cniVersion": "1.0.0", "name": "x", "ipam": conf["ipam"]},
                    "/dev/null", cid="i")
    assert ipam.rc == 0 and ipam.out["ips"][0]["address"] == "10.88.0.2/24"


def test_helper_gone_means_in_process(node, helper):
    helper.kill()
    helper.wait()
    assert (node.tmp / "helper.sock").exists()          # a stale socket is left behind
    pod = node.pod()
    res = node.pycni("ADD", netconf(node), pod)
    assert res.rc == 0, res.out
    assert served_by_helper(node) == 0


def test_helper_child_killed_mid_add(node, helper, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    slow = plugins / "slowipam"
    slow.write_text('#!/bin/sh\n[ "$CNI_COMMAND" = ADD ] && exec sleep 30\necho \'{"cniVersion": "1.0.0"}\'\n')
    slow.chmod(0o755)
    pod = node.pod()
    conf = netconf(node)
    conf["ipam"] = {"type": "slowipam"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(CNI_COMMAND="ADD", CNI_CONTAINERID="k", CNI_NETNS=f"/var/run/netns/{pod}", CNI_IFNAME="eth0",
               CNI_PATH=str(plugins), PYCNI_HELPER_SOCKET=str(node.tmp / "helper.sock"),
               PYCNI_LOG_FILE=str(node.log_file))
    client = subprocess.Popen(["ip", "netns", "exec", node.name, str(BIN / "pycni")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=env)
    client.stdin.write(json.dumps(conf).encode())
    client.stdin.close()
    child = sleeper = None
    for _ in range(100):                      # the helper's child, and the IPAM it is waiting for
        kids = sh("pgrep", "-P", str(helper.pid), check=False).split()
        if kids:
            child = int(kids[0])
            grandkids = sh("pgrep", "-P", str(child), check=False).split()
            if grandkids:
                sleeper = int(grandkids[0])
                break
        time.sleep(0.05)
    assert child and sleeper
    os.kill(child, signal.SIGKILL)
    out = json.loads(client.stdout.read())
    assert client.wait() == 1
    assert out["code"] == 11 and "helper" in out["msg"]
    os.kill(sleeper, signal.SIGKILL)
    # the runtime's follow-up DEL goes through the helper, which still serves
    dele = node.run(BIN / "pycni", "DEL", conf, pod, cid="k", env={"CNI_PATH": str(plugins)})
    assert dele.rc == 0, dele.out
    assert not [link for link in node.links() if link.startswith("veth")]
    assert helper.poll() is None


def stop(proc) -> None:
    """Kill a helper this test started (if it still runs) and close its stderr pipe."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stderr.close()


def start_helper(node, path):
    return subprocess.Popen(["ip", "netns", "exec", node.name, str(BIN / "pycni"), "helper", "--socket", str(path)],
                            stderr=subprocess.PIPE, text=True)


def test_a_second_helper_refuses_while_one_answers(node, helper):
    path = node.tmp / "helper.sock"
    second = start_helper(node, path)
    try:
        assert second.wait(timeout=30) != 0
        assert "another helper (pid " in second.stderr.read()
    finally:
        stop(second)
    pod = node.pod()
    assert node.pycni("ADD", netconf(node), pod, cid="one").rc == 0
    assert served_by_helper(node) == 1          # the first still serves, on its own socket


def test_a_helper_whose_socket_is_removed_stops_and_a_new_one_takes_the_name(node, helper):
    """Someone removes the helper's socket: the helper stops (saying why) rather than hold the
    name's lock listening where no caller can reach it; a new helper then serves, and the old
    one's exit removed nothing of the new one's."""
    path = node.tmp / "helper.sock"
    path.unlink()
    assert helper.wait(timeout=30) == 1
    assert "is no longer this helper's socket" in helper.stderr.read()
    second = start_helper(node, path)
    try:
        assert "serving on" in ready_line(second, stream=second.stderr)
        pod = node.pod()
        assert node.pycni("ADD", netconf(node), pod, cid="two").rc == 0
        assert served_by_helper(node) == 1
        assert path.exists()
    finally:
        stop(second)


def test_a_stopped_helper_costs_a_second_and_never_runs_the_call_later(node, helper):
    """SIGSTOP: the call is not acknowledged, so it runs in process after HANDOVER_TIMEOUT; after
    SIGCONT the helper finds the caller gone and does nothing (the call ran exactly once)."""
    pod, other = node.pod(), node.pod()
    conf = netconf(node)
    t0 = time.monotonic()
    assert node.pycni("ADD", conf, other, cid="warm").rc == 0
    served = time.monotonic() - t0
    os.kill(helper.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        res = node.pycni("ADD", conf, pod, cid="stopped")
        took = time.monotonic() - t0
        assert res.rc == 0, res.out
    finally:
        os.kill(helper.pid, signal.SIGCONT)
    time.sleep(1.5)                             # the helper wakes, accepts, finds no GO
    assert served_by_helper(node) == 1          # only the first call
    assert took < served + 3.0, (took, served)
    ips = [line for line in sh("ip", "-o", "-4", "addr", "show", ns=pod).splitlines() if "eth0" in line]
    assert len(ips) == 1 and len(node.reservations("testnet")) == 2
    assert helper.poll() is None
    print(f"helper stopped: ADD took {took * 1000:.0f} ms, {served * 1000:.0f} ms through the helper")


def test_a_socket_replaced_by_a_regular_file_means_in_process(node, helper):
    path = node.tmp / "helper.sock"
    path.unlink()
    path.write_text("not a socket")
    pod = node.pod()
    res = node.pycni("ADD", netconf(node), pod, cid="file")
    assert res.rc == 0, res.out
    assert served_by_helper(node) == 0


def test_only_root_may_call_the_helper(node):
    """SO_PEERCRED: a caller that is not root is refused (and logged), even when the socket's mode
    would let it in; the caller then runs in process (and, not being root, can only read)."""
    d = Path(tempfile.mkdtemp(prefix="peercred-", dir="/tmp"))
    os.chmod(d, 0o755)
    path = d / "helper.sock"
    helper = start_helper(node, path)
    try:
        assert "serving on" in ready_line(helper, stream=helper.stderr)
        os.chmod(path, 0o666)
        # STATUS: VERSION is always answered in process, never handed over
        env = {"CNI_COMMAND": "STATUS", "PYCNI_HELPER_SOCKET": str(path), "PATH": os.environ["PATH"]}
        out = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                              str(BIN / "pycni")], env=env, capture_output=True, text=True, timeout=60,
                             input=json.dumps({"cniVersion": "1.1.0", "name": "n", "type": "pycni"}))
        # answered in process: nothing (ready) or a CNI error (an unprivileged process cannot look)
        assert out.returncode == 0 or json.loads(out.stdout)["code"], out.stdout + out.stderr
        helper.send_signal(signal.SIGTERM)
        helper.wait(timeout=30)
        assert "refused a caller with uid 65534" in helper.stderr.read()
    finally:
        stop(helper)
        shutil.rmtree(d, ignore_errors=True)


def test_twenty_parallel_calls_through_the_helper_get_unique_addresses(node, helper):
    pods = [node.pod() for _ in range(20)]
    conf = netconf(node)
    procs = []
    for i, pod in enumerate(pods):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(CNI_COMMAND="ADD", CNI_CONTAINERID=f"par{i}", CNI_NETNS=f"/var/run/netns/{pod}",
                   CNI_IFNAME="eth0", CNI_PATH=str(BIN), PYCNI_HELPER_SOCKET=str(node.tmp / "helper.sock"),
                   PYCNI_LOG_FILE=str(node.log_file))
        p = subprocess.Popen(["ip", "netns", "exec", node.name, str(BIN / "pycni")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env=env)
        p.stdin.write(json.dumps(conf).encode())
        p.stdin.close()
        procs.append(p)
    outs = [json.loads(p.stdout.read()) for p in procs]
    assert all(p.wait(timeout=120) == 0 for p in procs), outs
    addrs = [o["ips"][0]["address"] for o in outs]
    assert len(set(addrs)) == 20
    # the helper's default bound is 16 at once: the first 16 are its own, a call beyond may have
    # waited for a child and then run in process (busy), never for another reason
    served = [line.split()[6:] for line in (node.tmp / "calls.log").read_text().splitlines() if " ADD " in line]
    assert len(served) == 20 and all(w in (["helper", "-"], ["process", "busy"]) for w in served), served
    assert served_by_helper(node) == served.count(["helper", "-"]) >= 16


def test_a_helper_in_another_mount_namespace_acts_in_the_callers(node):
    """The helper sees a tmpfs over the data dir; the call must still write where its caller looks
    (it runs in the caller's mount namespace), not into the helper's view."""
    path = node.tmp / "helper.sock"
    node.data_dir.mkdir()
    helper = subprocess.Popen(["ip", "netns", "exec", node.name, "unshare", "--mount", "--propagation", "private",
                               "sh", "-c", f"mount -t tmpfs helper-only {node.data_dir} && "
                                           f"exec {BIN / 'pycni'} helper --socket {path}"],
                              stderr=subprocess.PIPE, text=True)
    try:
        assert "serving on" in ready_line(helper, stream=helper.stderr)
        pod = node.pod()
        res = node.pycni("ADD", netconf(node), pod, cid="mnt")
        assert res.rc == 0, res.out
        assert served_by_helper(node) == 1
        assert node.reservations("testnet") == ["10.88.0.2"]     # in our view of the data dir
        assert node.pycni("DEL", netconf(node), pod, cid="mnt").rc == 0
        assert node.reservations("testnet") == []
    finally:
        stop(helper)


def slow_ipam(tmp_path, add_sleep: float = 0.0, first_del_sleep: float = 0.0):
    """A stand-in IPAM plugin that behaves as one (an address on ADD, nothing on DEL) but takes
    its time: ADD after `add_sleep` seconds, the first DEL only after `first_del_sleep`."""
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    exe = plugins / "slowipam"
    exe.write_text(f"""#!/bin/sh
cat >/dev/null
case "$CNI_COMMAND" in
ADD) sleep {add_sleep}
     echo '{{"cniVersion": "1.0.0", "ips": [{{"address": "10.88.0.50/24", "gateway": "10.88.0.1"}}]}}' ;;
DEL) if [ ! -e {plugins}/deleted-once ]; then touch {plugins}/deleted-once; sleep {first_del_sleep}; fi ;;
*) echo '{{"cniVersion": "1.0.0"}}' ;;
esac
""")
    exe.chmod(0o755)
    return plugins


def call_env(node, command, pod, cid, plugins, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS=f"/var/run/netns/{pod}", CNI_IFNAME="eth0",
               CNI_PATH=str(plugins), PYCNI_HELPER_SOCKET=str(node.tmp / "helper.sock"),
               PYCNI_LOG_FILE=str(node.log_file), **extra)
    return env


def start_call(node, env, conf) -> subprocess.Popen:
    proc = subprocess.Popen(["ip", "netns", "exec", node.name, str(BIN / "pycni")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env)
    proc.stdin.write(json.dumps(conf).encode())
    proc.stdin.close()
    return proc


def ancestors(pid: int) -> list[int]:
    out = []
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            break
        out.append(pid)
    return out


def wait_for_process(command: str, timeout: float = 30) -> int:
    """The pid of a process whose whole command line is `command` (the tests' sleeps have
    durations no other process uses)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = sh("pgrep", "-fx", command, check=False).split()
        if pids:
            return int(pids[0])
        time.sleep(0.02)
    raise AssertionError(f"no process {command!r}")


@pytest.mark.parametrize("through", ["helper", "in-process"])
def test_a_del_waits_for_the_add_of_the_same_attachment_in_flight(node, tmp_path, through, request):
    """A runtime's DEL that arrives while the ADD of the same attachment is still running (a runtime
    that gave up waiting, a helper child not yet killed): the DEL starts only once the ADD is over,
    so it removes what the ADD made instead of running first and leaving a veth behind."""
    if through == "helper":
        request.getfixturevalue("helper")
    extra = {} if through == "helper" else {"PYCNI_HELPER": "0"}
    plugins = slow_ipam(tmp_path, add_sleep=1.501)
    pod = node.pod()
    conf = {**netconf(node), "ipam": {"type": "slowipam"}}
    add = start_call(node, call_env(node, "ADD", pod, "race", plugins, **extra), conf)
    wait_for_process("sleep 1.501")              # the ADD is in its IPAM, the veth not made yet
    t0 = time.monotonic()
    dele = start_call(node, call_env(node, "DEL", pod, "race", plugins, **extra), conf)
    dele_out = dele.stdout.read()
    del_done = time.monotonic() - t0
    add_out = json.loads(add.stdout.read())
    assert add.wait(timeout=60) == 0, add_out
    assert dele.wait(timeout=60) == 0, dele_out
    assert del_done > 0.5, f"the DEL did not wait for the ADD ({del_done:.2f} s)"
    assert not [link for link in node.links() if link.startswith("veth")], node.links()
    assert "eth0" not in sh("ip", "-o", "link", ns=pod)
    if through == "helper":
        assert served_by_helper(node) == 1


def test_helper_child_killed_mid_del_runs_the_del_again_in_process(node, helper, tmp_path):
    plugins = slow_ipam(tmp_path, first_del_sleep=30.003)
    pod = node.pod()
    conf = {**netconf(node), "ipam": {"type": "slowipam"}}
    assert json.loads(start_call(node, call_env(node, "ADD", pod, "kd", plugins), conf).stdout.read())["ips"]
    dele = start_call(node, call_env(node, "DEL", pod, "kd", plugins), conf)
    sleeper = wait_for_process("sleep 30.003")
    child = int(sh("ps", "-o", "ppid=", "-p", str(sleeper)).split()[0])     # slowipam, run by...
    child = int(sh("ps", "-o", "ppid=", "-p", str(child)).split()[0]) if child != helper.pid else child
    assert int(sh("ps", "-o", "ppid=", "-p", str(child)).split()[0]) == helper.pid   # ...the helper's child
    t0 = time.monotonic()
    os.kill(child, signal.SIGKILL)
    out = dele.stdout.read()
    took = time.monotonic() - t0
    os.kill(sleeper, signal.SIGKILL)
    assert dele.wait(timeout=60) == 0, out
    assert not [link for link in node.links() if link.startswith("veth")]
    log = node.log_file.read_text()
    assert "pycni DEL kd/eth0 deleted" in log           # the in-process rerun did the work
    assert helper.poll() is None
    print(f"child killed mid-DEL: the DEL ran again in process in {took * 1000:.0f} ms")


def test_helper_killed_mid_add_the_call_completes_once_and_a_restarted_helper_serves(node, helper, tmp_path):
    """The helper itself dies while its child serves an ADD: the child finishes the call (it was
    acknowledged, so nobody else runs it) and answers; calls meanwhile run in process; a restarted
    helper takes over the stale socket and serves again."""
    plugins = slow_ipam(tmp_path, add_sleep=1.002)
    pod, later, last = node.pod(), node.pod(), node.pod()
    conf = {**netconf(node), "ipam": {"type": "slowipam"}}
    add = start_call(node, call_env(node, "ADD", pod, "hk", plugins), conf)
    sleeper = wait_for_process("sleep 1.002")
    assert helper.pid in ancestors(sleeper), "the ADD was not handed to the helper"
    helper.kill()
    helper.wait()
    out = json.loads(add.stdout.read())
    assert add.wait(timeout=60) == 0, out
    assert served_by_helper(node) == 1 and out["ips"][0]["address"] == "10.88.0.50/24"
    assert len([link for link in node.links() if link.startswith("veth")]) == 1
    assert node.pycni("ADD", netconf(node), later, cid="meanwhile").rc == 0      # in process
    assert served_by_helper(node) == 1
    again = start_helper(node, node.tmp / "helper.sock")
    try:
        assert "serving on" in ready_line(again, stream=again.stderr)
        assert node.pycni("ADD", netconf(node), last, cid="restarted").rc == 0
        assert served_by_helper(node) == 2
    finally:
        stop(again)


def status_line(node) -> str:
    lines = [line for line in node.log_file.read_text().splitlines() if "STATUS" in line and "ready; helper" in line]
    return lines[-1].split("ready; helper ", 1)[1]


def test_status_says_whether_the_helper_is_in_use(node):
    """STATUS never fails for want of a helper; its log line (and `pycni exec status`) says
    whether the helper serves: absent, in use, stopped."""
    conf = netconf(node, "1.1.0")
    assert node.pycni("STATUS", conf).rc == 0
    assert status_line(node).startswith(f"none at {node.tmp / 'helper.sock'}")
    helper = start_helper(node, node.tmp / "helper.sock")
    try:
        assert "serving on" in ready_line(helper, stream=helper.stderr)
        assert node.pycni("STATUS", conf).rc == 0
        assert status_line(node).startswith("in use (this call was served by the helper, pid ")
        conflist = node.tmp / "net.conflist"
        conflist.write_text(json.dumps({"cniVersion": "1.1.0", "name": conf["name"],
                                        "plugins": [{k: v for k, v in conf.items() if k not in ("cniVersion", "name")}]}))
        env = {**os.environ, "PYCNI_HELPER_SOCKET": str(node.tmp / "helper.sock"), "CNI_PATH": str(BIN)}
        env.pop("CNI_COMMAND", None)
        out = subprocess.run(["ip", "netns", "exec", node.name, str(BIN / "pycni"), "exec", "status", str(conflist)],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"ready; pycni helper: in use (pid {helper.pid}, {node.tmp / 'helper.sock'})" in out.stdout, out.stdout
        os.kill(helper.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            assert node.pycni("STATUS", conf).rc == 0
            took = time.monotonic() - t0
        finally:
            os.kill(helper.pid, signal.SIGCONT)
        assert status_line(node).startswith("did not take this call (TimeoutError")
        assert took < 3.0, took                     # one hand-over timeout, not two
    finally:
        stop(helper)


@pytest.mark.parametrize("through", ["helper", "in-process"])
def test_a_del_answers_once_both_veth_ends_are_gone(node, through, request):
    """DEL answers when the kernel has unregistered the veth pair (its RTM_DELLINK notification),
    not when the kernel's deleting call returns 15-30 ms later: by the answer both ends are out of
    their namespaces, so what the runtime does next (look, ADD the same attachment again) finds
    nothing of the old one."""
    if through == "helper":
        request.getfixturevalue("helper")
    extra = {} if through == "helper" else {"PYCNI_HELPER": "0"}
    pod = node.pod()
    conf = netconf(node)
    for _ in range(6):
        add = node.pycni("ADD", conf, pod, cid="again", env=extra)
        assert add.rc == 0, add.out
        assert node.pycni("DEL", conf, pod, cid="again", env=extra).rc == 0
        assert not [link for link in node.links() if link.startswith("veth")], node.links()
        assert "eth0" not in sh("ip", "-o", "link", ns=pod)
    assert node.reservations("testnet") == []
    if through == "helper":
        assert served_by_helper(node) == 6


def helper_children(pid: int) -> int:
    """How many processes the helper itself forked are alive now (its call children)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return len(f.read().split())
    except OSError:
        return 0


def test_a_bounded_helper_serves_at_most_its_calls_and_the_rest_run_in_their_callers(node, tmp_path):
    """`pycni helper --max-calls 2`: two slow ADDs hold both of its children; an ADD and a STATUS
    beyond them are answered at once in process (calls log: busy), a burst of 12 ADDs all succeed
    with distinct addresses while the helper never has more than 2 children, and once the slow
    ones are done the helper serves again."""
    path = node.tmp / "helper.sock"
    helper = subprocess.Popen(["ip", "netns", "exec", node.name, str(BIN / "pycni"), "helper", "--socket", str(path),
                               "--max-calls", "2"], stderr=subprocess.PIPE, text=True)
    most, sampling = [0], threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            most[0] = max(most[0], helper_children(helper.pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        assert "at most 2 calls at once" in ready_line(helper, stream=helper.stderr)
        sampler.start()
        slow = slow_ipam(tmp_path, add_sleep=4)
        conf = netconf(node)
        slow_conf = {**conf, "ipam": {"type": "slowipam"}}
        held = [start_call(node, call_env(node, "ADD", node.pod(), f"slow{i}", slow), slow_conf) for i in range(2)]
        deadline = time.monotonic() + 20
        while helper_children(helper.pid) < 2:
            assert time.monotonic() < deadline, "the slow ADDs never reached the helper"
            time.sleep(0.05)
        t0 = time.monotonic()
        extra = node.pycni("ADD", conf, node.pod(), cid="beyond")
        took = time.monotonic() - t0
        assert extra.rc == 0, extra.out
        assert calls_log_tail(node) == ["process", "busy"]
        assert took < 3.0, took                     # no hand-over timeout: refused at once
        assert node.pycni("STATUS", {**conf, "cniVersion": "1.1.0"}).rc == 0
        assert status_line(node).startswith("did not take this call (Busy: the helper serves its maximum")
        pods = [node.pod() for _ in range(12)]
        burst = [start_call(node, call_env(node, "ADD", pod, f"burst{i}", BIN), conf) for i, pod in enumerate(pods)]
        outs = [json.loads(p.stdout.read()) for p in burst]
        assert all(p.wait(timeout=120) == 0 for p in burst), outs
        assert len({o["ips"][0]["address"] for o in outs} | {extra.out["ips"][0]["address"]}) == 13
        assert all(p.wait(timeout=60) == 0 for p in held)
        sampling.set()
        sampler.join()
        assert most[0] == 2, most[0]
        adds = [line.split()[6:] for line in (node.tmp / "calls.log").read_text().splitlines() if " ADD " in line]
        assert len(adds) == 15 and all(a in (["helper", "-"], ["process", "busy"]) for a in adds), adds
        assert node.pycni("ADD", conf, node.pod(), cid="after").rc == 0
        assert calls_log_tail(node) == ["helper", "-"]
    finally:
        sampling.set()
        stop(helper)


def calls_log_tail(node) -> list[str]:
    return (node.tmp / "calls.log").read_text().splitlines()[-1].split()[6:]
