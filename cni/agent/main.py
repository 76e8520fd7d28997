"""`pycni agent`: install the plugin, then keep this node's conflist, routes and masquerade in
step with the cluster's Nodes (from the API, or once from a file)."""

from __future__ import annotations

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
from cni.agent import host
from cni.agent.nodes import Desired, Options, desired, parse_node_list


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
    p.add_argument("--mtu", type=int)
    p.add_argument("--cluster-cidr", action="append", default=[],
                   help="the cluster's pod subnet(s), e.g. kind's podSubnet (repeatable or comma-separated)")
    p.add_argument("--no-masquerade", action="store_true")
    p.add_argument("--no-network-policy", action="store_true",
                   help="do not enforce NetworkPolicy (on by default with the API; needs nftables)")
    p.add_argument("--policy-dir", default="/run/pycni/policy",
                   help="network policy state shared with the plugin (keep it on tmpfs)")
    p.add_argument("--metrics-address", metavar="HOST:PORT",
                   help="serve /metrics (Prometheus), /healthz and /readyz there (e.g. 0.0.0.0:9152)")
    p.add_argument("--calls-file", metavar="PATH",
                   help="the plugin's call record to count (default: calls.log beside the helper socket)")
    p.add_argument("--helper", nargs="?", const="/run/pycni/helper.sock", metavar="SOCKET",
                   help="host the resident helper (`pycni helper`) of the build installed in --bin-dir "
                        "on SOCKET (default /run/pycni/helper.sock): pods start faster; the agent "
                        "restarts it if it exits. With --nodes-file the agent then stays until stopped")
    p.add_argument("--cri-socket", metavar="PATH",
                   help="the container runtime's CRI socket, asked which pods exist before CNI GC (default: "
                        "the first of /run/containerd/containerd.sock, /var/run/crio/crio.sock that exists)")
    p.add_argument("--gc-every", type=float, default=300.0, metavar="SECONDS",
                   help="run CNI GC on this node's network at start and this often (0: never; default 300)")
    p.add_argument("--gc-grace", type=float, default=120.0, metavar="SECONDS",
                   help="GC keeps an attachment whose reservation is younger than this (default 120)")


class Syncer:
    """Called with the full node list after every list or watch event. Most events (status and
    label updates) change nothing of ours: the node is only touched when the desired state changed
    or the last sync is older than `every` seconds (which also repairs drift, e.g. a flushed table)."""

    def __init__(self, node_name: str, opts: Options, apply: Callable[[Desired], dict],
                 clock: Callable[[], float] = time.monotonic, every: float = 60.0, metrics=None):
        self.node_name, self.opts, self.apply, self.clock, self.every = node_name, opts, apply, clock, every
        self.last: Desired | None = None
        self.at = 0.0
        self.metrics = metrics

    def __call__(self, nodes: list) -> dict | None:
        state = desired(self.node_name, nodes, self.opts)
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
              f"pod networks {', '.join(map(str, state.pod_networks)) or '-'}", flush=True)
        return done


def run(args) -> int:
    if not args.node_name:
        log.error("agent: --node-name or $NODE_NAME is required")
        print("pycni agent: --node-name or $NODE_NAME is required")
        return 2
    opts = Options(network=args.network, bridge=args.bridge, data_dir=args.data_dir, mtu=args.mtu,
                   cluster_cidrs=tuple(ipaddress.ip_network(c.strip()) for arg in args.cluster_cidr
                                       for c in arg.split(",") if c.strip()),
                   masquerade=not args.no_masquerade, policy_dir=_policy_dir(args))
    _install(args)
    conf_dir = Path(args.conf_dir)

    metrics = _serve_metrics(args, opts, conf_dir)
    on_change = Syncer(args.node_name, opts, lambda state: host.apply(state, conf_dir, args.conf_name),
                       metrics=metrics)
    helper = _host_helper(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))   # so the helper is stopped on the way out
    try:
        if args.nodes_file:
            with open(args.nodes_file, encoding="utf-8") as f:
                on_change(parse_node_list(json.load(f)))
            if helper is not None or metrics is not None:
                _collect_garbage(args, conf_dir, metrics)
                signal.pause()      # a one-shot sync that hosts the helper or serves metrics: until stopped
            return 0
        _collect_garbage(args, conf_dir, metrics)
        # lazy: a part of the agent loads when it is switched on (cni.cli reads add_arguments for every verb)
        from cni.agent.watch import follow, load_config

        if opts.policy_dir:
            # lazy: a part of the agent loads when it is switched on (cni.cli reads add_arguments for every verb)
            from cni.agent.policy import enforce, loop

            load_config(args.kubeconfig)
            loop.start(args.node_name, opts.policy_dir, metrics=metrics,
                       mine=lambda: enforce.local_view(on_change.last and on_change.last.conflist,
                                                       opts.data_dir, opts.network))
        follow(on_change, args.kubeconfig)
        return 0
    finally:
        if helper is not None:
            helper.stop()


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
    print(f"agent: metrics on http://{args.metrics_address}/metrics (calls from {calls_file})", flush=True)
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
    helper = HelperHost(exe, args.helper)
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
