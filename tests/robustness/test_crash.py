"""Crash safety: SIGKILL `pycni` at random moments of ADD and DEL; after the runtime's usual
follow-up (DEL of that container, then GC with the valid attachments) nothing is leaked, no live
container's address is handed out again, and the IPAM lock is never stuck."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

from tests.integration.conftest import BIN, node, netconf, sh  # noqa: F401  (fixture)

from .conftest import SUMMARIES, profile


def start(node, command, conf, pod, cid):  # noqa: F811
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
           "CNI_NETNS": f"/var/run/netns/{pod}", "CNI_IFNAME": "eth0", "CNI_PATH": str(BIN),
           "PYCNI_LOG_FILE": str(node.log_file), "PYCNI_HELPER": "0"}
    p = subprocess.Popen(["ip", "netns", "exec", node.name, str(BIN / "pycni")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    p.stdin.write(json.dumps(conf).encode())
    p.stdin.close()
    return p


def live_addresses(node, live):  # noqa: F811
    out = {}
    for cid, pod in live.items():
        info = json.loads(sh("ip", "-j", "-4", "addr", "show", "dev", "eth0", ns=pod))
        out[cid] = [a["local"] for a in info[0]["addr_info"]]
    return out


def test_sigkill_during_add_and_del_leaks_nothing(node):  # noqa: F811
    trials = profile(40, 200)
    rng = random.Random(1234)
    conf = netconf(node, "1.1.0", subnet="10.90.0.0/26", ipMasq=True,
                   runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "udp"}]})
    # how long a call takes here, to spread the kill over the whole call
    warm = node.pod()
    t0 = time.perf_counter()
    assert node.pycni("ADD", conf, warm, cid="warm").rc == 0
    duration = time.perf_counter() - t0
    assert node.pycni("DEL", conf, warm, cid="warm").rc == 0
    pods = [node.pod() for _ in range(6)]
    live: dict[str, str] = {}          # cid -> pod of containers that are up
    killed = completed = 0
    for trial in range(trials):
        pod = pods[trial % len(pods)]
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
        time.sleep(rng.uniform(0, duration * 1.2))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        else:
            completed += 1
        proc.wait()
        proc.stdout.close()
        # the runtime's follow-up: DEL of that container (a killed ADD or DEL counts as failed)
        if proc.returncode != 0 or command == "DEL":
            dele = node.pycni("DEL", conf, pod, cid=cid)
            assert dele.rc == 0, dele.out
        else:
            live[cid] = pod
        addrs = [a for v in live_addresses(node, live).values() for a in v]
        assert len(addrs) == len(set(addrs)), f"an address is held twice: {addrs}"
        held = node.reservations("testnet")
        assert sorted(addrs) == sorted(held) or set(addrs) <= set(held), (addrs, held)
    # GC with the containers that are still up as the valid attachments, then take those down
    valid = [{"containerID": c, "ifname": "eth0"} for c in live]
    assert node.pycni("GC", {**netconf(node, "1.1.0", subnet="10.90.0.0/26", ipMasq=True),
                             "cni.dev/valid-attachments": valid}).rc == 0
    assert len(node.reservations("testnet")) == len(live)
    for cid, pod in list(live.items()):
        assert node.pycni("DEL", conf, pod, cid=cid).rc == 0
    leaks = node.reservations("testnet") + node.scratch_files("testnet") + \
        [link for link in node.links() if link.startswith("veth")]
    rules = sh("nft", "list", "ruleset", ns=node.name)
    leaks += [line.strip() for line in rules.splitlines() if "pycni testnet/" in line]
    # the lock is not stuck: a fresh ADD goes through at once
    t0 = time.perf_counter()
    assert node.pycni("ADD", conf, pods[0], cid="final").rc == 0
    assert time.perf_counter() - t0 < 10
    assert node.pycni("DEL", conf, pods[0], cid="final").rc == 0
    SUMMARIES.append(f"crash: {trials} trials, {killed} killed mid-call, {completed} finished first, "
                     f"leaks found = {len(leaks)}")
    assert leaks == []
