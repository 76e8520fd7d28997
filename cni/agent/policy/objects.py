"""Pods, Namespaces and NetworkPolicies as the Kubernetes API serves them (JSON), parsed into
frozen values with the API's defaulting rules applied. Pure: no I/O, no client library.

Defaults that matter (networking/v1):
- `policyTypes` absent: Ingress, plus Egress when the policy has a non-empty `egress` list.
- a rule's `from`/`to` absent or empty: every peer; `ports` absent or empty: every port and protocol.
- a port's `protocol` absent: TCP; `port` absent: every port of that protocol; `endPort` only with
  a numeric `port`.
- a peer with `podSelector` only: pods of the policy's namespace; `namespaceSelector` only: every
  pod of the matching namespaces; both: the matching pods of the matching namespaces (AND).
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass
from typing import Any, Mapping

from cni.spec.result import IPAddress, IPNetwork

PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
NAME_LABEL = "kubernetes.io/metadata.name"     # the API server sets it on every namespace


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class Selector:
    """A label selector: every term must hold (an empty selector selects everything)."""
    labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()   # (key, operator, values)

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.labels):
            return False
        for key, op, values in self.expressions:
            present = key in labels
            if op == "In" and not (present and labels[key] in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True


@dataclass(frozen=True)
class Port:
    protocol: str                   # tcp, udp, sctp
    port: int | str | None = None   # a number, a container port's name, or None: every port
    end_port: int | None = None


@dataclass(frozen=True)
class Peer:
    pods: Selector | None = None
    namespaces: Selector | None = None
    block: tuple[IPNetwork, ...] | None = None    # an ipBlock: its cidr without its excepts


@dataclass(frozen=True)
class Rule:
    peers: tuple[Peer, ...] | None = None    # None: every peer
    ports: tuple[Port, ...] | None = None    # None: every port and protocol


@dataclass(frozen=True)
class Policy:
    namespace: str
    name: str
    selector: Selector
    ingress: tuple[Rule, ...] | None     # None: the policy does not isolate ingress
    egress: tuple[Rule, ...] | None


@dataclass(frozen=True, slots=True)
class Pod:
    """What the agent keeps of a Pod (30,000 of them at cluster scale): repeated strings
    (namespaces, node names, label keys and values) are interned, so each is held once."""
    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...]
    node: str
    ips: tuple[IPAddress, ...]
    ports: tuple[tuple[str, str, int], ...] = ()    # named container ports: (name, protocol, number)

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def _meta(obj: Mapping[str, Any], kind: str) -> tuple[Mapping[str, Any], str]:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise PolicyError(f"a {kind} without metadata.name")
    return meta, meta["name"]


_SHARED: dict = {}        # one copy of each label set and port list many pods have alike


def _shared(value):
    """`value`, or the equal one already held (replicas of one Deployment share their labels)."""
    if len(_SHARED) > 200_000:     # a bound: label sets unique per pod would grow it forever
        _SHARED.clear()
    return _SHARED.setdefault(value, value)


def _labels(meta: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        raise PolicyError(f"{meta.get('name')}: labels must be an object")
    return _shared(tuple(sorted((sys.intern(str(k)), sys.intern(str(v))) for k, v in labels.items())))


def parse_selector(obj: Any, where: str) -> Selector:
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise PolicyError(f"{where}: a label selector must be an object")
    labels = obj.get("matchLabels") or {}
    exprs = []
    for e in obj.get("matchExpressions") or ():
        op = e.get("operator") if isinstance(e, dict) else None
        if op not in ("In", "NotIn", "Exists", "DoesNotExist") or not isinstance(e.get("key"), str):
            raise PolicyError(f"{where}: unsupported selector expression {e!r}")
        exprs.append((e["key"], op, tuple(str(v) for v in e.get("values") or ())))
    return Selector(tuple(sorted((str(k), str(v)) for k, v in labels.items())), tuple(exprs))


def _block(obj: Mapping[str, Any], where: str) -> tuple[IPNetwork, ...]:
    try:
        cidr = ipaddress.ip_network(obj["cidr"], strict=False)
        nets = [cidr]
        for text in obj.get("except") or ():
            ex = ipaddress.ip_network(text, strict=False)
            if ex.version != cidr.version or not ex.subnet_of(cidr):
                raise PolicyError(f"{where}: except {text} is not inside {cidr}")
            nets = [part for n in nets
                    for part in ((n,) if not ex.overlaps(n) else
                                 () if n.subnet_of(ex) else n.address_exclude(ex))]
        return tuple(ipaddress.collapse_addresses(nets))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, PolicyError):
            raise
        raise PolicyError(f"{where}: invalid ipBlock {dict(obj)!r}: {e}") from None


def _peer(obj: Any, where: str) -> Peer | None:
    if not isinstance(obj, dict):
        raise PolicyError(f"{where}: a peer must be an object")
    if obj.get("ipBlock") is not None:
        return Peer(block=_block(obj["ipBlock"], where))
    pods, nss = obj.get("podSelector"), obj.get("namespaceSelector")
    if pods is None and nss is None:
        return None          # the API refuses such a peer; it selects nothing
    return Peer(pods=parse_selector(pods, where) if pods is not None else None,
                namespaces=parse_selector(nss, where) if nss is not None else None)


def _port(obj: Any, where: str) -> Port:
    if not isinstance(obj, dict):
        raise PolicyError(f"{where}: a port must be an object")
    proto = PROTOCOLS.get(obj.get("protocol") or "TCP")
    if proto is None:
        raise PolicyError(f"{where}: unknown protocol {obj.get('protocol')!r}")
    port, end = obj.get("port"), obj.get("endPort")
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if isinstance(port, bool) or not (port is None or isinstance(port, (int, str))) \
            or (isinstance(port, int) and not 0 < port < 65536):
        raise PolicyError(f"{where}: invalid port {port!r}")
    if end is not None:
        if not isinstance(port, int) or isinstance(end, bool) or not isinstance(end, int) \
                or not port <= end < 65536:
            raise PolicyError(f"{where}: invalid endPort {end!r} for port {port!r}")
    return Port(proto, port, end)


def _rules(items: Any, peers_key: str, where: str) -> tuple[Rule, ...]:
    out = []
    for i, r in enumerate(items or ()):
        if not isinstance(r, dict):
            raise PolicyError(f"{where}[{i}]: a rule must be an object")
        raw_peers, raw_ports = r.get(peers_key) or [], r.get("ports") or []
        peers = tuple(p for p in (_peer(x, f"{where}[{i}].{peers_key}") for x in raw_peers) if p is not None)
        ports = tuple(_port(x, f"{where}[{i}].ports") for x in raw_ports)
        out.append(Rule(peers if raw_peers else None, ports if raw_ports else None))
    return tuple(out)


def parse_policy(obj: Mapping[str, Any]) -> Policy:
    meta, name = _meta(obj, "NetworkPolicy")
    ns = meta.get("namespace") or "default"
    where = f"networkpolicy {ns}/{name}"
    spec = obj.get("spec") or {}
    if not isinstance(spec, dict):
        raise PolicyError(f"{where}: spec must be an object")
    types = spec.get("policyTypes") or []
    if not types:
        types = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
    if any(t not in ("Ingress", "Egress") for t in types):
        raise PolicyError(f"{where}: unknown policyTypes {types!r}")
    return Policy(
        ns, name, parse_selector(spec.get("podSelector"), f"{where}.podSelector"),
        _rules(spec.get("ingress"), "from", f"{where}.ingress") if "Ingress" in types else None,
        _rules(spec.get("egress"), "to", f"{where}.egress") if "Egress" in types else None)


def parse_pod(obj: Mapping[str, Any]) -> Pod | None:
    """A pod that takes part in pod networking, or None: host-network pods (their address is the
    node's) and finished pods (their address may already be another pod's) are left out."""
    meta, name = _meta(obj, "Pod")
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if spec.get("hostNetwork") or status.get("phase") in ("Succeeded", "Failed"):
        return None
    texts = [p.get("ip") for p in status.get("podIPs") or () if isinstance(p, dict)]
    if not texts and status.get("podIP"):
        texts = [status["podIP"]]
    try:
        ips = tuple(ipaddress.ip_address(t) for t in texts if t)
    except ValueError as e:
        raise PolicyError(f"pod {meta.get('namespace')}/{name}: {e}") from None
    ports = []
    for c in list(spec.get("containers") or ()) + list(spec.get("initContainers") or ()):
        for p in (c or {}).get("ports") or ():
            if isinstance(p, dict) and p.get("name") and isinstance(p.get("containerPort"), int):
                ports.append((sys.intern(p["name"]), PROTOCOLS.get(p.get("protocol") or "TCP", "tcp"), p["containerPort"]))
    return Pod(sys.intern(meta.get("namespace") or "default"), name, _labels(meta),
               sys.intern(spec.get("nodeName") or ""), ips, _shared(tuple(ports)))


def parse_namespace(obj: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    meta, name = _meta(obj, "Namespace")
    labels = dict(_labels(meta))
    labels.setdefault(NAME_LABEL, name)
    return name, labels
