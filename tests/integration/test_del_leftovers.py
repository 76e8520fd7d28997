"""A DEL removes every firewall element of the attachment whatever capability args it is given
(issue 28 row 7): runtimes send DEL without `runtimeConfig.portMappings`, or with other mappings
than ADD had; the address is then handed to another pod, which must not receive the old host
port's traffic. Both backends, with and without masquerade, single-plugin and chained."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import BIN, ready_line, sh
from .test_portmap import APP, BACKENDS, World, comments, dump_rules

MAPPING = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]


@pytest.fixture(params=BACKENDS)
def world(node, request):
    w = World(node, request.param)
    try:
        yield w
    finally:
        w.close()


def serve(w: World, pod: str, name: str) -> None:
    proc = subprocess.Popen(["ip", "netns", "exec", pod, sys.executable, APP, "serve", name, "80"],
                            stdout=subprocess.PIPE, text=True)
    w.servers.append(proc)
    assert ready_line(proc).strip() == "ready"


@pytest.mark.parametrize("masq", [True, False], ids=["ipMasq", "no-ipMasq"])
@pytest.mark.parametrize("del_mappings", [None, [{"hostPort": 9999, "containerPort": 80, "protocol": "tcp"}]],
                         ids=["no-mappings", "other-mappings"])
def test_del_without_adds_mappings_leaves_no_host_port(world, masq, del_mappings):
    conf = world.conf(ipMasq=masq)
    old, _, res = world.add_pod("old", MAPPING)
    address = res["ips"][0]["address"].split("/")[0]
    assert world.ask(world.client, "tcp", "192.0.2.2", 8080) == "old 192.0.2.1"
    dele = {**conf, "runtimeConfig": {"portMappings": del_mappings}} if del_mappings else conf
    assert world.node.pycni("DEL", dele, old, cid="old").rc == 0
    assert "old" not in comments(dump_rules(world))
    # the address goes to another tenant's pod, which never asked for a host port
    new = world.node.pod()
    add = world.node.pycni("ADD", conf, new, cid="new", args=f"IP={address}")
    assert add.rc == 0, add.out
    assert add.out["ips"][0]["address"].split("/")[0] == address
    serve(world, new, "new")
    assert world.ask(world.client, "tcp", "192.0.2.2", 8080) == ""
    assert world.node.pycni("DEL", conf, new, cid="new").rc == 0


def test_chained_portmap_del_without_mappings_or_prev_result(world):
    node = world.node
    ours = {**world.conf()}
    plugins = [{k: v for k, v in ours.items() if k not in ("cniVersion", "name", "capabilities")},
               {"type": "pycni-portmap", "backend": world.backend, "capabilities": {"portMappings": True}}]
    listfile = node.tmp / "chain.conflist"
    listfile.write_text(json.dumps({"cniVersion": "1.0.0", "name": "testnet", "plugins": plugins}))
    run = ["ip", "netns", "exec", node.name, str(BIN / "pycni"), "exec"]
    opts = ["--cni-path", str(BIN), "--container-id", "old"]
    pod = node.pod()
    add = subprocess.run(run + ["add", str(listfile), f"/var/run/netns/{pod}", "--cache-dir", str(node.tmp / "c1"),
                                "--runtime-config", json.dumps({"portMappings": MAPPING})] + opts,
                         capture_output=True, text=True)
    assert add.returncode == 0, add.stdout
    serve(world, pod, "old")
    assert world.ask(world.client, "tcp", "192.0.2.2", 8080) == "old 192.0.2.1"
    # another cache dir: DEL with no cached result, so no prevResult and no mappings
    dele = subprocess.run(run + ["del", str(listfile), f"/var/run/netns/{pod}", "--cache-dir",
                                 str(node.tmp / "c2")] + opts, capture_output=True, text=True)
    assert dele.returncode == 0, dele.stdout
    assert "old" not in comments(dump_rules(world))
    assert "tcp . 8080" not in sh("nft", "list", "ruleset", ns=node.name)
