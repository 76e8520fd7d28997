"""The agent's metrics and health, in Prometheus' text format through `prometheus_client`, on
one HTTP server: /metrics, /healthz (the agent's loops are alive), /readyz (the node has its
conflist and, when policies are enforced, the first policy sync is done).

CNI calls are counted from the call record every plugin process appends (cni/runtime/calls.py):
`CallRecord.drain` reads what was added since the last read (before each scrape and every few
seconds), and rotates the file past ROTATE_BYTES so it never grows without bound. IPAM addresses
and attachments are read from the IPAM store at scrape time.
"""

from __future__ import annotations

from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import ipaddress
import json
import os
import stat
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


def serve(metrics: Metrics, address: str, before_scrape: Callable[[], None]) -> ThreadingHTTPServer:
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/metrics":
                before_scrape()
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                dead = [name for name, alive in metrics.alive.items() if not alive()]
                self._send(500 if dead else 200, (f"not alive: {', '.join(dead)}" if dead else "ok").encode() + b"\n")
            elif path == "/readyz":
                waiting = [name for name, ok in metrics.ready.items() if not (ok() if callable(ok) else ok)]
                self._send(503 if waiting else 200,
                           (f"waiting for: {', '.join(waiting)}" if waiting else "ok").encode() + b"\n")
            else:
                self._send(404, b"not found\n")

    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


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
