"""`pycni agent`: install the plugin, then keep this node's conflist, routes and masquerade in
step with the cluster's Nodes (from the API, or once from a file)."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

from ..log import log
from . import host
from .nodes import Options, desired, parse_node_list


def add_arguments(p) -> None:
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME"),
                   help="this node (default $NODE_NAME, set from the downward API)")
    p.add_argument("--kubeconfig", help="default: the in-cluster service account")
    p.add_argument("--nodes-file", help="sync once from a v1.NodeList JSON file instead of the API")
    p.add_argument("--bin-dir", default="/opt/cni/bin")
    p.add_argument("--conf-dir", default="/etc/cni/net.d")
    p.add_argument("--conf-name", default="10-pycni.conflist")
    p.add_argument("--from", dest="source", metavar="BUILD",
                   help="the build to install into --bin-dir (default: the one running; none: skip)")
    p.add_argument("--network", default="pycni")
    p.add_argument("--bridge", default="pycni0")
    p.add_argument("--data-dir", default="/run/pycni/ipam", help="IPAM data dir (keep it on tmpfs)")
    p.add_argument("--mtu", type=int)
    p.add_argument("--cluster-cidr", action="append", default=[],
                   help="the cluster's pod subnet(s), e.g. kind's podSubnet (repeatable or comma-separated)")
    p.add_argument("--no-masquerade", action="store_true")


def run(args) -> int:
    if not args.node_name:
        log.error("agent: --node-name or $NODE_NAME is required")
        print("pycni agent: --node-name or $NODE_NAME is required")
        return 2
    opts = Options(network=args.network, bridge=args.bridge, data_dir=args.data_dir, mtu=args.mtu,
                   cluster_cidrs=tuple(ipaddress.ip_network(c.strip()) for arg in args.cluster_cidr
                                       for c in arg.split(",") if c.strip()),
                   masquerade=not args.no_masquerade)
    _install(args)
    conf_dir = Path(args.conf_dir)

    def on_change(nodes) -> None:
        state = desired(args.node_name, nodes, opts)
        done = host.apply(state, conf_dir, args.conf_name)
        print(f"agent: {len(nodes)} nodes, conflist {'written' if done['conflist'] else 'unchanged'}, "
              f"routes +{done['routes'][0]} -{done['routes'][1]}, "
              f"pod networks {', '.join(map(str, state.pod_networks)) or '-'}", flush=True)

    if args.nodes_file:
        with open(args.nodes_file, encoding="utf-8") as f:
            on_change(parse_node_list(json.load(f)))
        return 0
    from .watch import follow

    follow(on_change, args.kubeconfig)
    return 0


def _install(args) -> None:
    from .. import install

    if args.source == "none":
        return
    bundle = Path(args.source) if args.source else install.running_bundle()
    if bundle is None:
        print("agent: not a self-contained build and no --from: plugin not installed", flush=True)
        return
    exe = install.install_binaries(bundle.resolve(), Path(args.bin_dir))
    print(f"agent: installed {exe} -> {os.readlink(exe)}", flush=True)
