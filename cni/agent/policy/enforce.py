"""The agent's I/O for NetworkPolicy: one `sync` = under the state directory's lock, read what
the plugin recorded (the addresses of this node's pods, known at ADD before the API has them),
compile, replace the table in one nft transaction, then rewrite what the plugin reads at ADD
(pods/, open-namespaces/) and the element lists of the records. See cni/firewall/policy.py for
the layout.

Which addresses a pod has: for this node's pods the plugin's records are the truth, not the API.
A Pod object keeps `status.podIPs` until it is removed, long after its DEL released the address;
trusting it would hand a former pod's verdicts to the next pod given that address. So an API
address enters a set only when no record holds it for another pod, and, when it is one of this
node's (its pod is scheduled here, or it is in this node's pod ranges), only while the node's
IPAM holds it (a pod attached before policies were on has no record, but its reservation).

`preconditions()` says why this node cannot enforce (the agent then enforces nothing: never half).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import time
from typing import Iterable, Mapping

from cni.agent.policy.compile import Compiled, compile_policies, render
from cni.agent.policy.objects import Pod, Policy
from cni.firewall import nft
from cni.firewall.policy import PENDING, TABLE, Locked, elements_of, read_json, read_records, write_json
from cni.firewall.rules import IPT, resolve
from cni.spec.errors import CNIError
from cni.spec.log import log
from ipam.store import DiskStore

BRIDGE_NF = ("/proc/sys/net/bridge/bridge-nf-call-iptables", "/proc/sys/net/bridge/bridge-nf-call-ip6tables")


def preconditions() -> str | None:
    """None when policies can be enforced on this node, else the reason they cannot."""
    backend, why = resolve("auto")
    if backend == IPT:
        return f"this node's firewall is legacy iptables ({why}); pycni enforces NetworkPolicy with nftables only"
    for path in BRIDGE_NF:    # bridged pod-to-pod packets must pass the inet forward hook
        try:
            with open(path) as f:
                if f.read().strip() == "1":
                    continue
            with open(path, "w") as f:      # /proc/sys may be read-only in a container: then say so
                f.write("1")
        except OSError as e:
            return f"bridged traffic cannot be filtered: {path}: {e.strerror} (needs br_netfilter, set to 1)"
    return None


def _write_if_changed(path: str, value) -> bool:
    if read_json(path) == value:
        return False
    write_json(path, value)
    return True


def _sync_dir(base: str, want: Mapping[str, object]) -> None:
    """Make `base/<ns>/<name>` (pods) hold exactly `want` ("ns/name": JSON value)."""
    for key, value in want.items():
        _write_if_changed(os.path.join(base, key), value)
    if not os.path.isdir(base):
        return
    for ns in os.listdir(base):
        d = os.path.join(base, ns)
        for name in os.listdir(d):
            if f"{ns}/{name}" not in want:
                os.unlink(os.path.join(d, name))
        if not os.listdir(d):
            os.rmdir(d)


def _sync_markers(base: str, names: Iterable[str]) -> None:
    names = set(names)
    os.makedirs(base, mode=0o700, exist_ok=True)
    for n in names - set(os.listdir(base)):
        open(os.path.join(base, n), "wb").close()
    for n in set(os.listdir(base)) - names:
        os.unlink(os.path.join(base, n))


@dataclasses.dataclass(frozen=True)
class Local:
    """What this node knows of its own addresses beside the records."""
    nets: tuple = ()                      # this node's pod ranges
    held: frozenset | None = None         # the addresses its IPAM holds now (None: not known)


def local_view(conflist: Mapping | None, data_dir: str, network: str) -> Local:
    """This node's pod ranges (from its conflist) and what its IPAM store holds now."""
    ranges = []
    for plugin in (conflist or {}).get("plugins") or ():
        for rs in ((plugin.get("ipam") or {}).get("ranges") or ()) if plugin.get("type") == "pycni" else ():
            ranges += [ipaddress.ip_network(r["subnet"]) for r in rs]
    try:
        held = frozenset(DiskStore(os.path.join(data_dir, network)).holders())
    except CNIError as e:        # the store busy or unreadable: no local address is trusted
        log.warning(f"agent: network policy: IPAM store of {network}: {e}")
        held = None
    return Local(tuple(ranges), held)


def addresses(pods: list[Pod], recorded: Mapping[tuple[str, str], list], node: str,
              mine: Local = Local()) -> list[Pod]:
    """The pods with the addresses they hold now (see the module's docstring). Pure."""
    holder = {ip: key for key, ips in recorded.items() for ip in ips}

    def trusted(pod: Pod, ip) -> bool:
        if ip in holder:
            return False                  # recorded for another pod (its own records came first)
        if pod.node == node or any(ip in net for net in mine.nets):
            return mine.held is not None and ip in mine.held
        return True

    return [dataclasses.replace(p, ips=tuple(recorded[p.key]), node=node) if p.key in recorded
            else p if not p.ips else dataclasses.replace(p, ips=tuple(ip for ip in p.ips if trusted(p, ip)))
            for p in pods]


@dataclasses.dataclass
class Outcome:
    compiled: Compiled
    pending: int
    seconds: float

    def summary(self) -> str:
        c = self.compiled
        return (f"agent: network policy: {c.policies} policies on this node, {c.rule_count()} rules, "
                f"{c.element_count()} elements, {self.pending} pending, {self.seconds * 1000:.0f} ms")


def sync(state_dir: str, node: str, policies: list[Policy], pods: list[Pod],
         namespaces: Mapping[str, Mapping[str, str]], mine: Local = Local()) -> Outcome:
    started = time.monotonic()
    with Locked(state_dir):
        records = read_records(state_dir)
        recorded: dict[tuple[str, str], list] = {}
        for rec in records.values():
            ips = recorded.setdefault(tuple(rec["pod"]), [])
            ips += [ipaddress.ip_address(a) for a in rec.get("ips") or () if a not in map(str, ips)]
        known = {p.key: p for p in pods}
        merged = addresses(pods, recorded, node, mine)
        # a pod the API has not told us of is denied until classified, but only while some
        # policy exists: without one nothing is isolated (and Pods are not even watched)
        unknown = {k for k in recorded if k not in known} if policies else set()
        pending: dict[int, list[str]] = {4: [], 6: []}
        for k in unknown:
            for ip in recorded[k]:
                pending[ip.version].append(str(ip))
        compiled = compile_policies(policies, merged, namespaces, node)
        nft.transaction(render(compiled, TABLE, pending))
        open(os.path.join(state_dir, "enforcing"), "wb").close()

        local = [p for p in merged if p.node == node]
        _sync_dir(os.path.join(state_dir, "pods"),
                  {f"{p.namespace}/{p.name}": [list(m) for m in compiled.members.get(p.key, [])] for p in local})
        _sync_markers(os.path.join(state_dir, "open-namespaces"),
                      set(namespaces) - compiled.isolating_namespaces)
        for name, rec in records.items():
            key = tuple(rec["pod"])
            members = PENDING if key in unknown else compiled.members.get(key, [])
            elements = elements_of(members, [ipaddress.ip_address(a) for a in rec.get("ips") or ()])
            if rec.get("elements") != elements:
                write_json(os.path.join(state_dir, "attachments", name), {**rec, "elements": elements})
    out = Outcome(compiled, sum(map(len, pending.values())), time.monotonic() - started)
    log.info(out.summary())
    return out


def table_present() -> bool:
    """Is the policy table in the kernel? (A cheap look: the table names only.)"""
    out = nft.transaction("list tables\n", check=False)
    return out.returncode == 0 and f"table {TABLE}\n" in out.stdout.decode(errors="replace") + "\n"


def disable(state_dir: str) -> None:
    """Policies off (--no-network-policy after they were on): remove the table and the marker, so
    the plugin stops adding elements and nothing is filtered."""
    with Locked(state_dir):
        try:
            os.unlink(os.path.join(state_dir, "enforcing"))
        except FileNotFoundError:
            pass
        nft.transaction(f"add table {TABLE}\ndelete table {TABLE}\n")
