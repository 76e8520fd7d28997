"""Exhaustion, reboot, hostile values, and a data dir written by the reference host-local."""

from __future__ import annotations

import json
import os
import stat

import pytest

from tests.integration.conftest import BIN, REFERENCE_DIR, netconf, node, sh  # noqa: F401  (fixture)

from .conftest import SUMMARIES


def test_exhaustion_of_a_slash_28(node):  # noqa: F811
    conf = netconf(node, "1.1.0", subnet="10.92.0.0/28")        # .2 - .14 usable: 13 pods
    pods = [node.pod() for _ in range(14)]
    got = []
    for i, pod in enumerate(pods[:13]):
        res = node.pycni("ADD", conf, pod, cid=f"c{i}")
        assert res.rc == 0, res.out
        got.append(res.out["ips"][0]["address"])
    full = node.pycni("ADD", conf, pods[13], cid="c13")
    assert full.rc != 0 and full.code == 100 and "no IP addresses available" in full.out["msg"]
    half_made = [line for line in sh("ip", "-o", "link", ns=pods[13]).splitlines() if "eth0" in line]
    st = node.pycni("STATUS", conf)
    assert st.rc != 0 and st.code == 50
    assert node.pycni("DEL", conf, pods[0], cid="c0").rc == 0
    assert node.pycni("STATUS", conf).rc == 0
    again = node.pycni("ADD", conf, pods[13], cid="c13")
    assert again.rc == 0 and again.out["ips"][0]["address"] == got[0]
    SUMMARIES.append(f"exhaustion: {len(set(got))} of 13 addresses handed out, 14th ADD code {full.code}, "
                     f"STATUS code {st.code}, half-made interfaces = {len(half_made)}")
    assert len(set(got)) == 13 and half_made == []


def test_reboot_address_files_survive_namespaces(node):  # noqa: F811
    conf = netconf(node, "1.1.0", ranges=[[{"subnet": "10.93.0.0/24"}], [{"subnet": "fd93::/64"}]])
    pods = [node.pod() for _ in range(6)]
    for i, pod in enumerate(pods):
        assert node.pycni("ADD", conf, pod, cid=f"r{i}").rc == 0
    # "reboot": every namespace and link is gone, the data dir is on disk
    for pod in pods:
        sh("ip", "netns", "del", pod)
        node.pods.remove(pod)
    node.sh("ip", "link", "del", "tbr0")
    assert len(node.reservations("testnet")) == 12
    # the runtime DELs some with a missing netns, some with an empty one; GC gets the rest
    assert node.pycni("DEL", conf, f"/var/run/netns/{pods[0]}", cid="r0").rc == 0
    assert node.pycni("DEL", conf, "", cid="r1").rc == 0
    by_del = 12 - len(node.reservations("testnet"))
    gc = node.pycni("GC", {**conf, "cni.dev/valid-attachments": []})
    assert gc.rc == 0, gc.out
    left = node.reservations("testnet") + node.scratch_files("testnet")
    by_gc = 12 - by_del - len(node.reservations("testnet"))
    SUMMARIES.append(f"reboot: 6 dual-stack pods (12 addresses), {by_del} released by DEL without a netns, "
                     f"{by_gc} by GC, leaks found = {len(left)}")
    assert left == []


def test_hostile_values_are_rejected_and_write_nothing_outside(node, tmp_path):  # noqa: F811
    pod = node.pod()
    base = netconf(node, "1.1.0")
    cases = [
        ({**base, "name": "../../../tmp/x"}, {}, 7),
        ({**base, "name": 'x" ; flush ruleset ; "'}, {}, 7),
        ({**base, "name": "a" * 300}, {}, 7),
        (base, {"CNI_CONTAINERID": "../../etc/passwd"}, 4),
        (base, {"CNI_CONTAINERID": 'x"\ncomment'}, 4),
        (base, {"CNI_IFNAME": "../../x"}, 4),
        (base, {"CNI_IFNAME": "e\nth0"}, 4),
        ({**base, "runtimeConfig": {"portMappings": [{"hostPort": 70000, "containerPort": 80}]}}, {}, 7),
        ({**base, "runtimeConfig": {"portMappings": [{"hostPort": -1, "containerPort": 80}]}}, {}, 7),
        ({**base, "conditionsV4": ["-s 1.2.3.4; iptables -F"], "backend": "iptables",
          "runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 80}]}}, {}, 7),
        ({**base, "ipam": {**base["ipam"], "dataDir": "relative/dir"}}, {}, 7),
        ({**base, "logFile": "/tmp/\x00x"}, {"CNI_IFNAME": "bad/name"}, 4),
    ]
    before = set(os.listdir("/tmp"))
    outside_before = set(os.listdir(node.tmp))
    rejected = 0
    for conf, env, code in cases:
        res = node.pycni("ADD", conf, pod, cid=env.pop("CNI_CONTAINERID", "c1"), env=env)
        assert res.rc != 0 and res.code == code, (conf.get("name"), env, res.out)
        rejected += 1
    huge = json.dumps({**base, "padding": "x" * (17 * 1024 * 1024)}).encode()
    res = node.pycni("ADD", huge, pod)
    assert res.rc != 0 and res.code == 5
    rejected += 1
    # (calls/: the attachment locks beside the helper socket, as /run/pycni/calls on a node;
    # calls.log: the call record beside it, as /run/pycni/calls.log)
    outside = (set(os.listdir("/tmp")) - before) | (set(os.listdir(node.tmp)) - outside_before
                                                     - {"ipam", "pycni.log", "calls", "calls.log"})
    assert outside == set()
    assert node.links() == ["lo"] and node.reservations("testnet") == []
    # a good ADD: what it writes is not world-writable
    assert node.pycni("ADD", base, pod).rc == 0
    netdir = node.data_dir / "testnet"
    modes = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in [netdir, *netdir.iterdir()]}
    writable = [n for n, m in modes.items() if m & 0o002]
    SUMMARIES.append(f"hostile: {rejected} hostile inputs rejected with the right code, world-writable files = "
                     f"{len(writable)}, files outside the data dir = {len(outside)}")
    assert writable == []


def test_data_dir_written_by_host_local(node):  # noqa: F811
    if not (REFERENCE_DIR / "host-local").exists():
        pytest.skip("reference plugins not installed")
    pods = [node.pod() for _ in range(6)]
    ipam = {"dataDir": str(node.data_dir), "ranges": [[{"subnet": "10.94.0.0/24"}]]}
    hl = {"cniVersion": "1.0.0", "name": "testnet", "type": "bridge", "bridge": "tbr0", "isGateway": True,
          "ipam": {**ipam, "type": "host-local"}}
    for i in range(3):
        assert node.run(REFERENCE_DIR / "bridge", "ADD", hl, pods[i], cid=f"old{i}").rc == 0
    netdir = node.data_dir / "testnet"
    (netdir / "10.94.0.50").write_text("ancient")              # a pre-0.8 host-local file: id only
    host_locals = set(node.reservations("testnet"))
    ours = {**netconf(node, "1.0.0"), "ipam": {**ipam, "type": "pycni-ipam"}}
    got = []
    for i in range(3, 6):
        res = node.pycni("ADD", ours, pods[i], cid=f"new{i}")
        assert res.rc == 0, res.out
        got.append(res.out["ips"][0]["address"].split("/")[0])
    held_before = set(node.reservations("testnet"))
    assert len(held_before) == 7 and not set(got) & {"10.94.0.2", "10.94.0.3", "10.94.0.4", "10.94.0.50"}
    # pycni DELs the containers host-local set up, and the old id-only one
    for i in range(3):
        assert node.pycni("DEL", ours, pods[i], cid=f"old{i}").rc == 0
    assert node.pycni("DEL", ours, "", cid="ancient").rc == 0
    assert sorted(node.reservations("testnet")) == sorted(got)
    twice = len(set(got) & host_locals) + (len(got) - len(set(got)))
    SUMMARIES.append(f"host-local data dir: {len(host_locals)} reservations of host-local kept, "
                     f"{len(got)} pycni pods got other addresses, all released by pycni DEL, "
                     f"addresses handed out twice = {twice}")
