"""A fake Kubernetes API server for the agent's tests and benchmarks: the agent lists and watches
Nodes, Pods, Namespaces and NetworkPolicies from it over HTTP, as from a real one.

It behaves as kube-apiserver does where the agent depends on it:
- every change gets the next resourceVersion; objects are kept as the JSON bytes they are served as
  (a benchmark's 30,000 realistic pods cost the server their size, not a Python object tree each);
- LIST pages with `limit`/`continue` in key order (namespace, name), every page of one list at the
  list's resourceVersion; a `continue` token from before the last compaction answers 410 Gone
  (reason Expired), as a compacted etcd revision does;
- WATCH from a resourceVersion streams the later events of its kind, then new ones, until its
  `timeoutSeconds`, `end_watches()` or the server's close; with `allowWatchBookmarks=true` a BOOKMARK carrying the
  current resourceVersion every `bookmark_every` seconds and one just before the timeout; a
  version older than the kept history answers the watch with an ERROR event, code 410 (Expired).
`requests` counts what was asked, per (kind, "list" pages | "watch").
The listening socket can be made inside a network namespace (`netns=`), so agents running in
node namespaces reach it at an underlay address."""

from __future__ import annotations

import base64
import bisect
import copy
import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PATHS = {
    "/api/v1/nodes": ("nodes", "NodeList", "v1", "Node"),
    "/api/v1/pods": ("pods", "PodList", "v1", "Pod"),
    "/api/v1/namespaces": ("namespaces", "NamespaceList", "v1", "Namespace"),
    "/apis/networking.k8s.io/v1/networkpolicies": ("networkpolicies", "NetworkPolicyList",
                                                    "networking.k8s.io/v1", "NetworkPolicy"),
}
KINDS = [k for k, *_ in PATHS.values()]


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class FakeAPI:
    def __init__(self, host: str = "127.0.0.1", netns: str | None = None, bookmark_every: float = 60.0):
        self.raw: dict[str, dict[tuple[str, str], bytes]] = {k: {} for k in KINDS}
        self.keys: dict[str, list[tuple[str, str]]] = {k: [] for k in KINDS}     # sorted
        self.history: dict[str, list[tuple[int, bytes]]] = {k: [] for k in KINDS}  # (rv, event line)
        self.rv = 1
        self.oldest = 1          # events before this version were compacted away
        self.bookmark_every = bookmark_every
        self.cond = threading.Condition()
        self.closed = False
        self.lists: dict[str, int] = {k: 0 for k in KINDS}     # complete lists (first pages)
        self.requests: Counter = Counter()
        self.refuse: set[str] = set()     # kinds answered 403 Forbidden (as with RBAC missing)
        self.watching: Counter = Counter()   # open watches per kind
        self.cuts = 0            # end_watches() calls: a watch ends when this moves
        sock = _listen(host, netns)
        api = self

        class Handler(_Handler):
            fake = api

        self.server = _Server((host, 0), Handler, bind_and_activate=False)
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

    def get(self, kind: str, namespace: str, name: str) -> dict:
        return json.loads(self.raw[kind][(namespace, name)])

    def objects(self, kind: str) -> dict[tuple[str, str], dict]:
        with self.cond:
            return {k: json.loads(v) for k, v in self.raw[kind].items()}

    def put(self, kind: str, obj: dict) -> None:
        self.put_many(kind, [obj])

    def put_many(self, kind: str, objs) -> None:
        """Create or replace each object (one resourceVersion each), as that many API writes."""
        with self.cond:
            for obj in objs:
                meta = obj.setdefault("metadata", {})
                key = (meta.get("namespace") or "", meta["name"])
                self.rv += 1
                meta["resourceVersion"] = str(self.rv)
                body = _dumps(obj)
                event = b"MODIFIED" if key in self.raw[kind] else b"ADDED"
                if event == b"ADDED":
                    bisect.insort(self.keys[kind], key)
                self.raw[kind][key] = body
                self.history[kind].append((self.rv, b'{"type":"%s","object":%s}\n' % (event, body)))
            self.cond.notify_all()

    def terminate(self, kind: str, namespace: str, name: str) -> None:
        """What a graceful delete does first: the object stays, with metadata.deletionTimestamp
        set and its status (a Pod's podIPs included) as it was, until `delete` removes it (for a
        Pod: after the kubelet stopped it, i.e. after its CNI DEL)."""
        obj = self.get(kind, namespace, name)
        obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        obj["metadata"]["deletionGracePeriodSeconds"] = 30
        self.put(kind, obj)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        with self.cond:
            key = (namespace, name)
            body = self.raw[kind].pop(key)
            self.keys[kind].pop(bisect.bisect_left(self.keys[kind], key))
            self.rv += 1
            obj = json.loads(body)
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.history[kind].append((self.rv, b'{"type":"DELETED","object":%s}\n' % _dumps(obj)))
            self.cond.notify_all()

    def end_watches(self) -> None:
        """End every open watch stream cleanly, as an API server restarting (or a load balancer
        dropping long requests) does; the clients' next watches start from their last version."""
        with self.cond:
            self.cuts += 1
            self.cond.notify_all()

    def expire(self) -> None:
        """etcd compacted past every client: one more write elsewhere, the history dropped, every
        watch ended. A client's next watch (from any version it holds) gets 410 Gone."""
        with self.cond:
            self.rv += 1
            for h in self.history.values():
                h.clear()
            self.oldest = self.rv + 1
            self.cuts += 1
            self.cond.notify_all()

    def compact(self) -> None:
        """Forget the history: watches from an older version and lists continued from before get
        410 Gone."""
        with self.cond:
            for h in self.history.values():
                h.clear()
            self.oldest = self.rv + 1

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()


def _merge(target, patch):
    if not isinstance(patch, dict):
        return patch
    target = target if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge(target.get(key), value)
    return target


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass            # a client that went away mid-answer (an agent stopped) is no news


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


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": code,
            "reason": reason, "message": message}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeAPI
    protocol_version = "HTTP/1.1"     # keep-alive for list pages; watches stream chunks

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urlparse(self.path)
        if url.path not in PATHS:
            self.send_error(404)
            return
        kind, list_kind, api_version, obj_kind = PATHS[url.path]
        fake = self.fake
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        watching = q.get("watch", "").lower() in ("1", "true")
        with fake.cond:
            fake.requests[(kind, "watch" if watching else "list")] += 1
        if kind in fake.refuse:
            self._reply(403, _dumps(_status(403, "Forbidden", f"{kind} is forbidden")))
            return
        if watching:
            self._watch(kind, obj_kind, int(q.get("resourceVersion") or 0), float(q.get("timeoutSeconds") or 1800),
                        q.get("allowWatchBookmarks", "").lower() in ("1", "true"))
            return
        limit = int(q.get("limit") or 0)
        with fake.cond:
            if q.get("continue"):
                token = json.loads(base64.b64decode(q["continue"]))
                rv, start = token["rv"], tuple(token["start"])
                if rv < fake.oldest - 1:
                    self._reply(410, _dumps(_status(
                        410, "Expired", "The provided continue parameter is too old to display a consistent "
                                        "list result. You can start a new list without the continue parameter.")))
                    return
            else:
                fake.lists[kind] += 1
                rv, start = fake.rv, None
            keys = fake.keys[kind]
            first = bisect.bisect_right(keys, start) if start is not None else 0
            chosen = keys[first:first + limit] if limit else keys[first:]
            items = [fake.raw[kind][k] for k in chosen]
            more = limit and first + limit < len(keys)
        meta = {"resourceVersion": str(rv)}
        if more:
            meta["continue"] = base64.b64encode(_dumps({"rv": rv, "start": list(chosen[-1])})).decode()
            meta["remainingItemCount"] = len(keys) - first - limit
        body = b'{"kind":"%s","apiVersion":"%s","metadata":%s,"items":[%s]}' % (
            list_kind.encode(), api_version.encode(), _dumps(meta), b",".join(items))
        self._reply(200, body)

    def do_PATCH(self):
        """A JSON merge patch (RFC 7386; what a strategic merge patch of metadata does too) of one
        cluster-scoped object, e.g. PATCH /api/v1/nodes/NAME: stored, and a MODIFIED event."""
        url = urlparse(self.path)
        base, _, name = url.path.rpartition("/")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if base not in PATHS or "merge-patch" not in (self.headers.get("Content-Type") or ""):
            self.send_error(415 if base in PATHS else 404)
            return
        kind = PATHS[base][0]
        fake = self.fake
        with fake.cond:
            raw = fake.raw[kind].get(("", name))
        if raw is None:
            self._reply(404, _dumps(_status(404, "NotFound", f"{kind} {name} not found")))
            return
        current = json.loads(raw)
        patched = _merge(copy.deepcopy(current), json.loads(body))
        fake.put(kind, patched)
        with fake.cond:
            raw = fake.raw[kind][("", name)]
        self._reply(200, raw)

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _watch(self, kind: str, obj_kind: str, since: int, timeout: float, bookmarks: bool) -> None:
        fake = self.fake
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True
        now = time.monotonic()
        deadline, bookmark_at = now + timeout, now + fake.bookmark_every

        def bookmark(rv: int) -> bytes:
            return b'{"type":"BOOKMARK","object":{"kind":"%s","metadata":{"resourceVersion":"%d"}}}\n' % (
                obj_kind.encode(), rv)

        with fake.cond:
            fake.watching[kind] += 1
            cuts = fake.cuts
        try:
            with fake.cond:
                if since + 1 < fake.oldest:
                    self._send(_dumps({"type": "ERROR", "object": _status(
                        410, "Expired", f"too old resource version: {since} ({fake.oldest - 1})")}) + b"\n")
                    self.wfile.write(b"0\r\n\r\n")
                    return
            while True:
                with fake.cond:
                    if fake.cuts != cuts:
                        self.wfile.write(b"0\r\n\r\n")
                        return
                    history = fake.history[kind]
                    at = bisect.bisect_right(history, since, key=lambda e: e[0])
                    fresh = history[at:]
                    now = time.monotonic()
                    if not fresh:
                        if fake.closed or now >= deadline:
                            if bookmarks and not fake.closed:
                                self._send(bookmark(fake.rv))
                            self.wfile.write(b"0\r\n\r\n")
                            return
                        if bookmarks and now >= bookmark_at:
                            bookmark_at = now + fake.bookmark_every
                            since = max(since, fake.rv)
                            self._send(bookmark(since))
                            continue
                        fake.cond.wait(min(deadline - now, bookmark_at - now if bookmarks else 1.0, 1.0))
                        continue
                self._send(b"".join(line for _, line in fresh))
                since = fresh[-1][0]
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            with fake.cond:
                fake.watching[kind] -= 1

    def _send(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()
