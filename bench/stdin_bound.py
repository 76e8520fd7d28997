#!/usr/bin/env python3
"""What a config far past the 16 MiB stdin bound costs the caller: peak RSS of the plugin process
(from wait4) for a 100 MB config, in process and with a helper serving (issue 28 row 12).

    sudo .venv/bin/python bench/stdin_bound.py [--mb 100] [--runs 3] [--bin-dir DIR]

Runs in a throwaway node namespace (the call is refused with code 5 before it touches anything).
Prints one line per path: the answer's code and the median peak RSS in MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.node_namespace import run_inside  # noqa: E402


def one(exe: Path, stdin_path: Path, env: dict) -> tuple[int | None, float]:
    with open(stdin_path, "rb") as f:
        proc = subprocess.Popen([str(exe)], stdin=f, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    try:
        code = json.loads(out).get("code")
    except ValueError:
        code = None
    return code, usage.ru_maxrss / 1024


def inside(args) -> None:
    exe = Path(args.bin_dir) / "pycni"
    work = Path(tempfile.mkdtemp(prefix="pycni-stdin-bench-"))
    big = work / "config.json"
    with open(big, "w") as f:
        f.write('{"cniVersion": "1.0.0", "name": "big", "type": "pycni", "pad": "')
        chunk = "x" * (1 << 20)
        for _ in range(args.mb):
            f.write(chunk)
        f.write('"}')
    sock = work / "helper.sock"
    base = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    base.update(CNI_COMMAND="ADD", CNI_CONTAINERID="big", CNI_NETNS="/proc/self/ns/net", CNI_IFNAME="eth0",
                CNI_PATH=str(exe.parent), PYCNI_HELPER_SOCKET=str(sock), PYCNI_LOG_FILE=str(work / "log"))
    helper = subprocess.Popen([str(exe), "helper", "--socket", str(sock)], stderr=subprocess.PIPE, text=True)
    try:
        assert "serving on" in helper.stderr.readline()
        for label, extra in (("in process (PYCNI_HELPER=0)", {"PYCNI_HELPER": "0"}), ("with the helper serving", {})):
            results = [one(exe, big, {**base, **extra}) for _ in range(args.runs)]
            codes = sorted({c for c, _ in results}, key=str)
            print(f"{args.mb} MB config, {label}: code {codes}, caller peak RSS "
                  f"{statistics.median(r for _, r in results):.1f} MiB (median of {args.runs})")
    finally:
        helper.terminate()
        helper.wait(10)
        helper.stderr.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bin-dir", default=str(Path(sys.executable).parent))
    ap.add_argument("--inside", action="store_true")
    ap.add_argument("--prefix", default=f"pycnib-stdin-{os.getpid()}")
    args = ap.parse_args()
    if args.inside:
        inside(args)
    else:
        run_inside(__file__, args.prefix, sys.argv[1:])


if __name__ == "__main__":
    main()
