#!/usr/bin/env python3
"""How fast a pycni process starts: VERSION, median of N runs, next to a bare interpreter and the
reference Go plugin.

    .venv/bin/python bench/startup.py [--bin-dir BIN] [--runs 100] [--rounds 3]

BIN is an installed bin dir (`pycni install`: the names run the launcher on the build's own
interpreter); dist/pycni/pycni (PyInstaller's bootloader) is measured beside it when present.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STDIN = b'{"cniVersion": "1.0.0"}'


def median_ms(cmd: list[str], env: dict | None, runs: int) -> float:
    took = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, input=STDIN, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        took.append(time.perf_counter() - t0)
    return statistics.median(took) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", help="an installed bin dir (default: none, only the others)")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    version = {"CNI_COMMAND": "VERSION"}
    bare = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable  # not a pyenv shim
    subjects = [(f"{bare} -I -S -c pass", [bare, "-I", "-S", "-c", "pass"], None)]
    if args.bin_dir:
        subjects.append(("installed pycni (launcher)", [str(Path(args.bin_dir) / "pycni")], version))
    if (ROOT / "dist" / "pycni" / "pycni").exists():
        subjects.append(("dist/pycni/pycni (bootloader)", [str(ROOT / "dist" / "pycni" / "pycni")], version))
    if Path("/usr/lib/cni/bridge").exists():
        subjects.append(("Go bridge", ["/usr/lib/cni/bridge"], version))
    for _ in range(args.rounds):
        results = [(label, median_ms(cmd, env, args.runs)) for label, cmd, env in subjects]
        bare = results[0][1]
        print(" | ".join(f"{label} {ms:.1f} ms" + (f" ({ms / bare:.2f}x)" if i else "")
                         for i, (label, ms) in enumerate(results)), flush=True)


if __name__ == "__main__":
    main()
