"""The agent's view of the cluster: one `Follower` per kind lists the objects in pages, then
watches from the list's resourceVersion. Each object is parsed as it arrives into the few fields
the agent needs (the kind's `parse`: `nodes.parse_node`, `policy.objects.parse_pod`, ...) and the
API's JSON is dropped at once: 30,000 Pods cost their parsed values, never their documents.

- LIST: `limit=PAGE` pages with `continue`; one page's JSON at a time.
- WATCH: `allowWatchBookmarks`, `timeoutSeconds=WATCH_SECONDS`. When a watch ends (its timeout, a
  dropped connection, the API server restarting) the next one resumes from the last version seen
  (an event's or a BOOKMARK's): nothing is listed again. Only 410 Gone (the version, or a list's
  continue token, was compacted away) lists again, at once; anything else retries with a back-off.
- An event whose parsed value equals what is held (a Pod's status conditions, a Node's heartbeat)
  changes nothing and calls nobody.

`on_change()` is called (in the follower's thread) after the list and after every event that
changed a value; `snapshot()` gives the values held then."""

from __future__ import annotations

import http.client
import json
import sys
import threading
from collections import Counter
from typing import Any, Callable

from cni.spec.log import log
from cni.agent.kube import ApiError, Cluster, api_error, list_all
from cni.agent.nodes import NodeInfo, parse_node

PAGE = 500             # objects per LIST page (client-go's reflector uses the same)
WATCH_SECONDS = 300    # one watch's timeoutSeconds; the next resumes where it ended

PATHS = {"nodes": "/api/v1/nodes", "pods": "/api/v1/pods", "namespaces": "/api/v1/namespaces",
         "networkpolicies": "/apis/networking.k8s.io/v1/networkpolicies"}


class Gone(Exception):
    """410: our resourceVersion is older than the API still has."""


def _key(obj: dict) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return sys.intern(meta.get("namespace") or ""), meta.get("name") or ""


class Follower:
    def __init__(self, cluster: Cluster, kind: str, parse: Callable[[dict], Any],
                 on_change: Callable[[], None] = lambda: None, until: Callable[[], bool] = lambda: False,
                 page: int = PAGE, watch_seconds: int = WATCH_SECONDS):
        self.cluster, self.kind, self.path, self.parse = cluster, kind, PATHS[kind], parse
        self.on_change, self.until, self.page, self.watch_seconds = on_change, until, page, watch_seconds
        self.objects: dict[tuple[str, str], Any] = {}
        self.listed = False
        self.version: str | None = None
        self.lock = threading.Lock()
        self.stats: Counter = Counter()       # lists, pages, watches, events, changes, gone
        self._stop = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self.thread: threading.Thread | None = None

    # ---------------------------------------------------------------- use

    def start(self) -> "Follower":
        self.thread = threading.Thread(target=self.run, name=f"watch-{self.kind}", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop soon: an open watch is shut down under the reader's feet."""
        self._stop.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(2)
            except OSError:
                pass

    def stopping(self) -> bool:
        return self._stop.is_set() or self.until()

    def snapshot(self) -> list:
        with self.lock:
            return list(self.objects.values())

    # ---------------------------------------------------------------- the loop

    def run(self) -> None:
        backoff, gone_in_row = 1.0, 0
        while not self.stopping():
            try:
                if self.version is None:
                    self._list()
                self._watch()
                backoff, gone_in_row = 1.0, 0
                continue
            except Gone:
                self.version = None
                self.stats["gone"] += 1
                gone_in_row += 1
                if gone_in_row == 1:
                    continue           # list again at once
                why = "410 Gone again"
            except (ApiError, OSError, http.client.HTTPException, ValueError) as e:
                if self.stopping():
                    return
                why = f"{type(e).__name__}: {e}"
            log.error(f"agent: watching {self.kind}: {why}")
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, 30.0)

    def _notify(self) -> None:
        try:
            self.on_change()
        except Exception as e:          # the consumer's failure (a sync): its next call retries
            log.error(f"agent: after a change of {self.kind}: {type(e).__name__}: {e}")

    def _value(self, obj: dict):
        try:
            return self.parse(obj)
        except ValueError as e:         # NodeError, PolicyError: that object is left out
            log.error(f"agent: ignoring a {self.kind[:-1]}: {e}")
            return None

    def _list(self) -> None:
        fresh: dict[tuple[str, str], Any] = {}

        def take(obj: dict) -> None:
            value = self._value(obj)
            if value is not None:
                fresh[_key(obj)] = value

        self.stats["lists"] += 1
        try:
            version, pages = list_all(self.cluster, self.path, self.page, take, self.stopping)
        except ApiError as e:
            if e.status == 410:
                raise Gone() from None
            raise
        self.stats["pages"] += pages
        if self.stopping():
            return
        with self.lock:
            self.objects, self.listed, self.version = fresh, True, version
        self._notify()

    def _watch(self) -> None:
        conn = self.cluster.connect(self.watch_seconds + 30)   # silent for longer than that: dead
        self._conn = conn
        try:
            if self._stop.is_set():
                return
            resp = self.cluster.get(conn, self.path, {
                "watch": "true", "resourceVersion": self.version, "allowWatchBookmarks": "true",
                "timeoutSeconds": self.watch_seconds})
            self.stats["watches"] += 1
            for line in resp:
                if self.stopping():
                    return
                if not line.strip():
                    continue
                event = json.loads(line)
                typ, obj = event.get("type"), event.get("object") or {}
                del event, line
                if typ == "ERROR":
                    err = api_error(int(obj.get("code") or 500), obj)
                    if err.status == 410:
                        raise Gone()
                    raise err
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if typ == "BOOKMARK":
                    self.stats["bookmarks"] += 1
                    if version:
                        self.version = version
                    continue
                self.stats["events"] += 1
                key = _key(obj)
                value = None if typ == "DELETED" else self._value(obj)
                del obj
                with self.lock:
                    old = self.objects.pop(key, None) if value is None else self.objects.get(key)
                    if value is not None:
                        self.objects[key] = value
                    if version:
                        self.version = version
                if old != value:
                    self.stats["changes"] += 1
                    self._notify()
        finally:
            self._conn = None
            conn.close()


def follow(on_change: Callable[[list[NodeInfo]], None], cluster: Cluster,
           until: Callable[[], bool] = lambda: False) -> Follower:
    """Nodes, parsed: on_change(every node that parses) after the list and every change; runs in
    this thread until `until()` (or the follower's stop())."""
    follower = Follower(cluster, "nodes", parse_node)
    follower.on_change = lambda: on_change(follower.snapshot())
    follower.until = until
    follower.run()
    return follower
