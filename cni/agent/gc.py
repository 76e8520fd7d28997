"""CNI GC run by the agent: containerd and CRI-O do not call GC (yet), so whatever a crash leaves
(a reservation, a veth, firewall elements, a policy record of an attachment whose DEL never came)
would stay forever. At start and every `--gc-every` seconds the agent runs GC on its node's
conflist itself, as a runtime would, with the valid attachments taken from the runtime: the pod
sandboxes its CRI socket lists (ListPodSandbox, cni/agent/cri), asked by a short-lived process of
the agent's own build (`pycni agent --cri-list SOCKET`), so that grpc and the CRI stubs (+17 MB
resident) never load into the agent that stays.

Whatever is in doubt is kept:
  - the runtime does not answer (stopped, restarting, another socket): no GC this round at all;
  - an attachment whose reservation is younger than `--gc-grace` (a sandbox whose ADD returned
    but that the runtime lists only once it is fully created; an ADD of a pod just starting);
  - an ADD (or DEL) in flight: for the whole round the agent holds every stripe of the plugin's
    attachment lock (cni/runtime/attachment_lock.py), so no call runs between the moment it
    reads what exists and the GC; a call that holds a stripe longer than LOCK_WAIT seconds makes
    the round give up (calls of other pods wait at most that long).

A round: ask the runtime (nothing is touched when it does not answer), take the locks, read the
attachments the node holds (IPAM reservations, the veths' aliases), decide (`decide`, pure), run
GC (cni.tools.driver, the installed plugin), count what went (addresses, firewall rules,
interfaces) into the metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import subprocess
import sys
import threading
import time
from typing import Callable, Iterable, Iterator

from cni.firewall.attachment import network_hash
from cni.linux import flock
from cni.linux.children import tied_to_me
from cni.runtime.attachment_lock import STRIPES
from cni.runtime.client import DEFAULT_SOCKET
from cni.spec.errors import CNIError
from cni.spec.log import log
from cni.tools import inspect
from cni.tools.driver import Driver, load_conflist
from ipam.store import DiskStore

CRI_SOCKETS = ("/run/containerd/containerd.sock", "/var/run/crio/crio.sock")   # as --cri-socket says
CRI_WAIT = 30.0     # the child that asks the runtime (its own gRPC deadline is 10 s)
LOCK_WAIT = 10.0
DEFAULT_IFNAME = "eth0"     # what kubelet's runtimes name a pod's interface


@dataclasses.dataclass(frozen=True)
class Seen:
    """An attachment the node holds something of."""
    container_id: str
    ifname: str
    since: float | None = None      # its reservation's time (None: no reservation, only a veth)


@dataclasses.dataclass(frozen=True)
class Decision:
    valid: tuple[tuple[str, str], ...]      # what GC is told to keep
    stale: tuple[tuple[str, str], ...]      # what it will reclaim (for the log)
    young: tuple[tuple[str, str], ...]      # kept for their age only


def decide(seen: Iterable[Seen], live: Iterable[str], now: float, grace: float) -> Decision:
    """Pure. Valid: every interface of a live sandbox (the ones seen, and eth0 for any it has not
    been seen with yet) and every attachment whose reservation is younger than `grace`."""
    seen = list(seen)
    live = set(live)
    ifnames = {s.ifname for s in seen if s.ifname} | {DEFAULT_IFNAME}
    valid = {(cid, i) for cid in live for i in ifnames}
    young, stale = set(), set()
    for s in seen:
        key = (s.container_id, s.ifname or DEFAULT_IFNAME)      # an id-only file: its container's
        if s.container_id in live:
            continue
        if s.since is not None and now - s.since < grace:
            young.add(key)
        else:
            stale.add(key)
    valid |= young
    return Decision(tuple(sorted(valid)), tuple(sorted(stale - valid)), tuple(sorted(young)))


@contextlib.contextmanager
def every_attachment_locked(calls_dir: str, wait: float | None = None) -> Iterator[bool]:
    """Hold all STRIPES lock files of the plugin's attachment lock: yields False (holding none)
    when one stays taken past `wait` seconds (default LOCK_WAIT: a call in flight that long is in
    doubt)."""
    wait = LOCK_WAIT if wait is None else wait
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = STRIPES + 256
    if soft < want and (hard == resource.RLIM_INFINITY or hard >= want):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    os.makedirs(calls_dir, mode=0o700, exist_ok=True)
    fds: list[int] = []
    deadline = time.monotonic() + wait
    try:
        ok = True
        for key in range(STRIPES):
            fd = os.open(os.path.join(calls_dir, f"{key:03x}"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fds.append(fd)
            if not flock.acquire(fd, max(0.0, deadline - time.monotonic())):
                ok = False
                break
        if not ok:
            for fd in fds:
                os.close(fd)
            fds = []
        yield ok
    finally:
        for fd in fds:
            os.close(fd)


@dataclasses.dataclass(frozen=True)
class Network:
    conflist: dict
    name: str
    data_dir: str


def network_of(conflist_path: str) -> Network:
    conf = load_conflist(conflist_path)
    bridge = next((p for p in conf["plugins"] if isinstance(p, dict) and p.get("type") == "pycni"), None)
    if bridge is None:
        raise CNIError("no pycni plugin in the conflist", conflist_path)
    data_dir = (bridge.get("ipam") or {}).get("dataDir") or "/var/lib/cni/networks"
    return Network(conf, str(conf["name"]), data_dir)


def seen(net: Network) -> list[Seen]:
    """What the node holds of each attachment of `net`: reservations (with their time) and veths
    (their plain aliases; a hashed alias is joined by GC's own hash comparison)."""
    store = os.path.join(net.data_dir, net.name)
    out = []
    for ip, (cid, ifname) in DiskStore(store).holders().items():
        try:
            since = os.stat(os.path.join(store, str(ip))).st_mtime
        except FileNotFoundError:
            continue
        out.append(Seen(cid, ifname, since))
    out += [Seen(link["container_id"], link["ifname"]) for link in inspect.interfaces()
            if link["network"] == net.name]
    return out


@dataclasses.dataclass(frozen=True)
class Footprint:
    """What GC can reclaim, counted before and after a round."""
    addresses: frozenset
    rules: frozenset
    interfaces: frozenset


def footprint(net: Network) -> Footprint:
    tag = network_hash(net.name)
    rules = {("nft",) + e[:3] for e in inspect.nft_elements() if e[3].startswith(tag)}
    rules |= {("iptables", c) for c in inspect.iptables_chains()}
    return Footprint(frozenset(DiskStore(os.path.join(net.data_dir, net.name)).holders()), frozenset(rules),
                     frozenset(link["hash"] for link in inspect.interfaces()
                               if link["network"] == net.name or link["network_hash"] == tag))


@dataclasses.dataclass
class Round:
    outcome: str                    # "done", or why nothing was released
    decision: Decision | None = None
    reclaimed: dict = dataclasses.field(default_factory=dict)   # kind -> count

    def summary(self) -> str:
        if self.decision is None:
            return f"agent: gc: {self.outcome}: nothing released"
        r = self.reclaimed
        return (f"agent: gc: {len(self.decision.stale)} stale attachments, {len(self.decision.young)} kept "
                f"for their age; reclaimed {r.get('addresses', 0)} addresses, {r.get('rules', 0)} firewall "
                f"rules, {r.get('interfaces', 0)} interfaces")


def run_once(conflist_path: str, bin_dir: str, list_sandboxes: Callable[[], list], calls_dir: str,
             grace: float, clock: Callable[[], float] = time.time) -> Round:
    """One round (see the module's docstring). `list_sandboxes()`: the runtime's sandbox ids,
    raising when it cannot tell."""
    if not os.path.exists(conflist_path):
        return Round(f"no conflist at {conflist_path} yet")
    net = network_of(conflist_path)
    try:
        # first, before anything is locked or created: a sandbox made after this answer has a
        # reservation younger than the grace period (or an ADD in flight, which the locks wait for)
        live = list_sandboxes()
    except Exception as e:          # whatever the runtime says or not: in doubt
        return Round(f"the runtime cannot tell its pods ({type(e).__name__}: {e})")
    with every_attachment_locked(calls_dir) as locked:
        if not locked:
            return Round(f"a call held an attachment lock in {calls_dir} past {LOCK_WAIT:.0f} s")
        decision = decide(seen(net), live, clock(), grace)
        before = footprint(net)
        netlist = {**net.conflist, "cniVersion": "1.1.0"}      # GC is 1.1.0's; the plugins are ours
        Driver(netlist, [bin_dir], env={**os.environ, "PYCNI_HELPER_SOCKET": os.path.join(
            os.path.dirname(calls_dir), os.path.basename(DEFAULT_SOCKET))}).gc(list(decision.valid))
        after = footprint(net)
    reclaimed = {kind: len(getattr(before, kind) - getattr(after, kind)) for kind in ("addresses", "rules", "interfaces")}
    return Round("done", decision, reclaimed)


def agent_command() -> tuple[list[str], dict]:
    """How to start this agent's own build again, and its environment: the frozen `pycni-agent`
    is its own executable (its entry point prefixes the verb), started as a new instance (else
    its bootloader takes our restarted state for its own and skips the bundle's library path:
    seen in the DaemonSet image as "libffi.so.8: cannot open shared object file"); a source
    install runs the package."""
    if getattr(sys, "frozen", False):
        return [sys.executable], {**os.environ, "PYINSTALLER_RESET_ENVIRONMENT": "1"}
    return [sys.executable, "-m", "cni", "agent"], dict(os.environ)


def sandboxes_of(socket: str, wait: float = CRI_WAIT) -> list[str]:
    """The runtime's pod sandbox ids, from a child that asks it (cri_list) and exits; raises
    RuntimeError when the runtime (or the child) cannot tell."""
    try:
        command, env = agent_command()
        done = subprocess.run([*command, "--cri-list", socket], stdin=subprocess.DEVNULL, env=env,
                              capture_output=True, text=True, timeout=wait, preexec_fn=tied_to_me())
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{socket}: no list of pod sandboxes within {wait:.0f} s") from None
    if done.returncode != 0:        # its last word (a frozen build's bootloader adds a line of its own)
        said = [line for line in done.stderr.strip().splitlines() if not line.startswith("[PYI-")]
        raise RuntimeError(said[-1] if said else f"exit {done.returncode}")
    try:
        ids = json.loads(done.stdout)
    except ValueError:
        ids = None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise RuntimeError(f"the CRI list came back malformed: {done.stdout[:200]!r}")
    return ids


def cri_list(socket: str) -> int:
    """`pycni agent --cri-list SOCKET`: print the runtime's sandbox ids as a JSON list (exit 0);
    exit 3 when the runtime does not answer, 4 without a CRI client."""
    try:
        # lazy: grpc and the generated CRI stubs load only in this short-lived process
        from cni.agent.cri import client
    except ImportError as e:
        print(f"no CRI client ({e}): needs grpcio and the stubs build/cri_stubs.py makes", file=sys.stderr)
        return 4
    try:
        ids = [s.id for s in client.list_sandboxes(socket)]
    except client.Unreachable as e:
        print(f"Unreachable: {e}", file=sys.stderr)
        return 3
    print(json.dumps(ids))
    return 0


class Collector:
    """The agent's GC thread: a round at start, then every `every` seconds."""

    def __init__(self, conflist_path: str, bin_dir: str, cri_socket: str | None, helper_socket: str | None,
                 every: float, grace: float, metrics=None):
        self.conflist_path, self.bin_dir, self.every, self.grace = conflist_path, bin_dir, every, grace
        self.cri_socket = cri_socket
        self.calls_dir = os.path.join(os.path.dirname(helper_socket or DEFAULT_SOCKET), "calls")
        self.metrics = metrics
        self.stopped = threading.Event()

    def socket(self) -> str:
        if self.cri_socket:
            return self.cri_socket
        return next((s for s in CRI_SOCKETS if os.path.exists(s)), CRI_SOCKETS[0])

    def sandboxes(self) -> list[str]:
        return sandboxes_of(self.socket())

    def round(self) -> Round:
        try:
            done = run_once(self.conflist_path, self.bin_dir, self.sandboxes, self.calls_dir, self.grace)
        except CNIError as e:
            done = Round(f"GC failed: {e.msg}: {e.details}")
        except Exception as e:          # the next round tries again
            done = Round(f"GC failed: {type(e).__name__}: {e}")
        m = self.metrics
        if m is not None:
            m.gc_rounds.labels("done" if done.decision is not None else "skipped").inc()
            for kind, n in done.reclaimed.items():
                m.gc_reclaimed.labels(kind).inc(n)
        log.info(done.summary())
        print(done.summary(), flush=True)
        return done

    def run(self) -> None:
        # the first round once the agent wrote its conflist (with the API: after the first list)
        while not os.path.exists(self.conflist_path) and not self.stopped.wait(1.0):
            pass
        while not self.stopped.is_set():
            self.round()
            self.stopped.wait(self.every)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="gc", daemon=True)
        thread.start()
        return thread


def start(args, conf_dir: str, metrics=None) -> Collector | None:
    """The GC thread for the agent's arguments, or None with --gc-every 0."""
    if not args.gc_every:
        return None
    collector = Collector(os.path.join(conf_dir, args.conf_name), args.bin_dir, args.cri_socket, args.helper,
                          args.gc_every, args.gc_grace, metrics)
    collector.start()
    return collector
