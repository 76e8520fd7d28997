"""The agent's list + watch loop (cni.agent.watch.follow) against a minimal API server on
loopback: the agent's client lists the Nodes, then applies watch events (ADDED, MODIFIED, DELETED)
and re-lists when the API says 410 Gone."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cni.agent import kube
from cni.agent.watch import follow
from tests.k8s_nodes import node_list, node_object


def node(name, cidr, rv="1"):
    return node_object(name, [cidr], ["10.0.0.1"], resource_version=rv)


class FakeAPI(BaseHTTPRequestHandler):
    lists = 0
    watches = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        if not self.path.startswith("/api/v1/nodes"):
            self.send_error(404)
            return
        if "watch=" not in self.path:
            FakeAPI.lists += 1
            body = json.dumps(node_list(node("a", "10.244.0.0/24"), node("b", "10.244.1.0/24"),
                                        resource_version="10")).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        FakeAPI.watches += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        if FakeAPI.watches == 1:
            events = [{"type": "ADDED", "object": node("c", "10.244.2.0/24", "11")},
                      {"type": "MODIFIED", "object": node("a", "10.244.9.0/24", "12")},
                      {"type": "DELETED", "object": node("b", "10.244.1.0/24", "13")},
                      {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "code": 410,
                                                   "reason": "Expired", "status": "Failure"}}]
        else:
            events = [{"type": "ADDED", "object": node("d", "10.244.3.0/24", "21")}]
        for e in events:
            self.wfile.write(json.dumps(e).encode() + b"\n")
            self.wfile.flush()
        self.close_connection = True


def test_list_watch_and_relist(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}]}))
    seen: list[dict[str, str]] = []

    def on_change(nodes):
        seen.append({n.name: str(n.pod_cidrs[0]) for n in nodes})

    try:
        follow(on_change, kube.from_kubeconfig(str(kubeconfig)), until=lambda: len(seen) >= 6)
    finally:
        server.shutdown()
    assert seen[0] == {"a": "10.244.0.0/24", "b": "10.244.1.0/24"}                        # list
    assert seen[1] == {"a": "10.244.0.0/24", "b": "10.244.1.0/24", "c": "10.244.2.0/24"}  # ADDED
    assert seen[2]["a"] == "10.244.9.0/24"                                                # MODIFIED
    assert "b" not in seen[3] and set(seen[3]) == {"a", "c"}                              # DELETED
    assert seen[4] == {"a": "10.244.0.0/24", "b": "10.244.1.0/24"}     # ERROR (410) -> listed again
    assert set(seen[5]) == {"a", "b", "d"}
    assert FakeAPI.lists == 2 and FakeAPI.watches == 2
