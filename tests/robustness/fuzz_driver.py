"""Property-based fuzzing of the CNI contract, run inside a throwaway node namespace.

    ip netns exec NODE python -m tests.robustness.fuzz_driver --cases N --pod /var/run/netns/POD --data DIR \
        [--seed S] [--db DIR] [--exec-every K]

Each case is a stdin JSON (mutations of a valid pycni config) and a CNI_* environment, served by
`skel.run` + `BridgePlugin` in this process (the node namespace plays the host), and every K-th
case by the real `pycni` executable as a runtime runs it. Every case must end in a valid result
or a CNI error JSON with a non-zero exit. An error leaves nothing behind; a result is DELeted
again, and then too nothing is left: no host veth, no reservation anywhere under DIR (every data
dir a case names lies there), no pycni rule in nftables or legacy iptables, nothing but `lo` in
the pod. Runs are reproducible: the seed is printed, failing examples are kept in --db. Prints
one summary line: seed, cases, results, errors by code, leaks found.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from cni.spec import skel
from cni.bridge.plugin import BridgePlugin

COMMANDS = ["ADD", "DEL", "CHECK", "STATUS", "VERSION", "GC", "", "add", "FOO"]
VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "0.2.0", "2.0.0", "", None, 1]
WEIRD = st.one_of(st.text(max_size=40), st.sampled_from(
    ["../../etc", "a/b", "eth0\n", "x" * 300, "${IFS}", "a;b", "'\"", "\x00", "-rf", "😀", "."]))
JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.text(max_size=20)),
                       lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c,
                                                                                   max_size=4)), max_leaves=10)


def base_config(data_dir: str) -> dict:
    return {"cniVersion": "1.0.0", "name": "fuzznet", "type": "pycni", "bridge": "fzbr0",
            "isGateway": True, "isDefaultGateway": True, "logFile": "",
            "ipam": {"type": "pycni-ipam", "dataDir": data_dir, "ranges": [[{"subnet": "10.99.0.0/24"}]]}}


KEYS = ["cniVersion", "name", "type", "bridge", "isGateway", "isDefaultGateway", "mtu", "hairpinMode",
        "promiscMode", "vlan", "ipMasq", "forceAddress", "enabledad", "runtimeConfig", "args", "prevResult",
        "dns", "ipam", "backend", "snat", "markMasqBit"]
IPAM_KEYS = ["type", "ranges", "subnet", "rangeStart", "rangeEnd", "gateway", "routes", "dataDir", "resolvConf"]


@st.composite
def cases(draw, data_dir: str, pod: str):
    conf = base_config(data_dir)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3, 4]))):
        key = draw(st.sampled_from(KEYS))
        action = draw(st.sampled_from(["delete", "weird", "json", "version"]))
        if action == "delete":
            conf.pop(key, None)
        elif action == "version":
            conf["cniVersion"] = draw(st.sampled_from(VERSIONS))
        else:
            conf[key] = draw(WEIRD if action == "weird" else JSONISH)
    if draw(st.booleans()) and isinstance(conf.get("ipam"), dict):
        ipam = dict(conf["ipam"])
        key = draw(st.sampled_from(IPAM_KEYS))
        ipam[key] = draw(st.one_of(JSONISH, WEIRD, st.sampled_from(
            ["10.99.0.0/33", "10.99.0.1/24", "fd00::/127", [[{"subnet": "banana"}]], "/", "relative/dir"])))
        if key == "dataDir" and isinstance(ipam[key], str) and ipam[key].startswith("/"):
            ipam[key] = data_dir + ipam[key]     # absolute data dirs stay inside the test's directory
        conf["ipam"] = ipam
    if draw(st.booleans()):
        conf["runtimeConfig"] = {"portMappings": draw(st.lists(st.fixed_dictionaries(
            {"hostPort": st.one_of(st.integers(-5, 70000), WEIRD), "containerPort": st.integers(-5, 70000),
             "protocol": st.sampled_from(["tcp", "udp", "sctp", "icmp", "TCP", ""])}), max_size=2))}
    raw = json.dumps(conf).encode()
    if draw(st.sampled_from([False] * 9 + [True])):
        raw = raw[:draw(st.integers(0, len(raw)))]            # truncated JSON
    def mostly(sane, wild):       # seven cases in eight keep a field sane, so the plugin is reached
        return draw(st.one_of(*[st.just(sane)] * 7, wild))

    env = {"CNI_COMMAND": mostly("ADD", st.sampled_from(COMMANDS)),
           "CNI_CONTAINERID": mostly("c1", st.one_of(st.sampled_from(["abc-123.x_y", ""]), WEIRD)),
           "CNI_NETNS": mostly(pod, st.sampled_from(["", "/nonexistent/ns", "/proc/self/ns/net", "/etc/hostname"])),
           "CNI_IFNAME": mostly("eth0", st.one_of(st.sampled_from(["net1", "a" * 16, "lo", DECOY]), WEIRD)),
           "CNI_ARGS": mostly("IgnoreUnknown=1;K8S_POD_NAME=x", st.one_of(st.sampled_from(
               ["", "IP=10.99.0.7", "MAC=02:00:00:00:00:01", "FOO=1", "a=b=c", "IP=10.99.0.1"]), WEIRD)),
           "CNI_PATH": "/nonexistent"}
    drop = st.sampled_from([False] * 19 + [True])   # (hypothesis favours the first choice)
    env = {k: v for k, v in env.items() if k == "CNI_COMMAND" or not draw(drop)}
    return raw, env


DECOY = "fzdecoy"          # a link in the pod that pycni did not make (its peer on the node: fzdecoyp)
# codes with which a DEL may still refuse, because the call itself is not a CNI call pycni can act
# on: version (1), no container id (3), undecodable stdin (6), the plugin's own namespace (8)
DEL_MAY_REFUSE = {1, 3, 6, 8}


def decoys(pod: str) -> None:
    """Put the decoy in place (again, if a case took it)."""
    ns = os.path.basename(pod)
    if DECOY in pod_links(pod):
        return
    subprocess.run(["ip", "link", "del", "fzdecoyp"], capture_output=True, timeout=60)
    subprocess.run(["ip", "link", "add", "fzdecoyp", "type", "veth", "peer", "name", DECOY], check=True, timeout=60)
    subprocess.run(["ip", "link", "set", DECOY, "netns", ns], check=True, timeout=60)


def host_veths() -> list[str]:
    return sorted(n for n in os.listdir("/sys/class/net") if n.startswith("veth"))


def reservations_anywhere(top: str) -> list[str]:
    """Address files in every data dir under `top` (cases may name their own data dirs there)."""
    import ipaddress

    out = []
    for dirpath, _, files in os.walk(top):
        for name in files:
            try:
                ipaddress.ip_address(name)
            except ValueError:
                continue
            out.append(os.path.join(dirpath, name))
    return sorted(out)


def firewall_rules() -> list[str]:
    out = []
    for cmd in (["nft", "list", "ruleset"], ["iptables-legacy-save"], ["ip6tables-legacy-save"]):
        try:
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
        except OSError:
            continue
        out += [line.strip() for line in text.splitlines() if "pycni fuzznet/" in line]
    return out


def pod_links(pod: str) -> list[str]:
    text = subprocess.run(["ip", "netns", "exec", os.path.basename(pod), "ip", "-o", "link", "show"],
                          capture_output=True, text=True, timeout=60).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in text.splitlines())


def node_state(data: str, pod: str) -> tuple:
    decoy_peer = os.path.exists("/sys/class/net/fzdecoyp")
    return host_veths(), reservations_anywhere(data), firewall_rules(), pod_links(pod), decoy_peer


BIN = Path(sys.executable).parent


def run_exec(env: dict, raw: bytes) -> tuple[int, str]:
    """The real executable, as a runtime runs it."""
    full = {**env, "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "PYCNI_HELPER": "0",
            "PYCNI_LOG_FILE": os.environ.get("PYCNI_LOG_FILE", ""),
            "PYCNI_HELPER_SOCKET": os.environ["PYCNI_HELPER_SOCKET"]}     # its dir: the attachment locks
    p = subprocess.run([str(BIN / "pycni")], input=raw, env=full, capture_output=True, timeout=120)
    return p.returncode, p.stdout.decode(errors="replace")


def run_here(env: dict, raw: bytes) -> tuple[int, str]:
    out = io.StringIO()
    rc = skel.run(BridgePlugin, env, io.BytesIO(raw), out)
    return rc, out.getvalue()


def reservations(data_dir: str) -> list[str]:
    d = os.path.join(data_dir, "fuzznet")
    return sorted(n for n in os.listdir(d) if n[0].isdigit()) if os.path.isdir(d) else []


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--pod", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--seed", type=int, default=None, help="default: a new random seed (printed)")
    ap.add_argument("--db", default="", help="keep failing examples here (hypothesis example database)")
    ap.add_argument("--exec-every", type=int, default=4, help="every K-th case runs the real executable")
    args = ap.parse_args()
    run_seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    from cni.spec.log import log

    log.stderr = None       # the summary line is the output; details go to the log file
    import ipam.config

    # a case that drops or empties "dataDir" must not write into the machine's /var/lib/cni
    ipam.config.DEFAULT_DATA_DIR = args.data
    counts: Counter = Counter()
    leaks: list[str] = []
    unexpected: list[str] = []
    refused: list[str] = []
    generic: Counter = Counter()
    first_generic: dict[str, str] = {}
    decoys(args.pod)

    @seed(run_seed)
    @settings(max_examples=args.cases, deadline=None, derandomize=False,
              database=DirectoryBasedExampleDatabase(args.db) if args.db else None,
              suppress_health_check=list(HealthCheck))
    @given(cases(args.data, args.pod))
    def one(case):
        raw, env = case
        # (an environment with a NUL byte cannot be exec'ed, by a runtime or by us: those stay here)
        execable = not any("\0" in k + v for k, v in env.items())
        run = run_exec if counts["cases"] % args.exec_every == 0 and execable else run_here
        counts["cases"] += 1
        counts["executable"] += run is run_exec
        before = node_state(args.data, args.pod)
        rc, text = run(env, raw)
        assert "Traceback" not in text
        reply = json.loads(text) if text.strip() else None
        if rc == 0:
            counts["ok"] += 1
            if env.get("CNI_COMMAND") == "ADD":       # undo it, as the runtime would; then nothing is left
                rc2, text2 = run({**env, "CNI_COMMAND": "DEL"}, raw)
                assert rc2 == 0, text2
                after = node_state(args.data, args.pod)
                if after != before:
                    leaks.append(f"ADD+DEL {env} left {after} (before {before})")
            return
        assert isinstance(reply, dict) and isinstance(reply.get("code"), int) and isinstance(reply.get("msg"), str), text
        assert set(reply) <= {"cniVersion", "code", "msg", "details"}, reply
        counts[f"code {reply['code']}"] += 1
        if reply["code"] == 999 and reply["msg"] != "internal error":
            generic[reply["msg"]] += 1          # translated, but without a specific code: worth a look
            first_generic.setdefault(reply["msg"], f"{reply.get('details', '')[:300]!r} "
                                                   f"{env.get('CNI_COMMAND')} stdin={raw[:400]!r}")
        if reply["msg"] == "internal error":      # an exception nobody translated: a bug
            unexpected.append(f"{reply} env={env} stdin={raw[:300]!r}")
        if env.get("CNI_COMMAND") == "ADD":
            after = node_state(args.data, args.pod)
            if after != before:
                leaks.append(f"{reply} {env} left {after} (before {before})")
            # what ADD refused, DEL still finishes; and it never takes a link pycni did not make
            rc3, text3 = run({**env, "CNI_COMMAND": "DEL"}, raw)
            counts["DEL after a refused ADD"] += 1
            if rc3 != 0:
                reply3 = json.loads(text3) if text3.strip() else {}
                missing = reply3.get("msg") == "required env variables missing"   # not a DEL at all
                if reply3.get("code") not in DEL_MAY_REFUSE and not missing:
                    refused.append(f"DEL {reply3} after ADD code {reply['code']}: {env} {raw[:300]!r}")
            if node_state(args.data, args.pod) != before:
                leaks.append(f"DEL after refused ADD {env} changed {before} into {node_state(args.data, args.pod)}")
                decoys(args.pod)

    one()
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()) if k.startswith("code"))
    print(f"fuzz: {counts['cases']} cases (seed {run_seed}, {counts['executable']} through the executable), "
          f"{counts['ok']} results, errors ({errors}), untranslated exceptions = {len(unexpected)}, "
          f"{counts['DEL after a refused ADD']} DELs after a refused ADD, of them refused = {len(refused)}, "
          f"leaks found = {len(leaks)}")
    for msg, n in generic.most_common(10):
        print(f"  CODE 999 x{n}: {msg}; first: {first_generic[msg]}")
    for leak in leaks[:10]:
        print("  LEAK", leak)
    for u in unexpected[:10]:
        print("  UNTRANSLATED", u)
    for r in refused[:10]:
        print("  DEL REFUSED", r)
    return 1 if leaks or unexpected or refused else 0


if __name__ == "__main__":
    sys.exit(main())
