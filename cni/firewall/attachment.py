"""What the firewall holds for one attachment, as data both backends read: `FirewallSpec` (the
pod's addresses, its port mappings, whether to masquerade) and the names its rules are found by.

Rule: pure data, imported by `cni.firewall.nft`, `cni.firewall.iptables` and by `cni.firewall.rules`,
which chooses between them; it imports neither backend.
"""

from __future__ import annotations

from cni.firewall.options import FirewallOptions, PortMapping
from cni.record import record
from cni.spec import names
from cni.spec.result import IPInterface

NFT = "nftables"
IPT = "iptables"


@record
class FirewallSpec:
    network: str
    container_id: str
    ifname: str
    pod_ips: tuple[IPInterface, ...] = ()
    mappings: tuple[PortMapping, ...] = ()
    masquerade: bool = False
    options: FirewallOptions = FirewallOptions()
    # False when the config may not name everything ADD set up (DEL of a config that no longer
    # parses): teardown then also looks for the attachment's rules by their mark
    exhaustive: bool = True
    # teardown also looks for the reference plugins' chains of (network, container id): DEL
    reference: bool = False

    @property
    def tag(self) -> str:
        """Written as the comment of every rule of this attachment."""
        return f"pycni {self.network}/{self.container_id}/{self.ifname}"[:120]

    @property
    def net_hash(self) -> str:
        return network_hash(self.network)

    @property
    def att_hash(self) -> str:
        return names.attachment_hash(self.network, self.container_id, self.ifname)[:16]

    def ips(self, family: int) -> list[IPInterface]:
        return [a for a in self.pod_ips if a.version == family]


def network_hash(network: str) -> str:
    return names.sha256_hex(network)[:8]
