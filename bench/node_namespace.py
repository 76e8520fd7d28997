"""The benchmarks' one way to run inside a throwaway node namespace: create `<prefix>-node`, run
the script again in it (with --inside), and remove every namespace named `<prefix>...` afterwards,
whatever happened (the pod namespaces the script made inside included)."""

from __future__ import annotations

import subprocess
import sys


def run_inside(script: str, prefix: str, args: list[str]) -> None:
    node = f"{prefix}-node"
    try:
        subprocess.run(["ip", "netns", "add", node], check=True)
        subprocess.run(["ip", "netns", "exec", node, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", node, sys.executable, script, "--inside", "--prefix", prefix, *args],
                       check=True)
    finally:
        subprocess.run(["ip", "netns", "del", node], stderr=subprocess.DEVNULL)
        for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith(prefix):
                subprocess.run(["ip", "netns", "del", line.split()[0]], stderr=subprocess.DEVNULL)
