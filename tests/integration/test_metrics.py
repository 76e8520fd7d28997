"""The agent's metrics and health endpoints, checked against the calls a test made: the agent
runs in a node namespace (from a Node list file, serving /metrics on the node's loopback), the
plugin is called as a runtime calls it, and the scrape (parsed with prometheus_client's own
parser) must count exactly those calls, the addresses they hold and why they ran in process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.k8s_nodes import node_list, node_object

from .conftest import BIN, netconf, node  # noqa: F401  (node: the fixture)

PORT = 19152


def fetch(node, path: str) -> tuple[int, str]:
    code = ("import sys, urllib.request, urllib.error\n"
            f"try:\n  r = urllib.request.urlopen('http://127.0.0.1:{PORT}{path}', timeout=5)\n"
            "  print(r.status); print(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n  print(e.code); print(e.read().decode())\n"
            "except OSError as e:\n  print(0); print(e)\n")
    out = node.sh(sys.executable, "-c", code)
    status, _, body = out.partition("\n")
    return int(status), body


def samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_the_calls_made_and_health_answers(node):
    listing = node.tmp / "nodes.json"
    listing.write_text(json.dumps(node_list(node_object("n1", ["10.244.7.0/24"], ["10.0.0.1"]))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env["PYCNI_LOG_FILE"] = str(node.log_file)
    agent = subprocess.Popen(
        ["ip", "netns", "exec", node.name, sys.executable, "-m", "cni", "agent", "--node-name", "n1",
         "--nodes-file", str(listing), "--from", "none", "--conf-dir", str(node.tmp / "net.d"),
         "--data-dir", str(node.data_dir), "--metrics-address", f"127.0.0.1:{PORT}",
         "--calls-file", str(node.tmp / "calls.log"), "--peers-file", str(node.tmp / "peers.json"),
         "--no-masquerade"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(Path(__file__).parents[2]))
    try:
        deadline = time.monotonic() + 20
        while fetch(node, "/readyz")[0] != 200:
            assert time.monotonic() < deadline and agent.poll() is None, "agent never ready"
            time.sleep(0.2)
        assert fetch(node, "/healthz") == (200, "ok\n\n")                 # (print adds one)
        conflist = json.loads((node.tmp / "net.d" / "10-pycni.conflist").read_text())
        conf = {**conflist["plugins"][0], "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
        conf["ipam"] = {**conf["ipam"], "dataDir": str(node.data_dir)}
        pods = [node.pod() for _ in range(3)]
        for i, pod in enumerate(pods):
            assert node.pycni("ADD", conf, pod, cid=f"m{i}").rc == 0
        assert node.pycni("ADD", conf, pods[0], cid="bad", ifname="a/b").code == 4
        for i in (1, 2):
            assert node.pycni("DEL", conf, pods[i], cid=f"m{i}").rc == 0
        assert node.pycni("ADD", conf, pods[1], cid="m1", env={"PYCNI_HELPER": "0"}).rc == 0

        status, text = fetch(node, "/metrics")
        assert status == 200
        got = samples(text)
        requests = {(labels["command"], labels["code"]): v for (name, key), v in got.items()
                    for labels in [dict(key)] if name == "pycni_cni_requests_total" and labels["plugin"] == "pycni"}
        assert requests == {("ADD", "0"): 4, ("ADD", "4"): 1, ("DEL", "0"): 2}
        count = got[("pycni_cni_request_duration_seconds_count", (("command", "ADD"), ("plugin", "pycni")))]
        assert count == 5
        assert got[("pycni_helper_fallbacks_total", (("reason", "no_helper"),))] == 6   # disabled: not a fallback
        held = {dict(k)["state"]: v for (name, k), v in got.items() if name == "pycni_ipam_addresses"}
        assert held == {"used": 2, "free": 253 - 2}
        assert got[("pycni_attachments", (("network", "pycni"),))] == 2
        assert got[("pycni_agent_sync_duration_seconds_count", (("kind", "nodes"),))] == 1
        # a second scrape counts nothing twice
        again = samples(fetch(node, "/metrics")[1])
        assert again[("pycni_cni_request_duration_seconds_count", (("command", "ADD"), ("plugin", "pycni")))] == 5
        # through the helper: counted once, by the process that answered the runtime; no fallback
        helper = subprocess.Popen(["ip", "netns", "exec", node.name, str(BIN / "pycni"), "helper", "--socket",
                                   str(node.tmp / "helper.sock")], stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert "serving on" in helper.stderr.readline()
            assert node.pycni("ADD", conf, pods[2], cid="m2").rc == 0
            assert node.pycni("DEL", conf, pods[2], cid="m2").rc == 0
        finally:
            helper.terminate()
            helper.wait(10)
        third = samples(fetch(node, "/metrics")[1])
        assert third[("pycni_cni_requests_total", (("code", "0"), ("command", "ADD"), ("plugin", "pycni")))] == 5
        assert third[("pycni_cni_requests_total", (("code", "0"), ("command", "DEL"), ("plugin", "pycni")))] == 3
        assert third[("pycni_helper_fallbacks_total", (("reason", "no_helper"),))] == 6
        for i in (0, 1):
            node.pycni("DEL", conf, pods[i], cid=f"m{i}")
    finally:
        agent.terminate()
        agent.wait(10)


def test_the_helper_serves_metrics_on_a_node_without_the_agent(node):
    """pycni helper --metrics-address (a hand-made node's unit): the same call counts and IPAM
    ranges, from a server process the helper forks at its start and that stops with it."""
    conf_dir = node.tmp / "net.d"
    conf_dir.mkdir()
    conf = netconf(node, name="hm", subnet="10.89.0.0/24")
    (conf_dir / "10-hm.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "hm", "plugins": [{k: v for k, v in conf.items()
                                                           if k not in ("cniVersion", "name")}]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    helper = subprocess.Popen(["ip", "netns", "exec", node.name, str(BIN / "pycni"), "helper", "--socket",
                               str(node.tmp / "helper.sock"), "--metrics-address", f"127.0.0.1:{PORT}",
                               "--conf-dir", str(conf_dir)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert "metrics on" in helper.stderr.readline()
        deadline = time.monotonic() + 20
        while fetch(node, "/readyz")[0] != 200:
            assert time.monotonic() < deadline, "the helper's metrics never ready"
            time.sleep(0.2)
        pods = [node.pod(), node.pod()]
        for i, pod in enumerate(pods):
            assert node.pycni("ADD", conf, pod, cid=f"h{i}").rc == 0
        assert node.pycni("DEL", conf, pods[1], cid="h1").rc == 0
        got = samples(fetch(node, "/metrics")[1])
        assert got[("pycni_cni_requests_total", (("code", "0"), ("command", "ADD"), ("plugin", "pycni")))] == 2
        assert got[("pycni_cni_requests_total", (("code", "0"), ("command", "DEL"), ("plugin", "pycni")))] == 1
        assert not [k for k in got if k[0] == "pycni_helper_fallbacks_total"]
        held = {dict(k)["state"]: v for (name, k), v in got.items() if name == "pycni_ipam_addresses"}
        assert held == {"used": 1, "free": 252}
        assert fetch(node, "/healthz")[0] == 200
        node.pycni("DEL", conf, pods[0], cid="h0")
    finally:
        helper.kill()           # no orderly stop: ip netns exec exec'ed the helper, this is its pid
        helper.wait(10)
    deadline = time.monotonic() + 2     # at once (PDEATHSIG), not at its next 5 s look at its parent
    while fetch(node, "/healthz")[0] != 0:          # its metrics server went with it
        assert time.monotonic() < deadline, "the metrics server outlived the helper"
        time.sleep(0.2)


def test_the_helpers_readiness_follows_the_socket_it_serves_whatever_its_name(node):
    """Issue 23 row 9: /readyz looked for `helper.sock` beside the call record; a helper on
    another name was never ready. Ready while its own socket is there, 503 once it is gone."""
    (node.tmp / "net.d").mkdir()
    sock = node.tmp / "cni-helper.socket"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    helper = subprocess.Popen(["ip", "netns", "exec", node.name, str(BIN / "pycni"), "helper", "--socket",
                               str(sock), "--metrics-address", f"127.0.0.1:{PORT}",
                               "--conf-dir", str(node.tmp / "net.d")], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert "metrics on" in helper.stderr.readline()
        deadline = time.monotonic() + 20
        while (got := fetch(node, "/readyz"))[0] != 200:
            assert time.monotonic() < deadline, f"the helper on {sock.name} never ready: {got}"
            time.sleep(0.2)
        (node.tmp / "helper.sock").write_text("")        # a file of the old fixed name does not count
        sock.unlink()
        assert fetch(node, "/readyz") == (503, "waiting for: helper socket\n\n")
    finally:
        helper.kill()
        helper.wait(10)
