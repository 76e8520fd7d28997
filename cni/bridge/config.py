"""The bridge plugin's network configuration, parsed once into a frozen `NetConf`.

Option names are the reference `bridge` plugin's, so an existing conflist works by changing only
`"type"`. Rule: every check on the config happens here; the rest of pycni trusts a `NetConf`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from cni.bandwidth import options as bandwidth
from cni.firewall.options import FirewallOptions, PortMapping, parse_mappings, parse_options
from cni.record import field, record
from cni.spec import names, result
from cni.spec.errors import CNIError, DecodeFailure, InvalidConfig, UnsupportedField
from cni.spec.fields import flag, integer, mapping, string
from cni.spec.log import log
from cni.spec.result import DNS, Result, parse_prev_result

IN_PROCESS_IPAM = "pycni-ipam"
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


@record
class NetConf:
    cni_version: str
    name: str
    type: str
    bridge: str = "cni0"
    is_gateway: bool = False
    is_default_gateway: bool = False
    force_address: bool = False
    ip_masq: bool = False
    mtu: int | None = None
    hairpin_mode: bool = False
    promisc_mode: bool = False
    vlan: int | None = None
    enable_dad: bool = False
    ipam: Mapping[str, Any] = field(default_factory=dict)
    mac: str = ""
    dns: DNS = DNS()
    prev_result: Result | None = None
    runtime_config: Mapping[str, Any] = field(default_factory=dict)
    args: Mapping[str, Any] = field(default_factory=dict)
    port_mappings: tuple[PortMapping, ...] = ()
    firewall: FirewallOptions = FirewallOptions()
    shaping: bandwidth.Shaping = bandwidth.NONE   # the `bandwidth` capability or static rates
    policy_dir: str = ""            # networkPolicy: the state directory shared with the agent
    mac_spoof_check: bool = False   # macspoofchk: frames from the pod's port carry its MAC
    port_binding: bool = False      # portBinding: the port is bound to the pod's MAC and addresses
    complete: bool = True           # False: parsed leniently for DEL, options may be missing

    @property
    def wants_firewall(self) -> bool:
        return self.ip_masq or bool(self.port_mappings)

    @property
    def binds_port(self) -> str:
        """"ports" (full binding: networkPolicy or portBinding), "mac" (macspoofchk) or ""."""
        if self.port_binding or self.policy_dir:
            return "ports"
        return "mac" if self.mac_spoof_check else ""

    @property
    def ipam_type(self) -> str:
        return str(self.ipam.get("type") or "")

    @property
    def ipam_in_process(self) -> bool:
        return self.ipam_type == IN_PROCESS_IPAM


def validate_mac(mac: str, source: str) -> str:
    if not _MAC_RE.fullmatch(mac):
        raise InvalidConfig("invalid MAC address", f"{source}: {mac!r}")
    if int(mac[:2], 16) & 1:
        raise InvalidConfig("invalid MAC address", f"{source}: {mac} is a multicast address")
    return mac.lower()


def _mac(runtime_config: Mapping, args: Mapping, cni_args: Mapping[str, str]) -> str:
    """runtimeConfig.mac > args.cni.mac > CNI_ARGS MAC=."""
    if runtime_config.get("mac"):
        return validate_mac(str(runtime_config["mac"]), "runtimeConfig.mac")
    cni = args.get("cni") if isinstance(args, dict) else None
    if isinstance(cni, dict) and cni.get("mac"):
        return validate_mac(str(cni["mac"]), "args.cni.mac")
    if cni_args.get("MAC"):
        return validate_mac(cni_args["MAC"], "CNI_ARGS MAC")
    return ""


def parse(conf: Mapping[str, Any], cni_args: Mapping[str, str] | None = None) -> NetConf:
    cni_args = cni_args or {}
    bridge = string(conf, "bridge", "cni0") or "cni0"
    try:
        names.validate_ifname(bridge)
    except CNIError as e:
        raise InvalidConfig("invalid bridge name", e.details.replace("CNI_IFNAME", "bridge")) from None
    is_default_gw = flag(conf, "isDefaultGateway")
    hairpin, promisc = flag(conf, "hairpinMode"), flag(conf, "promiscMode")
    if hairpin and promisc:
        raise InvalidConfig("invalid config", "cannot set hairpin mode and promiscuous mode at the same time")
    ipam = conf.get("ipam")
    if ipam is None:
        ipam = {}
    if not isinstance(ipam, dict):
        raise InvalidConfig("invalid ipam", "\"ipam\" must be an object")
    if ipam and not isinstance(ipam.get("type"), str):
        raise InvalidConfig("invalid ipam", "ipam needs a \"type\"")
    runtime_config, args = mapping(conf, "runtimeConfig"), mapping(conf, "args")
    try:
        dns = result.parse_dns(conf.get("dns"))
    except DecodeFailure as e:
        raise InvalidConfig("invalid dns", e.details) from None
    return NetConf(
        cni_version=conf["cniVersion"],
        name=conf["name"],
        type=string(conf, "type"),
        bridge=bridge,
        is_gateway=flag(conf, "isGateway") or is_default_gw,
        is_default_gateway=is_default_gw,
        force_address=flag(conf, "forceAddress"),
        ip_masq=flag(conf, "ipMasq"),
        mtu=integer(conf, "mtu", 68, 65535),
        hairpin_mode=hairpin,
        promisc_mode=promisc,
        vlan=integer(conf, "vlan", 0, 4094) or None,
        enable_dad=flag(conf, "enabledad"),
        ipam=ipam,
        mac=_mac(runtime_config, args, cni_args),
        dns=dns,
        prev_result=parse_prev_result(conf),
        runtime_config=runtime_config,
        args=args,
        port_mappings=parse_mappings(runtime_config.get("portMappings")),
        firewall=parse_options(conf),
        shaping=bandwidth.parse(conf),
        policy_dir=string(conf, "networkPolicy", ""),
        mac_spoof_check=flag(conf, "macspoofchk"),
        port_binding=flag(conf, "portBinding"),
    )


def parse_for_delete(conf: Mapping[str, Any], cni_args: Mapping[str, str] | None = None) -> NetConf:
    """DEL finds and removes what ADD made; it makes nothing. A config ADD refuses (an mtu out of
    range, a bad MAC, a typo in one option) must still be deletable, so each field that does not
    parse falls back to what finds the most: masquerade and port-mapping teardown on (it finds the
    attachment's rules by their mark), no prevResult, the IPAM section as it is."""
    try:
        return parse(conf, cni_args)
    except CNIError as e:           # any refusal of ADD's (the bandwidth options' are code 999)
        log.warning(f"DEL of a config ADD would refuse ({e.msg}: {e.details}): removing what is there")

    def lenient(read, fallback):
        try:
            return read()
        except CNIError:
            return fallback

    ipam = conf.get("ipam") if isinstance(conf.get("ipam"), dict) else {}
    return NetConf(
        cni_version=conf["cniVersion"], name=conf["name"], type=str(conf.get("type") or ""),
        bridge=lenient(lambda: string(conf, "bridge", "cni0") or "cni0", "cni0"),
        ip_masq=True,
        ipam=ipam if isinstance(ipam.get("type"), str) else {},
        prev_result=lenient(lambda: parse_prev_result(conf), None),
        runtime_config=lenient(lambda: mapping(conf, "runtimeConfig"), {}),
        args=lenient(lambda: mapping(conf, "args"), {}),
        firewall=lenient(lambda: parse_options(conf), FirewallOptions()),
        policy_dir=lenient(lambda: string(conf, "networkPolicy", ""), ""),
        mac_spoof_check=lenient(lambda: flag(conf, "macspoofchk"), True),
        port_binding=lenient(lambda: flag(conf, "portBinding"), True),
        complete=False,
    )
