"""The agent's GC decisions (cni/agent/gc.py): what the runtime lists is kept, what is in doubt is
kept, only the rest is reclaimed. The round against containerd's CRI: tests/e2e/test_gc.py."""

from __future__ import annotations

import fcntl
import os

from cni.agent import gc

NOW = 1_000_000.0


def test_decide_keeps_live_sandboxes_and_young_reservations_only():
    seen = [gc.Seen("live", "eth0", NOW - 9999), gc.Seen("live", "net1", NOW - 9999),
            gc.Seen("old", "eth0", NOW - 9999), gc.Seen("veth-only", "eth0"),
            gc.Seen("young", "eth0", NOW - 5), gc.Seen("id-only", "", NOW - 9999)]
    d = gc.decide(seen, ["live", "just-started"], NOW, grace=120)
    assert set(d.valid) == {("live", "eth0"), ("live", "net1"), ("just-started", "eth0"),
                            ("just-started", "net1"), ("young", "eth0")}
    assert d.stale == (("id-only", "eth0"), ("old", "eth0"), ("veth-only", "eth0"))
    assert d.young == (("young", "eth0"),)


def test_a_call_holding_an_attachment_lock_makes_the_round_keep_everything(tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    fd = os.open(calls / "2a7", os.O_RDWR | os.O_CREAT)       # an ADD in flight on one stripe
    fcntl.flock(fd, fcntl.LOCK_EX)
    conflist = tmp_path / "10-pycni.conflist"
    conflist.write_text('{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "pycni", "bridge": "b", '
                        f'"ipam": {{"type": "pycni-ipam", "dataDir": "{tmp_path}/ipam", '
                        '"ranges": [[{"subnet": "10.1.0.0/24"}]]}}]}')
    asked = []
    try:
        gc.LOCK_WAIT, wait = 0.3, gc.LOCK_WAIT
        try:
            done = gc.run_once(str(conflist), str(tmp_path), lambda: asked.append(1) or [], str(calls), 60)
        finally:
            gc.LOCK_WAIT = wait
    finally:
        os.close(fd)
    assert done.decision is None and "held an attachment lock" in done.outcome and asked == [1]
    # every stripe was released again: a call can take any of them now
    assert gc.run_once(str(conflist), str(tmp_path), lambda: 1 / 0, str(tmp_path / "untouched"), 60).decision is None
    assert not (tmp_path / "untouched").exists()         # a runtime that cannot tell: nothing made, nothing locked
    for name in sorted(os.listdir(calls)):
        fd = os.open(calls / name, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)


ASK = r"""
import sys
from cni.agent import gc
try:
    print(gc.sandboxes_of(sys.argv[1]))
except RuntimeError as e:
    print("RuntimeError:", e)
print("grpc loaded:", "grpc" in sys.modules)
"""


def test_the_agent_asks_the_runtime_through_a_child_and_never_loads_grpc_itself(tmp_path):
    """A fake CRI runtime on a unix socket: the GC's list of sandboxes has both of its sandboxes
    (ready or not), and the agent's own process never imported grpc (+17 MB that would stay)."""
    import subprocess
    import sys
    from pathlib import Path

    sock = tmp_path / "cri.sock"
    runtime = subprocess.Popen([sys.executable, str(Path(__file__).parents[1] / "fake_cri.py"), str(sock),
                                "sb-1", "sb-2"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    try:
        assert runtime.stdout.readline().strip() == "ready"
        asked = subprocess.run([sys.executable, "-c", ASK, str(sock)], capture_output=True, text=True, timeout=60)
        assert asked.stdout.splitlines() == ["['sb-1', 'sb-2']", "grpc loaded: False"], asked.stderr
    finally:
        runtime.stdin.close()
        runtime.wait(10)
    # no runtime on the socket now: the round learns that the runtime cannot tell (nothing is released)
    gone = subprocess.run([sys.executable, "-c", ASK, str(sock)], capture_output=True, text=True, timeout=60)
    assert gone.stdout.splitlines()[0].startswith("RuntimeError: Unreachable: "), gone.stdout + gone.stderr
    assert gone.stdout.splitlines()[1] == "grpc loaded: False"
