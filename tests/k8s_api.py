"""A fake Kubernetes API server for the agent's tests: the official client lists and watches
Nodes, Pods, Namespaces and NetworkPolicies from it over HTTP, as from a real one.

It keeps the objects and an event history with resourceVersions; a watch streams the events after
the version it asks for, then every new one as the test changes objects (`put`, `delete`),
until its timeout or the server's close; a version older than the history answers 410 Gone.
The listening socket can be made inside a network namespace (`netns=`), so agents running in
node namespaces reach it at an underlay address."""

from __future__ import annotations

import copy
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PATHS = {
    "/api/v1/nodes": ("nodes", "NodeList", "v1"),
    "/api/v1/pods": ("pods", "PodList", "v1"),
    "/api/v1/namespaces": ("namespaces", "NamespaceList", "v1"),
    "/apis/networking.k8s.io/v1/networkpolicies": ("networkpolicies", "NetworkPolicyList",
                                                    "networking.k8s.io/v1"),
}


class FakeAPI:
    def __init__(self, host: str = "127.0.0.1", netns: str | None = None):
        self.objects: dict[str, dict[tuple[str, str], dict]] = {k: {} for k, _, _ in PATHS.values()}
        self.history: list[tuple[int, str, str, dict]] = []     # (rv, kind, event type, object)
        self.rv = 1
        self.oldest = 1          # events before this version were compacted away
        self.cond = threading.Condition()
        self.closed = False
        self.lists: dict[str, int] = {k: 0 for k in self.objects}
        self.refuse: set[str] = set()     # kinds answered 403 Forbidden (as with RBAC missing)
        sock = _listen(host, netns)
        api = self

        class Handler(_Handler):
            fake = api

        self.server = ThreadingHTTPServer((host, 0), Handler, bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = sock
        self.server.server_address = sock.getsockname()[:2]
        self.server.daemon_threads = True
        self.url = f"http://{host}:{sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def kubeconfig(self, path) -> str:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}]}))
        return str(path)

    def put(self, kind: str, obj: dict) -> None:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        key = (meta.get("namespace") or "", meta["name"])
        with self.cond:
            self.rv += 1
            meta["resourceVersion"] = str(self.rv)
            event = "MODIFIED" if key in self.objects[kind] else "ADDED"
            self.objects[kind][key] = obj
            self.history.append((self.rv, kind, event, obj))
            self.cond.notify_all()

    def terminate(self, kind: str, namespace: str, name: str) -> None:
        """What a graceful delete does first: the object stays, with metadata.deletionTimestamp
        set and its status (a Pod's podIPs included) as it was, until `delete` removes it (for a
        Pod: after the kubelet stopped it, i.e. after its CNI DEL)."""
        with self.cond:
            obj = copy.deepcopy(self.objects[kind][(namespace, name)])
        obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        obj["metadata"]["deletionGracePeriodSeconds"] = 30
        self.put(kind, obj)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        with self.cond:
            obj = self.objects[kind].pop((namespace, name))
            self.rv += 1
            self.history.append((self.rv, kind, "DELETED", obj))
            self.cond.notify_all()

    def compact(self) -> None:
        """Forget the history: watches from an older version get 410 Gone (and list again)."""
        with self.cond:
            self.history.clear()
            self.oldest = self.rv + 1

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()


def _listen(host: str, netns: str | None) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        s.listen(64)
        return s

    if netns is None:
        return make()
    from cni.linux.netns import entered

    with entered(f"/run/netns/{netns}"):
        return make()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeAPI
    protocol_version = "HTTP/1.1"     # watches stream their events in chunks, as the API server does

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urlparse(self.path)
        if url.path not in PATHS:
            self.send_error(404)
            return
        kind, list_kind, api_version = PATHS[url.path]
        if kind in self.fake.refuse:
            self._reply(403, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
                              "reason": "Forbidden", "message": f"{kind} is forbidden"})
            return
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if q.get("watch", "").lower() in ("1", "true"):
            self._watch(kind, int(q.get("resourceVersion") or 0), float(q.get("timeoutSeconds") or 300))
            return
        fake = self.fake
        with fake.cond:
            fake.lists[kind] += 1
            listing = {"kind": list_kind, "apiVersion": api_version, "metadata": {"resourceVersion": str(fake.rv)},
                       "items": list(fake.objects[kind].values())}
        self._reply(200, listing)

    def _reply(self, code: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _watch(self, kind: str, since: int, timeout: float) -> None:
        fake = self.fake
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        import time

        deadline = time.monotonic() + timeout
        try:
            with fake.cond:
                if since + 1 < fake.oldest:
                    self._send({"type": "ERROR", "object": {
                        "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                        "reason": "Expired", "message": "too old resource version"}})
                    self.wfile.write(b"0\r\n\r\n")
                    return
            while True:
                with fake.cond:
                    fresh = [(rv, ev, obj) for rv, k, ev, obj in fake.history if k == kind and rv > since]
                    if not fresh:
                        left = deadline - time.monotonic()
                        if fake.closed or left <= 0:
                            self.wfile.write(b"0\r\n\r\n")
                            return
                        fake.cond.wait(min(left, 1.0))
                        continue
                for rv, ev, obj in fresh:
                    self._send({"type": ev, "object": obj})
                    since = rv
        except (BrokenPipeError, ConnectionResetError):
            return

    def _send(self, event: dict) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()
