"""Crash safety: SIGKILL `pycni` at random moments of ADD and DEL, on each firewall backend, with
masquerade and one TCP and one UDP host port per pod, dual-stack. After the runtime's usual
follow-up (DEL of that container) the node must hold exactly what the live containers own:
their addresses and nothing else in the IPAM, their rules and nothing else in the firewall, their
veths. Children of a killed plugin (an `nft` transaction, the IPv6 iptables half) are waited for
before looking, so one that commits after the DEL is caught. GC with the live attachments must
then find nothing to do, and the IPAM lock is never stuck."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time

import pytest

from tests.integration.conftest import BIN, node, netconf, sh  # noqa: F401  (fixture)

from .conftest import SUMMARIES, profile

BACKENDS = ["nftables", "iptables"]
PODS = 6


def start(node, command, conf, pod, cid):  # noqa: F811
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
           "CNI_NETNS": f"/var/run/netns/{pod}", "CNI_IFNAME": "eth0", "CNI_PATH": str(BIN),
           "PYCNI_LOG_FILE": str(node.log_file), "PYCNI_HELPER": "0",
           "PYCNI_HELPER_SOCKET": str(node.tmp / "helper.sock")}
    p = subprocess.Popen(["ip", "netns", "exec", node.name, str(BIN / "pycni")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    p.stdin.write(json.dumps(conf).encode())
    p.stdin.close()
    return p


def pod_conf(node, backend, i):  # noqa: F811
    return netconf(node, "1.1.0", ranges=[[{"subnet": "10.90.0.0/26"}], [{"subnet": "fd90::/64"}]],
                   ipMasq=True, backend=backend, capabilities={"portMappings": True},
                   runtimeConfig={"portMappings": [
                       {"hostPort": 9100 + i, "containerPort": 80, "protocol": "tcp"},
                       {"hostPort": 9200 + i, "containerPort": 80, "protocol": "udp"}]})


def live_addresses(live) -> list[str]:
    out = []
    for pod in live.values():
        for fam in ("-4", "-6"):
            info = json.loads(sh("ip", "-j", fam, "addr", "show", "dev", "eth0", "scope", "global", ns=pod))
            out += [a["local"] for a in info[0]["addr_info"] if a.get("local")]
    return sorted(out)


def rule_owners(node, backend) -> list[str]:  # noqa: F811
    """The container id of every pycni rule or element of the network, once per rule/element."""
    if backend == "nftables":
        text = sh("nft", "list", "ruleset", ns=node.name)
    else:
        text = sh("iptables-legacy-save", ns=node.name) + sh("ip6tables-legacy-save", ns=node.name)
    return re.findall(r"pycni testnet/([^/\"]+)/", text)


def living(pids: list[str]) -> list[str]:
    """The processes that are not on their way out: a child killed with its parent may still be
    exiting when we look (PF_EXITING set, or SIGKILL pending)."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue                    # gone already
        exiting = int(fields[6]) & 0x4  # PF_EXITING (field 9 of stat)
        killed = any(int(status.get(k, "0").strip(), 16) & (1 << 8) for k in ("SigPnd", "ShdPnd"))
        if fields[0] not in ("Z", "X") and not exiting and not killed:
            out.append(pid)
    return out


def strays(node, keep: tuple[int, ...] = ()) -> None:  # noqa: F811
    """Wait until no process runs in the node namespace (children of a killed plugin) but `keep`."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = set(sh("ip", "netns", "pids", node.name).split()) - {str(k) for k in keep}
        if not pids:
            return
        time.sleep(0.02)
    raise AssertionError(f"processes still running in {node.name}: {pids}")


def wait_for_child(pid: int, timeout: float) -> int:
    """1 as soon as `pid` has a child process, 0 if it has none within `timeout` (or is gone)."""
    path = f"/proc/{pid}/task/{pid}/children"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                if f.read().strip():
                    return 1
        except OSError:
            return 0
    return 0


def mismatches(node, backend, live) -> list[str]:  # noqa: F811
    """What the node holds beyond (or short of) what the live containers own."""
    out = []
    addrs, held = live_addresses(live), node.reservations("testnet")
    if addrs != held:
        out.append(f"reservations {held} != live addresses {addrs}")
    if len(addrs) != len(set(addrs)):
        out.append(f"an address is held twice: {addrs}")
    owners = rule_owners(node, backend)
    if set(owners) != set(live):
        out.append(f"firewall rules of {sorted(set(owners))} != live {sorted(live)}")
    veths = [link for link in node.links() if link.startswith("veth")]
    if len(veths) != len(live):
        out.append(f"{len(veths)} host veths for {len(live)} live containers")
    if node.scratch_files("testnet"):
        out.append(f"scratch files {node.scratch_files('testnet')}")
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_during_add_and_del_leaves_exactly_the_live_containers(node, backend):  # noqa: F811
    trials = profile(30, 200)
    seed = int(os.environ.get("PYCNI_SEED", "1234"))
    rng = random.Random(seed)
    confs = [pod_conf(node, backend, i) for i in range(PODS)]
    # how long a call takes here, to spread the kill over the whole call
    warm = node.pod()
    t0 = time.perf_counter()
    assert node.pycni("ADD", confs[0], warm, cid="warm").rc == 0
    duration = time.perf_counter() - t0
    assert node.pycni("DEL", confs[0], warm, cid="warm").rc == 0
    pods = [node.pod() for _ in range(PODS)]
    live: dict[str, str] = {}          # cid -> pod of containers that are up
    killed = completed = at_child = orphans = 0
    after_del: list[str] = []
    for trial in range(trials):
        i = trial % PODS
        pod, conf = pods[i], confs[i]
        cid = f"t{trial}"
        # a pod namespace is reused: the previous container in it goes first, as a runtime would
        for old, p in list(live.items()):
            if p == pod:
                assert node.pycni("DEL", conf, pod, cid=old).rc == 0
                del live[old]
        command = "ADD" if trial % 3 else "DEL"
        if command == "DEL":        # kill a DEL of a container that is up
            assert node.pycni("ADD", conf, pod, cid=cid).rc == 0
        proc = start(node, command, conf, pod, cid)
        if trial % 2:
            time.sleep(rng.uniform(0, duration * 1.2))
        else:   # the moment a child appears (nft, the IPv6 iptables half): the worst time to die
            at_child += wait_for_child(proc.pid, duration * 2)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        else:
            completed += 1
        proc.wait()
        proc.stdout.close()
        orphans += len(living(sh("ip", "netns", "pids", node.name).split()))   # children that outlived it
        # the runtime's follow-up: DEL of that container (a killed ADD or DEL counts as failed)
        if proc.returncode != 0 or command == "DEL":
            dele = node.pycni("DEL", conf, pod, cid=cid)
            assert dele.rc == 0, dele.out
        else:
            live[cid] = pod
        strays(node)          # before looking: a late commit by such a child shows as a leftover
        after_del += [f"trial {trial} ({command}): {m}" for m in mismatches(node, backend, live)]
    # GC with the containers that are still up as the valid attachments: nothing left to collect
    valid = [{"containerID": c, "ifname": "eth0"} for c in live]
    gc_conf = {k: v for k, v in confs[0].items() if k != "runtimeConfig"}
    assert node.pycni("GC", {**gc_conf, "cni.dev/valid-attachments": valid}).rc == 0
    after_gc = mismatches(node, backend, live)
    for cid, pod in list(live.items()):
        assert node.pycni("DEL", confs[pods.index(pod)], pod, cid=cid).rc == 0
    del_all = mismatches(node, backend, {})
    # the lock is not stuck: a fresh ADD goes through at once
    t0 = time.perf_counter()
    assert node.pycni("ADD", confs[0], pods[0], cid="final").rc == 0
    assert time.perf_counter() - t0 < 10
    assert node.pycni("DEL", confs[0], pods[0], cid="final").rc == 0
    SUMMARIES.append(f"crash ({backend}, seed {seed}): {trials} trials, {killed} killed mid-call, "
                     f"{completed} finished first, {at_child} killed while a child ran, "
                     f"{orphans} children outlived their killed plugin, "
                     f"leftovers after DEL = {len(after_del)}, after GC = {len(after_gc)}, "
                     f"after the last DELs = {len(del_all)}")
    assert orphans == 0, "children of a killed plugin ran on (they may commit after the runtime's DEL)"
    assert after_del == [] and after_gc == [] and del_all == [], after_del[:5] + after_gc + del_all


def slow_host_local(tmp_path) -> "Path":
    """A delegated IPAM that is a separate program: the reference host-local, its ADD started a
    moment late (so a SIGKILL of the caller lands while it runs)."""
    from pathlib import Path

    d = Path(tmp_path) / "delegated"
    d.mkdir()
    exe = d / "slowlocal"
    exe.write_text('#!/bin/sh\n[ "$CNI_COMMAND" = ADD ] && sleep 3.917\nexec /usr/lib/cni/host-local\n')
    exe.chmod(0o755)
    return d


@pytest.mark.parametrize("through", ["in-process", "helper"])
def test_sigkill_mid_add_with_a_delegated_ipam_leaks_no_address(node, tmp_path, through):  # noqa: F811
    """ipam.type another program (host-local): pycni SIGKILLed while that program runs, then the
    runtime's DEL. The delegated ADD must not go on after its caller is gone and reserve an
    address after the DEL (in process, and in a helper's child, which the helper kills when its
    caller hangs up)."""
    from tests.integration.test_helper import start_helper, stop
    from tests.integration.conftest import ready_line

    plugins = slow_host_local(tmp_path)
    helper = None
    if through == "helper":
        helper = start_helper(node, node.tmp / "helper.sock")
        assert "serving on" in ready_line(helper, stream=helper.stderr)
    try:
        conf = netconf(node, ipMasq=True)
        conf["ipam"] = {"type": "slowlocal", "dataDir": str(node.data_dir), "ranges": [[{"subnet": "10.91.0.0/26"}]]}
        leaks = []
        for trial in range(profile(3, 20)):
            pod = node.pod()
            cid = f"d{trial}"
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid,
                   "CNI_NETNS": f"/var/run/netns/{pod}", "CNI_IFNAME": "eth0", "CNI_PATH": str(plugins),
                   "PYCNI_LOG_FILE": str(node.log_file), "PYCNI_HELPER": "1" if helper else "0",
                   "PYCNI_HELPER_SOCKET": str(node.tmp / "helper.sock")}
            p = subprocess.Popen(["ip", "netns", "exec", node.name, str(BIN / "pycni")], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
            p.stdin.write(json.dumps(conf).encode())
            p.stdin.close()
            deadline = time.monotonic() + 30
            while "sleep 3.917" not in sh("ps", "-eo", "args"):     # the delegated ADD is running
                assert time.monotonic() < deadline and p.poll() is None, "the delegated ADD never started"
                time.sleep(0.01)
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            p.stdout.close()
            dele = node.pycni("DEL", conf, pod, cid=cid, env={"CNI_PATH": str(plugins),
                                                               **({} if helper else {"PYCNI_HELPER": "0"})})
            assert dele.rc == 0, dele.out
            strays(node, keep=(helper.pid,) if helper else ())   # all of the call gone before we look
            held = [f for f in node.reservations("testnet")]
            if held:
                leaks.append(f"trial {trial}: {held} reserved after the DEL")
                for f in held:
                    (node.data_dir / "testnet" / f).unlink()
        SUMMARIES.append(f"crash, delegated IPAM ({through}): {profile(3, 20)} ADDs killed mid-IPAM, "
                         f"{len(leaks)} left a reservation after the runtime's DEL")
        assert leaks == [], leaks
        if helper:
            assert helper.poll() is None
    finally:
        if helper:
            stop(helper)
