"""`pycni agent`: install the plugin, then keep this node's conflist, routes and masquerade in
step with the cluster's Nodes (from the API, or once from a file)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

from cni.spec.log import log
from cni.agent import host, tunnel_host
from cni.agent.nodes import Desired, Options, desired, parse_node_list
from cni.agent.tunnel import DEFAULT_DEVICE, DEFAULT_PORT, DEFAULT_VNI, MODES, TunnelOptions
from cni.agent.tunnel_host import DEFAULT_PEERS_FILE


def add_arguments(p) -> None:
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME"),
                   help="this node (default $NODE_NAME, set from the downward API)")
    p.add_argument("--kubeconfig", help="default: the in-cluster service account")
    p.add_argument("--nodes-file", help="sync once from a v1.NodeList JSON file instead of the API")
    p.add_argument("--bin-dir", default="/opt/cni/bin")
    p.add_argument("--conf-dir", default="/etc/cni/net.d")
    p.add_argument("--conf-name", default="10-pycni.conflist")
    p.add_argument("--node-bin-dir", metavar="DIR",
                   help="where the node sees --bin-dir, if not at the same path (default: the same)")
    p.add_argument("--from", dest="source", metavar="BUILD",
                   help="the build to install into --bin-dir (default: the one running; none: skip)")
    p.add_argument("--network", default="pycni")
    p.add_argument("--bridge", default="pycni0")
    p.add_argument("--data-dir", default="/run/pycni/ipam", help="IPAM data dir (keep it on tmpfs)")
    p.add_argument("--mtu", type=int, help="the pods' MTU (default: the uplink's, less the tunnel's overhead "
                                          "when a peer is reached through it)")
    p.add_argument("--mode", choices=MODES, default="auto",
                   help="how other nodes' pods are reached: auto (a direct route to an on-link node, VXLAN "
                        "to one behind a router), direct (routes only), vxlan (always the tunnel)")
    p.add_argument("--vxlan-device", default=DEFAULT_DEVICE)
    p.add_argument("--vxlan-vni", type=int, default=DEFAULT_VNI)
    p.add_argument("--vxlan-port", type=int, default=DEFAULT_PORT, help="UDP port (default %(default)s)")
    p.add_argument("--peers-file", default=DEFAULT_PEERS_FILE,
                   help="where the agent records how it reaches each peer (read by `pycni inspect --peers-file`)")
    p.add_argument("--cluster-cidr", action="append", default=[],
                   help="the cluster's pod subnet(s), e.g. kind's podSubnet (repeatable or comma-separated)")
    p.add_argument("--no-masquerade", action="store_true")
    p.add_argument("--no-network-policy", action="store_true",
                   help="do not enforce NetworkPolicy (on by default with the API; needs nftables)")
    p.add_argument("--policy-dir", default="/run/pycni/policy",
                   help="network policy state shared with the plugin (keep it on tmpfs)")
    p.add_argument("--pod-watch-linger", type=float, default=60.0, metavar="SECONDS",
                   help="keep watching Pods this long after the last NetworkPolicy is gone (Pods are "
                        "watched only while a policy exists)")
    p.add_argument("--metrics-address", metavar="HOST:PORT",
                   help="serve /metrics (Prometheus), /healthz and /readyz there (e.g. 127.0.0.1:9152; "
                        "no host: 127.0.0.1; a pod-reachable address such as 0.0.0.0 only if you mean it)")
    p.add_argument("--calls-file", metavar="PATH",
                   help="the plugin's call record to count (default: calls.log beside the helper socket)")
    p.add_argument("--helper", nargs="?", const="/run/pycni/helper.sock", metavar="SOCKET",
                   help="host the resident helper (`pycni helper`) of the build installed in --bin-dir "
                        "on SOCKET (default /run/pycni/helper.sock): pods start faster; the agent "
                        "restarts it if it exits. With --nodes-file the agent then stays until stopped")
    p.add_argument("--helper-max-calls", type=int, metavar="N",
                   help="the hosted helper's calls at once (`pycni helper --max-calls`; default the helper's 16): "
                        "with the agent's own memory this bounds the container's (docs/kubernetes.md)")
    p.add_argument("--cri-socket", metavar="PATH",
                   help="the container runtime's CRI socket, asked which pods exist before CNI GC (default: "
                        "the first of /run/containerd/containerd.sock, /var/run/crio/crio.sock that exists)")
    p.add_argument("--gc-every", type=float, default=300.0, metavar="SECONDS",
                   help="run CNI GC on this node's network at start and this often (0: never; default 300)")
    p.add_argument("--gc-grace", type=float, default=120.0, metavar="SECONDS",
                   help="GC keeps an attachment whose reservation is younger than this (default 120)")
    p.add_argument("--cri-list", metavar="SOCKET", help=argparse.SUPPRESS)   # GC's child (cni.agent.gc)


class Syncer:
    """Called with the full node list after every list or watch event. Most events (status and
    label updates) change nothing of ours: the node is only touched when the desired state changed
    or the last sync is older than `every` seconds (which also repairs drift, e.g. a flushed table)."""

    def __init__(self, node_name: str, opts: Options, apply: Callable[[Desired], dict],
                 clock: Callable[[], float] = time.monotonic, every: float = 60.0, metrics=None,
                 probe: Callable[[list], object] | None = None):
        self.node_name, self.opts, self.apply, self.clock, self.every = node_name, opts, apply, clock, every
        self.probe = probe          # the kernel's facts about the peers (cni.agent.tunnel_host.probe)
        self.last: Desired | None = None
        self.at = 0.0
        self.metrics = metrics

    def __call__(self, nodes: list) -> dict | None:
        state = desired(self.node_name, nodes, self.opts, self.probe(nodes) if self.probe else None)
        if state == self.last and self.clock() - self.at < self.every:
            return None
        started = time.monotonic()
        try:
            done = self.apply(state)
        except Exception:
            if self.metrics is not None:
                self.metrics.sync_errors.labels("nodes").inc()
            raise
        if self.metrics is not None:
            self.metrics.sync_seconds.labels("nodes").observe(time.monotonic() - started)
            if state.conflist is not None:
                self.metrics.ready["conflist"] = True
        self.last, self.at = state, self.clock()
        print(f"agent: {len(nodes)} nodes, conflist {'written' if done['conflist'] else 'unchanged'}, "
              f"routes +{done['routes'][0]} -{done['routes'][1]}, "
              f"pod networks {', '.join(map(str, state.pod_networks)) or '-'}"
              + (f", peers {done['peers']}" if "peers" in done else "")
              + (f", tunnel entries +{done['tunnel'][0]} -{done['tunnel'][1]}" if "tunnel" in done else ""),
              flush=True)
        return done


def run(args) -> int:
    if args.cri_list:
        # lazy: a part of the agent loads when it is switched on (cni.cli reads add_arguments for every verb)
        from cni.agent.gc import cri_list

        return cri_list(args.cri_list)
    if not args.node_name:
        log.error("agent: --node-name or $NODE_NAME is required")
        print("pycni agent: --node-name or $NODE_NAME is required")
        return 2
    tunnel = TunnelOptions(args.mode, args.vxlan_device, args.vxlan_vni, args.vxlan_port)
    try:
        tunnel_host.check(tunnel)          # before anything is configured: never half of it
    except tunnel_host.TunnelError as e:
        log.error(f"agent: {e}")
        print(f"pycni agent: {e}", flush=True)
        return 1
    opts = Options(network=args.network, bridge=args.bridge, data_dir=args.data_dir, mtu=args.mtu,
                   cluster_cidrs=tuple(ipaddress.ip_network(c.strip()) for arg in args.cluster_cidr
                                       for c in arg.split(",") if c.strip()),
                   masquerade=not args.no_masquerade, policy_dir=_policy_dir(args), tunnel=tunnel)
    _install(args)
    conf_dir = Path(args.conf_dir)

    metrics = _serve_metrics(args, opts, conf_dir)
    publish = None if args.nodes_file else tunnel_host.publisher(args.node_name, args.kubeconfig)
    on_change = Syncer(args.node_name, opts,
                       lambda state: tunnel_host.published(state, publish, host.apply(
                           state, conf_dir, args.conf_name, args.peers_file, metrics)),
                       metrics=metrics, probe=partial(tunnel_host.probe_now, args.node_name, opts.tunnel))
    helper = _host_helper(args)
    if args.nodes_file:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))   # so the helper is stopped on the way out
        try:
            with open(args.nodes_file, encoding="utf-8") as f:
                nodes = parse_node_list(json.load(f))
            try:
                on_change(nodes)
            except tunnel_host.TunnelError as e:
                log.error(f"agent: {e}")
                print(f"pycni agent: {e}", flush=True)
                return 1
            if helper is not None or metrics is not None:
                _collect_garbage(args, conf_dir, metrics)
                signal.pause()      # a one-shot sync that hosts the helper or serves metrics: until stopped
            return 0
        finally:
            if helper is not None:
                helper.stop()
    return _follow_cluster(args, opts, on_change, metrics, helper)


STOP_WAIT = 8.0     # seconds SIGTERM waits for a sync under way (the DaemonSet's grace period is 10)
NODES_EVERY = 300.0     # the node's routes, conflist and masquerade rewritten at least this often
NODES_CHECK = 60.0      # and this often a cheap look: is the masquerade table still there?


def _follow_cluster(args, opts: Options, on_change: "Syncer", metrics, helper) -> int:
    """Follow the API (Nodes; and NetworkPolicy's kinds) until SIGTERM or SIGINT; then let the
    sync under way finish (at most STOP_WAIT s), stop the helper and exit at once, leaving the
    threads that wait on the API behind."""
    # lazy: a part of the agent loads when it is switched on (cni.cli reads add_arguments for every verb)
    import threading

    from cni.agent import kube
    from cni.agent.shutdown import Stopping, Writers
    from cni.agent.watch import Follower

    _few_malloc_arenas()
    stopping = threading.Event()
    writers = Writers()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        cluster = kube.load(args.kubeconfig)
    except (kube.ConfigError, OSError, ValueError) as e:
        log.error(f"agent: the API: {e}")
        print(f"pycni agent: the API: {e}", flush=True)
        return 1
    _collect_garbage(args, Path(args.conf_dir), metrics)
    if opts.policy_dir:
        # lazy: a part of the agent loads when it is switched on (cni.cli reads add_arguments for every verb)
        from cni.agent.policy import enforce, loop

        loop.start(cluster, args.node_name, opts.policy_dir, stop=stopping.is_set, metrics=metrics, writers=writers,
                   linger=args.pod_watch_linger,
                   mine=lambda: enforce.local_view(on_change.last and on_change.last.conflist,
                                                   opts.data_dir, opts.network))

    syncing = threading.Lock()        # the watch's thread, and this one for the periodic sync

    def nodes_changed() -> None:
        try:
            with writers.writing(), syncing:
                on_change(follower.snapshot())
        except Stopping:
            pass

    # lazy: a part of the agent loads when it is switched on (cni.cli reads add_arguments for every verb)
    from cni.agent.nodes import parse_node

    on_change.every = NODES_EVERY     # events that change nothing of ours no longer reach it at all
    follower = Follower(cluster, "nodes", parse_node, nodes_changed, until=stopping.is_set).start()
    while not stopping.wait(NODES_CHECK):
        if not follower.listed:
            continue
        if on_change.last is not None and on_change.last.pod_networks and not _masquerade_present():
            log.error("agent: the masquerade table is gone from the kernel: writing it again")
            on_change.at = float("-inf")
        try:
            nodes_changed()        # a full sync when NODES_EVERY has passed (or the table went)
        except Exception as e:     # as a failed sync on an event: the next try comes
            log.error(f"agent: node sync failed: {type(e).__name__}: {e}")
    started = time.monotonic()
    clean = writers.close(STOP_WAIT)
    if helper is not None:
        helper.stop(timeout=max(0.5, STOP_WAIT - (time.monotonic() - started)))
    print(f"agent: stopped in {time.monotonic() - started:.1f} s"
          + ("" if clean else " (a sync was still running: it is cut short; the next start redoes it)"), flush=True)
    sys.stdout.flush()
    os._exit(0)


def _few_malloc_arenas() -> None:
    """glibc gives each thread that allocates at once an arena of its own (up to 8 per core) and
    returns their free memory to the system late: the watch threads' parsing left ~5 MB more
    resident at 1,000 nodes (bench/agent_scale.py). Two arenas, set before the threads start."""
    # lazy: a part of the agent loads when it is switched on (cni.cli reads add_arguments for every verb)
    import ctypes

    try:
        ctypes.CDLL(None).mallopt(-8, 2)        # M_ARENA_MAX
    except (OSError, AttributeError):
        pass                                    # not glibc: its allocator, its rules


def _masquerade_present() -> bool:
    # lazy: a part of the agent loads when it is switched on (cni.cli reads add_arguments for every verb)
    from cni.firewall import nft

    out = nft.transaction("list tables\n", check=False)
    return out.returncode == 0 and f"table {host.TABLE}\n" in out.stdout.decode(errors="replace") + "\n"


def _serve_metrics(args, opts: Options, conf_dir: Path):
    """The metrics and health server, when --metrics-address is given; None otherwise."""
    if not args.metrics_address:
        return None
    # lazy: a part of the agent loads when it is switched on (cni.cli reads add_arguments for every verb)
    import threading

    from cni.agent import metrics as m
    from cni.runtime.client import DEFAULT_SOCKET

    metrics = m.Metrics()
    calls_file = args.calls_file or os.path.join(os.path.dirname(args.helper or DEFAULT_SOCKET), "calls.log")
    record = m.CallRecord(calls_file, metrics.count_call)

    metrics.registry.register(m.ipam_collector(opts.data_dir, opts.network,
                                               partial(m.conflist_ranges, conf_dir / args.conf_name)))
    metrics.ready["conflist"] = False
    if opts.policy_dir:
        metrics.ready["network policy"] = False

    def drain_often() -> None:
        while True:
            try:
                record.drain()
            except OSError as e:
                log.error(f"agent: reading {calls_file}: {e}")
            time.sleep(5.0)

    threading.Thread(target=drain_often, name="calls", daemon=True).start()
    server = m.serve(metrics, args.metrics_address, record.drain)
    host, port = server.server_address[:2]
    print(f"agent: metrics on http://{'[' + host + ']' if ':' in host else host}:{port}/metrics "
          f"(calls from {calls_file})", flush=True)
    metrics.server = server
    return metrics


def _collect_garbage(args, conf_dir: Path, metrics) -> None:
    """CNI GC at start and every --gc-every seconds (cni/agent/gc.py)."""
    # lazy: a part of the agent loads when it is switched on (cni.cli reads add_arguments for every verb)
    from cni.agent import gc

    gc.start(args, str(conf_dir), metrics)


def _policy_dir(args) -> str | None:
    """Where policy state lives when this agent enforces NetworkPolicy, else None (and why not,
    said once, plainly: a node that cannot enforce them all enforces none)."""
    # lazy: a part of the agent loads when it is switched on (cni.cli reads add_arguments for every verb)
    from cni.agent.policy import enforce

    if args.no_network_policy:
        if os.path.exists(os.path.join(args.policy_dir, "enforcing")):
            enforce.disable(args.policy_dir)
            print("agent: network policy turned off: table removed", flush=True)
        return None
    if args.nodes_file:
        print("agent: network policy needs the API (not enforced with --nodes-file)", flush=True)
        return None
    why = enforce.preconditions()
    if why is not None:
        log.error(f"agent: NetworkPolicy is NOT enforced on this node: {why}")
        print(f"agent: NetworkPolicy is NOT enforced on this node: {why}", flush=True)
        return None
    return args.policy_dir


def _host_helper(args):
    if not args.helper:
        return None
    # lazy: a part of the agent loads when it is switched on (cni.cli reads add_arguments for every verb)
    from cni.agent.helper_host import HelperHost

    exe = Path(args.bin_dir) / "pycni"
    if not exe.exists():
        print(f"agent: no {exe}: the helper is not started (calls run in process)", flush=True)
        return None
    helper = HelperHost(exe, args.helper, max_calls=args.helper_max_calls)
    helper.start()
    return helper


def _install(args) -> None:
    # lazy: a part of the agent loads when it is switched on (cni.cli reads add_arguments for every verb)
    from cni.tools import install

    if args.source == "none":
        return
    bundle = Path(args.source) if args.source else install.running_bundle()
    if bundle is None:
        print("agent: not a self-contained build and no --from: plugin not installed", flush=True)
        return
    exe = install.install_binaries(bundle.resolve(), Path(args.bin_dir),
                                   node_bin_dir=Path(args.node_bin_dir) if args.node_bin_dir else None)
    print(f"agent: installed {exe} -> {os.readlink(exe)}", flush=True)
