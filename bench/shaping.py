#!/usr/bin/env python3
"""What per-pod traffic shaping (the `bandwidth` capability) adds to an ADD, and the reference's.

    sudo .venv/bin/python bench/shaping.py [--rounds 40] [--helper] [--bin-dir DIR]

In a throwaway node namespace, with compare.py's conflists and drivers: pycni ADD p50 without and
with shaping (ingress and egress: a tbf on the host veth, an ifb with a tbf), alternating, and the
reference chain (bridge + host-local + portmap) without and with the reference `bandwidth` chained
after it, on the same pods. Each ADD is DELeted before the next. Prints one table like compare.py's,
with the difference of the p50s and the median of the rounds' paired differences (the two ADDs of a
round run back to back, so a busy machine's drift cancels out of it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402

SHAPING = {"ingressRate": 100_000_000, "ingressBurst": 4_294_967_295,     # what containerd passes
           "egressRate": 50_000_000, "egressBurst": 4_294_967_295}       # for 100M / 50M annotations


def run_all(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="pycni-shaping-"))
    nets = compare.netlists(work)
    nets["pycni"]["plugins"][0]["capabilities"]["bandwidth"] = True
    nets["reference-bw"] = {**nets["reference"], "plugins": nets["reference"]["plugins"] + [
        {"type": "bandwidth", "capabilities": {"bandwidth": True}}]}
    sock = work / "helper.sock"
    helper = None
    if args.helper:
        helper = subprocess.Popen([str(compare.BIN / "pycni"), "helper", "--socket", str(sock)],
                                  stderr=subprocess.PIPE, text=True)
        helper.stderr.readline()
        nets["pycni"]["_env"] = {"PYCNI_HELPER_SOCKET": str(sock)}
    else:
        nets["pycni"]["_env"] = {"PYCNI_HELPER": "0", "PYCNI_HELPER_SOCKET": str(sock)}
    pods = compare.Pods(args.prefix)
    walls: dict[tuple[str, bool], list[float]] = {}
    try:
        for r in range(args.rounds):
            for name in ("pycni", "reference"):
                for shaped in (False, True) if r % 2 == 0 else (True, False):
                    nl = nets["reference-bw" if name == "reference" and shaped else name]
                    i = r * 4 + (2 if name == "reference" else 0) + shaped
                    cache: dict = {}
                    add = _chain(nl, "ADD", i, pods.path(i), cache, shaped)
                    _chain(nl, "DEL", i, pods.path(i), cache, shaped)
                    walls.setdefault((name, shaped), []).append(add)
    finally:
        pods.remove_all()
        if helper is not None:
            helper.terminate()
            helper.wait()
        shutil.rmtree(work, ignore_errors=True)
    p50 = {k: statistics.median(v) for k, v in walls.items()}
    print()
    print(f"ADD with and without shaping, {args.rounds} each, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
          f"kernel {os.uname().release}, pycni {'through the resident helper' if args.helper else 'one process per call'}, "
          f"executables in {compare.BIN}")
    print("| row | pycni | reference | ratio | |")
    print("|---|---|---|---|---|")
    for label, shaped in (("ADD p50 without shaping", False), ("ADD p50 with shaping (ingress + egress)", True)):
        ours, ref = p50[("pycni", shaped)], p50[("reference", shaped)]
        print(f"| {label} | {ours:.1f} ms | {ref:.1f} ms | {ours / ref:.2f} | |")
    ours = p50[("pycni", True)] - p50[("pycni", False)]
    ref = p50[("reference", True)] - p50[("reference", False)]
    print(f"| what shaping adds to ADD p50 | {ours:+.1f} ms | {ref:+.1f} ms | | target +3 ms |")
    # each round's two ADDs ran back to back: their difference cancels the machine's drift
    ours, ref = (statistics.median(a - b for a, b in zip(walls[(name, True)], walls[(name, False)]))
                 for name in ("pycni", "reference"))
    print(f"| median of each round's difference (with - without) | {ours:+.1f} ms | {ref:+.1f} ms | | target +3 ms |")


def _chain(nl: dict, command: str, i: int, netns: str, cache: dict, shaped: bool) -> float:
    caps = {"portMappings": [{"hostPort": 20000 + i, "containerPort": 80, "protocol": "tcp"}]}
    if shaped:
        caps["bandwidth"] = SHAPING
    plugins = nl["plugins"] if command == "ADD" else list(reversed(nl["plugins"]))
    prev = cache.get(i) if command == "DEL" else None
    t0 = time.perf_counter()
    for plugin in plugins:
        c = compare.exec_plugin(plugin, nl, command, f"s{i}", netns, caps, prev)
        if command == "ADD":
            prev = c.result
    cache[i] = prev
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--helper", action="store_true", help="run pycni through `pycni helper`")
    ap.add_argument("--bin-dir", help="pycni executables to measure (default: this venv's)")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", default=f"pycni-shp-{os.getpid()}")
    args = ap.parse_args()
    if args.bin_dir:
        compare.BIN = Path(args.bin_dir).resolve()
    if args.inside:
        return run_all(args)
    compare.run_inside(__file__, args.prefix, ["--rounds", str(args.rounds)] + (["--helper"] if args.helper else [])
                       + (["--bin-dir", str(compare.BIN)] if args.bin_dir else []))


if __name__ == "__main__":
    main()
