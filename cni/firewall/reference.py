"""What the reference plugins (containernetworking/plugins 1.1.1) made in iptables for one
attachment, found and removed the way they find it: a node switched from `bridge` + `portmap` to
pycni deletes pods the reference made, and their host ports and masquerade must go with them.

The reference names its per-attachment chains from the network name and the container id
(CNI- + the SHA-512 of name + id, cut to 28 characters; `CNI-DN-` for portmap's DNAT chain, and
`CNI-SN-` for the SNAT chain of releases before 0.7), and reaches them by one jump each from a
chain it shares between pods: POSTROUTING for ipMasq's chain, CNI-HOSTPORT-DNAT for portmap's (and
the old CNI-HOSTPORT-SNAT). Those jumps carry the comment `name: "NET" id: "ID"` (portmap's:
`dnat name: ...`). Teardown, as the reference's own DEL: the jumps to the attachment's chains (and
any rule of those shared chains whose comment names this attachment), then the chains.

Where the rules are depends on which `iptables` the reference ran:
- iptables-nft (Debian's default): nftables tables `ip nat` / `ip6 nat`, read and changed through
  libnftables (`cni.firewall.nft`) in one transaction per family, rules deleted by handle, once
  the kernel has said the pod's chains exist.
  python-iptables cannot see them, and the `iptables-nft` programs would cost a process (2-5 ms)
  per command; nft 1.0.6 shows the xt comment match without its text, so the jumps are found by
  their target, the chain named from network + id, exactly as the reference's teardown finds them.
- iptables-legacy: the legacy `nat` tables, through python-iptables (`cni.firewall.iptables`),
  under the xtables lock, one commit per table; there comments are readable and also matched.

Cost of the look on a node where the pod has no such chains: one nfnetlink GETCHAIN per chain
and family, asked of the kernel directly (`cni.linux.nfchains`, ~0.05 ms in all, whatever the
tables hold: libnftables would fill its cache from the whole table first); libnftables lists the
shared chains and commits only where the pod's chains exist. The legacy step reads the chain
list pycni's own legacy teardown reads anyway (only where a legacy `nat` table exists).
"""

from __future__ import annotations

from cni.spec.errors import CNIError
from cni.spec.log import log

MAX_CHAIN = 28
ENTRY_CHAINS = ("POSTROUTING", "CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SNAT")


def _sha512_hex(text: str) -> str:
    try:
        from _sha512 import sha512  # lazy: DEL and CHECK only; the C module, not hashlib's imports
    except ImportError:
        from hashlib import sha512  # lazy: Python 3.12+, where _sha512 became _sha2
    return sha512(text.encode()).hexdigest()


def chain_names(network: str, container_id: str) -> tuple[str, ...]:
    """The reference's per-attachment chains: ipMasq's, portmap's DNAT, the pre-0.7 SNAT."""
    digest = _sha512_hex(network + container_id)
    return tuple((prefix + digest)[:MAX_CHAIN] for prefix in ("CNI-", "CNI-DN-", "CNI-SN-"))


def comments(network: str, container_id: str) -> tuple[str, ...]:
    """The comments of the reference's rules for this attachment (Go's %q of name and id)."""
    from cni.spec import jsonio  # lazy: DEL only

    plain = f"name: {jsonio.dumps(network)} id: {jsonio.dumps(container_id)}"
    return plain, ("dnat " + plain)[:256]


def teardown_nft(network: str, container_id: str) -> int:
    """Remove the reference's rules and chains of (network, container id) from iptables-nft's
    tables; the number of chains removed. Raises what failed."""
    removed = _nft_teardown(chain_names(network, container_id), comments(network, container_id))
    if removed:
        log.info(f"removed {removed} iptables-nft chains the reference plugins made for {network}/{container_id}")
    return removed


def check(network: str, container_id: str, masquerade: bool, mappings: bool) -> None:
    """CHECK of a pod the reference made: its masquerade chain (ipMasq) and its DNAT chain (port
    mappings) exist, in iptables-nft or legacy iptables; raises CHECK's error naming what is not."""
    masq, dnat, _ = chain_names(network, container_id)
    wanted = ([masq] if masquerade else []) + ([dnat] if mappings else [])
    if not wanted:
        return
    from cni.linux import nfchains  # lazy: CHECK only
    from cni.linux.xtables import legacy_tables

    present = {c for family in ("ip", "ip6") for c in nfchains.exists(family, "nat", wanted)}

    if any("nat" in legacy_tables(f) for f in (4, 6)) and set(wanted) - present:
        from cni.firewall import iptables  # lazy: only where a legacy nat table exists

        with iptables.xtables_lock():
            table, _ = iptables.nat_table(iptables.load(), 4)
            present |= {c.name for c in table.chains} & set(wanted)
    missing = [c for c in wanted if c not in present]
    if missing:
        raise CNIError("CHECK failed: firewall rule missing",
                       f"the reference plugins' chains {', '.join(missing)} of {network}/{container_id} "
                       "are in neither iptables-nft nor legacy iptables")


# ---------------------------------------------------------------- iptables-nft


def plan_nft(family: str, present: set[str], entries: dict[str, list[dict]], notes: tuple[str, ...]) -> list[str]:
    """The nft commands that remove the attachment's chains `present` of `family`'s nat table and
    every rule of the entry chains (`entries`: name -> its listing) that jumps to one of them or
    whose comment names the attachment; pure."""
    out = []
    for entry, listing in entries.items():
        for obj in listing:
            rule = obj.get("rule")
            if rule is None or "handle" not in rule:
                continue
            targets = {e[k]["target"] for e in rule.get("expr") or () for k in ("jump", "goto")
                       if isinstance(e, dict) and isinstance(e.get(k), dict)}
            if targets & present or rule.get("comment") in notes:
                out.append(f"delete rule {family} nat {entry} handle {rule['handle']}")
    for name in sorted(present):
        out += [f"flush chain {family} nat {name}", f"delete chain {family} nat {name}"]
    return out


def _nft_teardown(chains: tuple[str, ...], notes: tuple[str, ...]) -> int:
    from cni.linux import nfchains  # lazy: DEL only

    removed = 0
    for family in ("ip", "ip6"):
        present = set(nfchains.exists(family, "nat", list(chains)))
        if not present:
            continue
        from cni.firewall import nft  # lazy: only where the reference's chains of the pod exist

        entries = {e: nft.query(f"list chain {family} nat {e}") or [] for e in ENTRY_CHAINS}
        nft.transaction("\n".join(plan_nft(family, present, entries, notes)) + "\n")
        removed += len(present)
    return removed


# ---------------------------------------------------------------- iptables-legacy


def legacy_step(network: str, container_id: str):
    """A step for the legacy iptables teardown (`cni.firewall.iptables.teardown(spec, also=...)`):
    given a family's nat table (python-iptables, autocommit off, under the xtables lock), remove
    the reference's rules and chains of (network, container id) from it; the table's one commit
    carries them with pycni's own."""
    chains = set(chain_names(network, container_id))
    notes = comments(network, container_id)

    def step(table) -> None:
        from cni.firewall import iptables  # lazy: only where a legacy nat table exists

        present = {c.name for c in table.chains} & chains
        if not present:
            return
        for entry in ENTRY_CHAINS:
            chain = iptables.find_chain(table, entry)
            for r in list(chain.rules) if chain is not None else ():
                target = r.target.name if r.target is not None else ""
                if target in present or iptables.rule_comment(r) in notes:
                    chain.delete_rule(r)
        iptables.delete_chains(table, present)
        log.info(f"removing legacy iptables chains {sorted(present)} the reference plugins made "
                 f"for {network}/{container_id}")

    return step
