"""The resident helper: same results as in process, and safe when it dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from .conftest import BIN, netconf, ready_line, sh
from .test_bridge import ping


@pytest.fixture
def helper(node):
    path = node.tmp / "helper.sock"
    proc = subprocess.Popen(["ip", "netns", "exec", node.name, str(BIN / "pycni"), "helper", "--socket", str(path)],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert "serving on" in ready_line(proc, stream=proc.stderr)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


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


def start_helper(node, path):
    return subprocess.Popen(["ip", "netns", "exec", node.name, str(BIN / "pycni"), "helper", "--socket", str(path)],
                            stderr=subprocess.PIPE, text=True)


def test_a_second_helper_refuses_while_one_answers(node, helper):
    path = node.tmp / "helper.sock"
    second = start_helper(node, path)
    try:
        assert second.wait(timeout=30) != 0
        assert "another helper is serving" in second.stderr.read()
    finally:
        if second.poll() is None:
            second.kill()
        second.wait()
        second.stderr.close()
    pod = node.pod()
    assert node.pycni("ADD", netconf(node), pod, cid="one").rc == 0
    assert served_by_helper(node) == 1          # the first still serves, on its own socket


def test_a_helper_removes_only_its_own_socket(node, helper):
    path = node.tmp / "helper.sock"
    path.unlink()                               # someone removed the first helper's socket...
    second = start_helper(node, path)           # ...and a new helper took the path
    try:
        assert "serving on" in ready_line(second, stream=second.stderr)
        helper.send_signal(signal.SIGTERM)
        helper.wait(timeout=30)
        assert path.exists(), "the first helper removed the second's socket"
        pod = node.pod()
        assert node.pycni("ADD", netconf(node), pod, cid="two").rc == 0
        assert served_by_helper(node) == 1
    finally:
        second.kill()
        second.wait()
        second.stderr.close()
