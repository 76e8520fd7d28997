"""`pycni` for people (no CNI_COMMAND in the environment): --version, and `exec`, which runs a
conflist against a network namespace the way a container runtime would."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from cni.spec.version import PYCNI
from cni.spec.errors import CNIError
from cni.spec.version import CURRENT, SUPPORTED

DEFAULT_CNI_PATH = "/opt/cni/bin"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pycni",
        description="pycni CNI plugin. Run by a container runtime with CNI_COMMAND set; "
                    "by hand, `pycni exec` drives a conflist as libcni does.")
    p.add_argument("--version", action="store_true", help="print versions and exit")
    sub = p.add_subparsers(dest="cmd")
    ex = sub.add_parser("exec", help="run a .conflist (add, del, check, status, gc)")
    ex.add_argument("verb", choices=["add", "del", "check", "status", "gc"])
    ex.add_argument("conflist", help="network configuration list (.conflist JSON, .conf or YAML)")
    ex.add_argument("netns", nargs="?", default="", help="path of the pod network namespace")
    ex.add_argument("--container-id", help="default: a hash of the netns path")
    ex.add_argument("--ifname", default="eth0")
    ex.add_argument("--args", default="", help="CNI_ARGS, e.g. 'IgnoreUnknown=1;IP=10.1.0.9'")
    ex.add_argument("--runtime-config", default="{}",
                    help="capability args as JSON, e.g. '{\"portMappings\": [...], \"mac\": \"...\"}'")
    ex.add_argument("--cni-path", default=os.environ.get("CNI_PATH", DEFAULT_CNI_PATH),
                    help="plugin directories, ':'-separated (default $CNI_PATH or /opt/cni/bin)")
    ex.add_argument("--cache-dir", default=os.environ.get("PYCNI_CACHE_DIR", "/var/lib/cni/results"))
    ex.add_argument("--valid", action="append", default=[], metavar="ID/IFNAME",
                    help="gc: an attachment that is still valid (repeatable)")
    ins = sub.add_parser("install", help="install the self-contained build and a conflist, atomically")
    ins.add_argument("--bin-dir", default=DEFAULT_CNI_PATH)
    ins.add_argument("--conf-dir", default="/etc/cni/net.d")
    ins.add_argument("--conflist", help="network configuration to install (.conflist/.conf JSON or YAML)")
    ins.add_argument("--conf-name", help="file name in --conf-dir (default: the conflist's own name)")
    ins.add_argument("--from", dest="source", metavar="DIR",
                     help="the build to install (default: the one this pycni runs from)")
    ins.add_argument("--helper", nargs="?", const="/etc/systemd/system", metavar="UNIT_DIR",
                     dest="helper_unit_dir",
                     help="also install the resident helper as a systemd unit (pycni-helper.service, "
                          "in UNIT_DIR, default /etc/systemd/system) and enable it where systemd runs")
    ins.add_argument("--helper-socket", default="/run/pycni/helper.sock")
    ins.add_argument("--node-bin-dir", metavar="DIR",
                     help="where the node's runtimes see --bin-dir, when that differs (an image root, "
                          "a container's mount of the host): the launcher names its interpreter by that path")
    ag = sub.add_parser("agent", help="node agent of a Kubernetes cluster (the DaemonSet's process)")
    # lazy: each verb loads only its own modules (the helper's forked children carry none of the agent)
    from cni.agent.main import add_arguments

    add_arguments(ag)
    isp = sub.add_parser("inspect", help="every attachment on this node, cross-checked (leaks, strays)")
    isp.add_argument("--conf-dir", default="/etc/cni/net.d", help="the networks: the conflists in DIR")
    isp.add_argument("--json", action="store_true", help="JSON instead of a table")
    isp.add_argument("--check", action="store_true",
                     help="exit 1 when anything does not add up (an address without an interface, ...)")
    isp.add_argument("--peers-file", default="/run/pycni/peers.json",
                     help="the agent's record of how this node reaches each peer (listed when present)")
    exp = sub.add_parser("explain", help="the path of a packet on this node, hop by hop, rule by rule")
    exp.add_argument("src", help="a pod (ns/name), container id, address, or `node`")
    exp.add_argument("dst", help="DST[:PORT[/PROTO]]: a pod, container id or address")
    exp.add_argument("--conf-dir", default="/etc/cni/net.d")
    exp.add_argument("--json", action="store_true")
    hp = sub.add_parser("helper", help="serve CNI calls from a resident process (faster pod start)")
    hp.add_argument("--socket", default=os.environ.get("PYCNI_HELPER_SOCKET", "/run/pycni/helper.sock"))
    hp.add_argument("--metrics-address", default="", metavar="HOST:PORT",
                    help="also serve /metrics, /healthz, /readyz there (nodes without the agent)")
    hp.add_argument("--conf-dir", default="/etc/cni/net.d", help="the networks whose IPAM ranges are reported")
    hp.add_argument("--max-calls", type=at_least_one, default=16, metavar="N",
                    help="calls served at once (a child each, ~5 MB); one beyond them waits up to 0.5 s, then runs in its caller's "
                         "process (default %(default)s)")
    return p


def at_least_one(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: at least 1")
    return n


def _helper_metrics(address: str, calls_file: str, conf_dir: str, helper_pid: int, socket_path: str) -> None:
    # prometheus_client loads in the helper's metrics process only, never in the helper
    # whose forked children serve the calls
    # lazy: each verb loads only its own modules (the helper's forked children carry none of the agent)
    from cni.agent.metrics import serve_for_helper

    serve_for_helper(address, calls_file, conf_dir, helper_pid, socket_path)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.version:
        print(f"pycni {PYCNI}\nCNI spec versions: {', '.join(SUPPORTED)} (current {CURRENT})")
        return 0
    if args.cmd == "helper":
        # lazy: each verb loads only its own modules (the helper's forked children carry none of the agent)
        from cni.runtime.server import serve

        return serve(args.socket, args.metrics_address, args.conf_dir, _helper_metrics, args.max_calls)
    if args.cmd == "agent":
        # lazy: each verb loads only its own modules (the helper's forked children carry none of the agent)
        from cni.agent.main import run

        return run(args)
    if args.cmd == "explain":
        # lazy: each verb loads only its own modules (the helper's forked children carry none of the agent)
        from cni.tools.explain import main as explain

        return explain(args)
    if args.cmd == "inspect":
        # lazy: each verb loads only its own modules (the helper's forked children carry none of the agent)
        from cni.tools.inspect import main as inspect

        return inspect(args)
    if args.cmd == "install":
        # lazy: each verb loads only its own modules (the helper's forked children carry none of the agent)
        from cni.tools.install import main as install

        try:
            for line in install(args.bin_dir, args.conf_dir, args.conflist, args.source, args.conf_name,
                                args.helper_unit_dir, args.helper_socket, args.node_bin_dir):
                print(f"installed {line}")
            return 0
        except CNIError as e:
            print(f"pycni install: {e.msg}" + (f": {e.details}" if e.details else ""), file=sys.stderr)
            return 1
        except (OSError, subprocess.SubprocessError) as e:
            print(f"pycni install: {e}", file=sys.stderr)
            return 1
    if args.cmd != "exec":
        _parser().print_help(sys.stderr)
        return 2
    # lazy: each verb loads only its own modules (the helper's forked children carry none of the agent)
    from cni.tools.driver import Attachment, Driver, default_container_id, load_conflist

    try:
        netlist = load_conflist(args.conflist)
        runtime = json.loads(args.runtime_config)
        driver = Driver(netlist, [p for p in args.cni_path.split(os.pathsep) if p], args.cache_dir)
        if args.verb in ("add", "del", "check") and not args.netns and args.verb != "del":
            raise CNIError("a netns path is required", f"pycni exec {args.verb} CONFLIST NETNS")
        att = Attachment(args.container_id or default_container_id(args.netns), args.netns,
                         args.ifname, args.args, runtime)
        if args.verb == "add":
            print(json.dumps(driver.add(att), indent=2))
        elif args.verb == "del":
            driver.delete(att)
        elif args.verb == "check":
            driver.check(att)
        elif args.verb == "status":
            driver.status()
            # lazy: each verb loads only its own modules (the helper's forked children carry none of the agent)
            from cni.runtime.client import helper_state

            print(f"ready; pycni helper: {helper_state(os.environ)}")
        else:
            driver.gc([tuple(v.rsplit("/", 1)) for v in args.valid])
        return 0
    except CNIError as e:
        print(json.dumps(e.to_dict(CURRENT), indent=2))
        return 1
    except (OSError, ValueError) as e:
        print(json.dumps(CNIError("pycni exec failed", str(e)).to_dict(CURRENT), indent=2))
        return 1
