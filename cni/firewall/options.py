"""Port mappings and the options of the reference `portmap` plugin, parsed once.

Rule: what reaches the firewall backends is validated here: ports in 1..65535, protocol one of
tcp/udp/sctp (lower-cased, as containerd sends it), hostIP an address or empty.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Mapping

from cni.record import record
from cni.spec.errors import InvalidConfig
from cni.spec.fields import flag, go_keys, integer
from cni.spec.result import IPAddress

PROTOCOLS = ("tcp", "udp", "sctp")
BACKENDS = ("auto", "nftables", "iptables")


@record
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: IPAddress | None = None      # None: every address of the node

    def applies_to(self, family: int) -> bool:
        return self.host_ip is None or self.host_ip.version == family


@record
class FirewallOptions:
    snat: bool = True            # masquerade hairpin and localhost -> hostPort traffic
    masq_all: bool = False       # masquerade every DNATed connection (ipvlan/macvlan setups)
    mark_masq_bit: int = 13
    conditions_v4: tuple[str, ...] = ()
    conditions_v6: tuple[str, ...] = ()
    backend: str = "auto"

    @property
    def mark(self) -> int:
        return 1 << self.mark_masq_bit


def _port(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise InvalidConfig("invalid port mapping", f"{what} must be in 1..65535, got {value!r}")
    return value


# Port mappings one attachment may have (distinct ones): an ADD's firewall work grows with them
# (1,000 UDP ports: about 1-5 s here), so past this it is refused before anything is made.
MAX_PORT_MAPPINGS = 1024


def parse_mappings(raw: Any, limit: int | None = MAX_PORT_MAPPINGS) -> tuple[PortMapping, ...]:
    """The mappings, duplicates once; more than `limit` distinct ones is an error (DEL passes
    None: it removes what is there by the attachment's tag whatever it is given)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidConfig("invalid portMappings", "runtimeConfig.portMappings must be a list")
    out: dict[PortMapping, None] = {}
    for m in raw:
        if not isinstance(m, dict):
            raise InvalidConfig("invalid port mapping", repr(m)[:200])
        m = go_keys(m, ("hostPort", "containerPort", "protocol", "hostIP"))
        proto = m.get("protocol") or "tcp"
        if not isinstance(proto, str) or proto.lower() not in PROTOCOLS:
            raise InvalidConfig("invalid port mapping", f"protocol {proto!r} (tcp, udp or sctp)")
        host_ip = m.get("hostIP") or ""
        if not isinstance(host_ip, str):
            raise InvalidConfig("invalid port mapping", f"hostIP {host_ip!r}")
        ip = None
        if host_ip:
            try:
                ip = ipaddress.ip_address(host_ip)
            except ValueError:
                raise InvalidConfig("invalid port mapping", f"hostIP {host_ip!r}") from None
            if ip.is_unspecified:
                ip = None
        out[PortMapping(_port(m.get("hostPort"), "hostPort"),
                        _port(m.get("containerPort"), "containerPort"), proto.lower(), ip)] = None
        if limit is not None and len(out) > limit:
            raise InvalidConfig("too many port mappings",
                                f"more than {limit} distinct portMappings for one attachment")
    return tuple(out)   # duplicates once, order kept


def _conditions(conf: Mapping, key: str) -> tuple[str, ...]:
    value = conf.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidConfig(f"invalid {key}", "must be a list of strings")
    for v in value:
        if any(c in v for c in ";\n\r#{}\"'`$\\"):
            raise InvalidConfig(f"invalid {key}", f"{v!r} contains a character that is not allowed")
    return tuple(value)


def parse_options(conf: Mapping[str, Any]) -> FirewallOptions:
    bit = integer(conf, "markMasqBit", 0, 31, 13)
    if conf.get("externalSetMarkChain"):
        raise InvalidConfig("unsupported option externalSetMarkChain",
                            "pycni marks with markMasqBit in its own chains")
    # one validation for both spellings: `backend` (portmap) wins over `ipMasqBackend` (bridge)
    key = "backend" if conf.get("backend") is not None else "ipMasqBackend"
    backend = conf.get(key) or "auto"
    if backend not in BACKENDS:
        raise InvalidConfig(f"invalid {key}", f"{backend!r} (auto, nftables or iptables)")
    return FirewallOptions(
        snat=flag(conf, "snat", True),
        masq_all=flag(conf, "masqAll"),
        mark_masq_bit=bit,
        conditions_v4=_conditions(conf, "conditionsV4"),
        conditions_v6=_conditions(conf, "conditionsV6"),
        backend=backend,
    )
