"""Masquerade and port-mapping rules of one attachment, on nftables or on legacy iptables.

    FirewallSpec (pure data, cni.firewall.attachment)  ->  backend.setup / teardown / check / gc
    nftables: cni.firewall.nft       one `nft -f -` transaction per call, table `inet pycni`
    iptables: cni.firewall.iptables  python-iptables (libiptc), our own PYCNI-* chains

Rule: the backend is chosen once per call (`choose`); teardown and GC look in both, since a pod may
have been set up under the other, and DEL's teardown also removes what the reference plugins made
for the pod (`cni.firewall.reference`: a node switched from them). python-iptables is imported only
on the iptables path.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

from cni.firewall.attachment import IPT, NFT, FirewallSpec, network_hash
from cni.linux.xtables import legacy_tables
from cni.spec import names
from cni.spec.log import log

__all__ = ["FirewallSpec", "network_hash", "legacy_tables", "NFT", "IPT", "resolve", "choose", "setup",
           "teardown_start", "teardown", "check", "gc", "enable_route_localnet"]


def resolve(backend: str) -> tuple[str, str]:
    """(the backend ADD uses, why) for a configured backend name; STATUS checks the same one."""
    if backend in (NFT, IPT):
        return backend, "configured"
    if "nat" in legacy_tables(4) or "nat" in legacy_tables(6):
        # something on this node (kube-proxy, docker) uses legacy iptables NAT
        return IPT, "a legacy iptables nat table exists on this node"
    if _on_path("nft"):
        return NFT, "no legacy iptables nat table, nft in PATH"
    return IPT, "no `nft` in PATH"


def choose(options: FirewallOptions) -> str:
    return resolve(options.backend)[0]


def _backend(name: str):
    if name == NFT:
        from cni.firewall import nft  # lazy: per call, only the chosen backend and steps

        return nft
    from cni.firewall import iptables  # lazy: per call, only the chosen backend and steps

    return iptables


def setup(spec: FirewallSpec) -> str:
    """Install the attachment's rules; returns the backend used."""
    name = choose(spec.options)
    _backend(name).setup(spec)
    _flush_udp(spec)
    return name


def _flush_udp(spec: FirewallSpec) -> None:
    """Stale UDP conntrack entries of the mapped host ports would keep steering traffic to an old pod."""
    ports = sorted({m.host_port for m in spec.mappings if m.protocol == "udp"})
    if ports:
        from cni.linux.conntrack import flush_udp_ports  # lazy: per call, only the chosen backend and steps

        flush_udp_ports(ports)


def _present_backends() -> list[str]:
    """The backends that may hold rules of ours and can be reached: whatever PATH holds (an ADD
    may have run with another PATH, or through the helper), nftables is looked at through its
    library when it loads, else through the `nft` program."""
    present = []
    if _on_path("nft") or _backend(NFT)._library() is not None:
        present.append(NFT)
    if legacy_tables(4) or legacy_tables(6):
        present.append(IPT)
    return present


def teardown_start(spec: FirewallSpec) -> Callable[[], None]:
    """Start removing the attachment's rules from every backend that may hold them; the returned
    function finishes the work and raises what failed. (nftables runs as a child process, so its
    kernel commit overlaps whatever the caller does in between.)"""
    backends = _present_backends()
    errors: list[Exception] = []
    pending = None
    if NFT in backends:
        try:
            pending = _backend(NFT).teardown_start(spec)
        except Exception as e:      # kept for finish(): the other backend still gets its turn
            errors.append(e)

    def finish() -> None:
        if pending is not None:
            try:
                pending()
            except Exception as e:
                errors.append(e)
        # what the reference plugins made for this pod, if they did (a node switched from them)
        reference = None
        if spec.reference:
            from cni.firewall import reference  # lazy: DEL only
        if IPT in backends:
            try:
                also = reference.legacy_step(spec.network, spec.container_id) if reference else None
                _backend(IPT).teardown(spec, also)
            except Exception as e:   # keep going: the other backend may have held the rules
                errors.append(e)
        if reference is not None:
            try:
                reference.teardown_nft(spec.network, spec.container_id)
            except Exception as e:
                errors.append(e)
        try:
            _flush_udp(spec)
        except Exception as e:
            errors.append(e)
        for e in errors[1:]:
            log.warning(f"firewall teardown of {spec.tag}: also failed: {e}")
        if errors:
            raise errors[0]

    return finish


def teardown(spec: FirewallSpec) -> None:
    teardown_start(spec)()


def check(spec: FirewallSpec) -> None:
    name = choose(spec.options)
    _backend(name).check(spec)


def gc(network: str, valid: Iterable[tuple[str, str]]) -> None:
    """Remove the rules of this network's attachments that are not in `valid`."""
    hashes = {names.attachment_hash(network, c, i) for c, i in valid}
    for name in _present_backends():
        _backend(name).gc(network, hashes)


def enable_route_localnet(bridge: str) -> None:
    """127.0.0.1:hostPort -> pod needs route_localnet on the interface towards the pods."""
    from cni.linux import sysctl  # lazy: per call, only the chosen backend and steps

    sysctl.write(sysctl.iface_key(4, bridge, "route_localnet"), "1")


def _on_path(program: str) -> bool:
    """Whether PATH has `program` (shutil.which without importing shutil, bz2 and lzma)."""
    return any(os.access(os.path.join(d, program), os.X_OK)
               for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if d)
