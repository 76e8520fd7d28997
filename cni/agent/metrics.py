"""The agent's metrics and health, in Prometheus' text format through `prometheus_client`, on
one HTTP server: /metrics, /healthz (the agent's loops are alive), /readyz (the node has its
conflist and, when policies are enforced, the first policy sync is done).

CNI calls are counted from the call record every plugin process appends (cni/runtime/calls.py):
`CallRecord.drain` reads what was added since the last read (before each scrape and every few
seconds), and rotates the file past ROTATE_BYTES so it never grows without bound. IPAM addresses
and attachments are read from the IPAM store at scrape time.
"""

from __future__ import annotations

import asyncio
from functools import partial
import ipaddress
import json
import os
import stat
import sys
import threading
import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cni.runtime.calls import parse
from cni.tools.inspect import networks
from ipam.store import DiskStore

ROTATE_BYTES = 1 << 20
DURATION_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("pycni_cni_requests", "CNI calls answered on this node",
                                ["command", "plugin", "code"], registry=r)
        self.duration = Histogram("pycni_cni_request_duration_seconds", "CNI call duration as the runtime's "
                                  "process saw it (interpreter start excluded)", ["command", "plugin"],
                                  buckets=DURATION_BUCKETS, registry=r)
        self.fallbacks = Counter("pycni_helper_fallbacks", "CNI calls that ran in process, by why the "
                                 "helper did not serve them", ["reason"], registry=r)
        self.sync_seconds = Histogram("pycni_agent_sync_duration_seconds", "agent syncs", ["kind"], registry=r)
        self.peers = Gauge("pycni_agent_peers", "other nodes' pod CIDRs by how this node reaches them "
                           "(direct, vxlan, unreachable)", ["mode"], registry=r)
        self.sync_errors = Counter("pycni_agent_sync_errors", "agent syncs that failed", ["kind"], registry=r)
        self.policies = Gauge("pycni_network_policies", "NetworkPolicies selecting pods of this node", registry=r)
        self.policy_rules = Gauge("pycni_network_policy_rules", "rules of the policy table", registry=r)
        self.policy_elements = Gauge("pycni_network_policy_elements", "set elements of the policy table", registry=r)
        self.policy_pending = Gauge("pycni_network_policy_pending_addresses",
                                    "addresses of pods not classified yet (denied)", registry=r)
        self.policy_latency = Histogram("pycni_network_policy_enforce_seconds", "from a change seen by the "
                                        "agent to the kernel's table holding it", registry=r,
                                        buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0))
        self.gc_rounds = Counter("pycni_gc_rounds", "the agent's CNI GC rounds, done or skipped (the "
                                 "runtime could not tell its pods, a call held its lock too long)", ["outcome"],
                                 registry=r)
        self.gc_reclaimed = Counter("pycni_gc_reclaimed", "what the agent's CNI GC released of attachments "
                                    "whose DEL never came", ["kind"], registry=r)   # addresses, rules, interfaces
        self.ready: dict[str, object] = {}           # name: bool, or a callable answering it
        self.alive: dict[str, Callable[[], bool]] = {}

    def count_call(self, c: dict) -> None:
        self.requests.labels(c["command"], c["plugin"], str(c["code"])).inc()
        self.duration.labels(c["command"], c["plugin"]).observe(c["seconds"])
        if c["reason"] and c["reason"] != "disabled":
            self.fallbacks.labels(c["reason"]).inc()


class CallRecord:
    """Follows calls.log: every complete line once, across rotations."""

    def __init__(self, path: str, on_call: Callable[[dict], None]):
        self.path, self.on_call = path, on_call
        self.offset = 0
        self.lock = threading.Lock()

    def drain(self) -> int:
        with self.lock:
            try:
                with open(self.path, "rb") as f:
                    f.seek(self.offset)
                    data = f.read()
            except FileNotFoundError:
                return 0
            end = data.rfind(b"\n") + 1
            if end == 0 and len(data) < ROTATE_BYTES:
                if self.offset > os.path.getsize(self.path):   # replaced by a smaller file
                    self.offset = 0
                return 0
            self.offset += end
            n = 0
            for line in data[:end].decode(errors="replace").splitlines():
                c = parse(line)
                if c is not None:
                    self.on_call(c)
                    n += 1
            if self.offset >= ROTATE_BYTES:
                n += self._rotate()
            return n

    def _rotate(self) -> int:
        """Rename and read what writers that had the old file open add in the next moment."""
        old = f"{self.path}.old"
        os.replace(self.path, old)
        time.sleep(0.05)
        n = 0
        with open(old, "rb") as f:
            f.seek(self.offset)
            for line in f.read().decode(errors="replace").splitlines():
                c = parse(line)
                if c is not None:
                    self.on_call(c)
                    n += 1
        os.unlink(old)
        self.offset = 0
        return n


def conflist_ranges(path) -> list:
    """The subnets of the pycni plugin's IPAM ranges in a conflist (none when it cannot be read)."""
    try:
        with open(path, encoding="utf-8") as f:
            conf = json.load(f)
        plugins = conf.get("plugins") if isinstance(conf.get("plugins"), list) else [conf]
        ipam = next(p["ipam"] for p in plugins if p.get("type") == "pycni")
        return [ipaddress.ip_network(r["subnet"]) for rs in ipam.get("ranges") or () for r in rs]
    except (OSError, ValueError, KeyError, StopIteration, TypeError, AttributeError):
        return []


def ipam_collector(data_dir: str, network: str, ranges: Callable[[], list]) -> object:
    """pycni_ipam_addresses{network,range,state} and pycni_attachments from the IPAM store, read
    at scrape time (`ranges`: the subnets of this node's conflist)."""

    class Collector:
        def collect(self):
            addresses = GaugeMetricFamily("pycni_ipam_addresses", "addresses of the node's pod ranges",
                                          labels=["network", "range", "state"])
            attachments = GaugeMetricFamily("pycni_attachments", "pod interfaces holding addresses",
                                            labels=["network"])

            holders = DiskStore(os.path.join(data_dir, network)).holders()
            held = list(holders)
            owners = set(holders.values())
            for subnet in ranges():
                used = sum(1 for ip in held if ip in subnet)
                usable = subnet.num_addresses - (3 if subnet.version == 4 else 2)  # network, gateway, broadcast
                addresses.add_metric([network, str(subnet), "used"], used)
                addresses.add_metric([network, str(subnet), "free"], max(usable - used, 0))
            attachments.add_metric([network], len(owners))
            yield addresses
            yield attachments

    return Collector()


# What any number of clients can cost the process serving metrics (the agent, whose policy loop
# must never wait for them): one thread for every connection, each connection at most
# REQUEST_BYTES of request and REQUEST_SECONDS from accept to the last byte of its answer, at most
# MAX_CONNECTIONS open (a new one closes the oldest: slow and idle clients go first, a probe's
# request is in before its connection is the oldest).
MAX_CONNECTIONS = 64
REQUEST_BYTES = 8192
REQUEST_SECONDS = 5.0
DEFAULT_HOST = "127.0.0.1"      # pods cannot reach the node's loopback, even with hostNetwork off


def serve(metrics: Metrics, address: str, before_scrape: Callable[[], None]) -> "MetricsServer":
    """Serve /metrics, /healthz and /readyz at `address` (HOST:PORT; no host: 127.0.0.1) from a
    thread of its own; returns the server (`shutdown()` stops it)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or DEFAULT_HOST

    def answer(path: str) -> tuple[int, bytes, str]:
        text = "text/plain; charset=utf-8"
        if path == "/metrics":
            before_scrape()
            return 200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST
        if path == "/healthz":
            dead = [name for name, alive in metrics.alive.items() if not alive()]
            return (500 if dead else 200), (f"not alive: {', '.join(dead)}" if dead else "ok").encode() + b"\n", text
        if path == "/readyz":
            waiting = [name for name, ok in metrics.ready.items() if not (ok() if callable(ok) else ok)]
            return (503 if waiting else 200), (f"waiting for: {', '.join(waiting)}" if waiting else "ok").encode() + b"\n", text
        return 404, b"not found\n", text

    return MetricsServer(host, int(port), answer)


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
           503: "Service Unavailable"}


class MetricsServer:
    """A small HTTP/1.0-style server (one request per connection, `Connection: close`) on an
    asyncio loop in one thread: connections cost a few KiB each, never a thread."""

    def __init__(self, host: str, port: int, answer: Callable[[str], tuple[int, bytes, str]],
                 max_connections: int = MAX_CONNECTIONS, seconds: float = REQUEST_SECONDS):
        self.answer, self.max_connections, self.seconds = answer, max_connections, seconds
        self.open: dict[asyncio.StreamWriter, None] = {}     # oldest first
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(
            self._client, host, port, limit=REQUEST_BYTES, backlog=128))
        self.server_address = self.server.sockets[0].getsockname()[:2]
        self.thread = threading.Thread(target=self.loop.run_forever, name="metrics", daemon=True)
        self.thread.start()

    def shutdown(self) -> None:
        def stop():
            self.server.close()
            for w in list(self.open):
                w.transport.abort()
            self.loop.stop()
        self.loop.call_soon_threadsafe(stop)
        self.thread.join(5)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open[writer] = None
        while len(self.open) > self.max_connections:
            oldest = next(iter(self.open))
            del self.open[oldest]
            oldest.transport.abort()
        try:
            await asyncio.wait_for(self._serve(reader, writer), self.seconds)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, ConnectionError):
            pass
        except Exception as e:      # an answer that failed: the next request gets its own chance
            print(f"metrics: {e!r}", file=sys.stderr, flush=True)
        finally:
            self.open.pop(writer, None)
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(line) != 3 or not line[2].startswith("HTTP/"):
            code, body, ctype = 400, b"bad request\n", "text/plain; charset=utf-8"
        elif line[0] not in ("GET", "HEAD"):
            code, body, ctype = 405, b"method not allowed\n", "text/plain; charset=utf-8"
        else:
            code, body, ctype = self.answer(line[1].split("?")[0])
        writer.write(f"HTTP/1.1 {code} {REASONS.get(code, '')}\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                     + (b"" if len(line) == 3 and line[0] == "HEAD" else body))
        await writer.drain()


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def serve_for_helper(address: str, calls_file: str, conf_dir: str, helper_pid: int, socket_path: str) -> None:
    """The helper's metrics (a hand-made node without the agent): the CNI calls from the record,
    the IPAM ranges of the conflists in `conf_dir`; /healthz while the helper lives, /readyz while
    the socket it serves (`socket_path`, whatever its name) is there. Runs in a process of its own
    that the helper forks at its start."""
    metrics = Metrics()
    record = CallRecord(calls_file, metrics.count_call)
    for net in networks(conf_dir):
        if net.data_dir is not None:
            metrics.registry.register(ipam_collector(net.data_dir, net.name, partial(conflist_ranges, net.conflist)))
    metrics.alive["helper"] = lambda: os.getppid() == helper_pid
    metrics.ready["helper socket"] = partial(_is_socket, socket_path)
    server = serve(metrics, address, record.drain)
    while os.getppid() == helper_pid:
        time.sleep(5.0)
        try:
            record.drain()
        except OSError:
            pass
    server.shutdown()
