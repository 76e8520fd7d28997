"""Legacy iptables backend through python-iptables (libiptc): our own PYCNI-* chains in `nat`.

    PREROUTING, OUTPUT:  -m addrtype --dst-type LOCAL -j PYCNI-HOSTPORTS
    POSTROUTING:         -j PYCNI-POSTROUTING
    PYCNI-HOSTPORTS:     per mapping  -p P --dport N [-d hostIP] -m comment TAG -j PYCNI-DN-<hash>
    PYCNI-POSTROUTING:   -m mark --mark M/M -j MASQUERADE       (hairpin and localhost)
                         per pod IP   -s IP -m comment TAG -j PYCNI-MS-<hash>   (ipMasq)
    PYCNI-DN-<hash>:     -s <pod net>|127.0.0.0/8 -j MARK --set-xmark M/M ; -p P --dport N -j DNAT
    PYCNI-MS-<hash>:     -d <pod net> -j RETURN ; -d <multicast> -j RETURN ; -j MASQUERADE

Rule: never flush or reorder other software's chains. Every per-attachment rule carries the
attachment's tag as comment (for people: it is cut at 120 characters, so two attachments may share
it); the code finds an attachment's rules by its chains, whose names come from the full attachment
hash: ADD, DEL and CHECK act on the jumps to PYCNI-DN/MS-<hash>. One commit per table.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys

from cni.firewall.attachment import FirewallSpec
from cni.firewall.iptc_loader import load
from cni.linux.flock import acquire
from cni.linux.xtables import legacy_tables
from cni.record import record
from cni.spec import names
from cni.spec.errors import CNIError, TryAgainLater, UnsupportedField
from cni.spec.log import log

HOSTPORTS = "PYCNI-HOSTPORTS"
POSTROUTING = "PYCNI-POSTROUTING"


def chain_names(att_hash: str) -> tuple[str, str]:
    return f"PYCNI-DN-{att_hash[:19]}", f"PYCNI-MS-{att_hash[:19]}"


def _full_hash(spec: FirewallSpec) -> str:
    return names.attachment_hash(spec.network, spec.container_id, spec.ifname)


XTABLES_LOCK = "/run/xtables.lock"
LOCK_TIMEOUT = 30.0


@contextlib.contextmanager
def xtables_lock(timeout: float = LOCK_TIMEOUT):
    """The lock iptables(-legacy), kube-proxy and the reference plugins take around table updates:
    libiptc commits a whole table, so an unlocked writer can lose another's change."""
    fd = os.open(XTABLES_LOCK, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if not acquire(fd, timeout, max_delay=0.05):
            raise TryAgainLater("xtables lock busy", f"{XTABLES_LOCK} held for over {timeout:g}s")
        yield
    finally:
        os.close(fd)


def _tables(iptc, family: int):
    """The nat table of `family`, re-read (python-iptables caches table objects per process)."""
    table = iptc.Table(iptc.Table.NAT) if family == 4 else iptc.Table6(iptc.Table6.NAT)
    table.refresh()
    return table, (iptc.Rule if family == 4 else iptc.Rule6)


def _comment(rule, text: str) -> None:
    rule.create_match("comment").comment = text


def _rule_comment(rule) -> str:
    for m in rule.matches:
        if m.name == "comment":
            return m.comment or ""
    return ""


def _apply_conditions(rule, tokens: tuple[str, ...]) -> None:
    """The reference's conditionsV4/V6 for iptables: -s, -d, -i, -o, each optionally negated."""
    words = " ".join(tokens).split()
    i = 0
    while i < len(words):
        neg = words[i] == "!"
        if neg:
            i += 1
        if i + 1 >= len(words) or words[i] not in ("-s", "-d", "-i", "-o"):
            raise UnsupportedField("unsupported conditions for iptables", " ".join(tokens))
        value = ("!" if neg else "") + words[i + 1]
        setattr(rule, {"-s": "src", "-d": "dst", "-i": "in_interface", "-o": "out_interface"}[words[i]], value)
        i += 2


def _ensure_chain(table, name: str):
    for c in table.chains:
        if c.name == name:
            return c
    return table.create_chain(name)


def _find_chain(table, name: str):
    return next((c for c in table.chains if c.name == name), None)


def _ensure_jump(table, Rule, builtin: str, target: str, local_only: bool) -> None:
    chain = _find_chain(table, builtin)
    for r in chain.rules:
        if r.target and r.target.name == target:
            return
    rule = Rule()
    if local_only:
        rule.create_match("addrtype").dst_type = "LOCAL"
    _comment(rule, "pycni")
    rule.create_target(target)
    chain.insert_rule(rule)


def _ensure_mark_masq(table, Rule, mark: int) -> None:
    chain = _ensure_chain(table, POSTROUTING)
    want = f"{mark:#x}/{mark:#x}"
    for r in chain.rules:
        for m in r.matches:
            if m.name == "mark" and m.mark == want:
                return
    rule = Rule()
    rule.create_match("mark").mark = want
    _comment(rule, "pycni")
    rule.create_target("MASQUERADE")
    chain.insert_rule(rule)


@record
class IptRule:
    """One rule as data: rendered as iptables-save text for tests, built with python-iptables."""
    chain: str
    target: str
    src: str = ""
    dst: str = ""
    protocol: str = ""
    dport: int = 0
    comment: str = ""
    target_arg: str = ""          # DNAT --to-destination, MARK --set-xmark
    conditions: tuple[str, ...] = ()

    def text(self) -> str:
        parts = [f"-A {self.chain}", *self.conditions]
        if self.src:
            parts.append(f"-s {self.src}")
        if self.dst:
            parts.append(f"-d {self.dst}")
        if self.protocol:
            parts.append(f"-p {self.protocol} -m {self.protocol} --dport {self.dport}")
        if self.comment:
            parts.append(f'-m comment --comment "{self.comment}"')
        parts.append(f"-j {self.target}")
        if self.target == "DNAT":
            parts.append(f"--to-destination {self.target_arg}")
        elif self.target == "MARK":
            parts.append(f"--set-xmark {self.target_arg}")
        return " ".join(parts)


def plan_rules(spec: FirewallSpec, family: int) -> tuple[list[str], list[IptRule]]:
    """(per-attachment chains to create, rules to append) for one family; pure."""
    pods = spec.ips(family)
    maps = [m for m in spec.mappings if m.applies_to(family)]
    if not pods or not (maps or spec.masquerade):
        return [], []
    o, tag = spec.options, spec.tag
    dn, ms = chain_names(_full_hash(spec))
    chains, rules = [], []
    if maps:
        chains.append(dn)
        mark = f"{o.mark:#x}/{o.mark:#x}"
        if o.masq_all:
            rules.append(IptRule(dn, "MARK", comment=tag, target_arg=mark))
        elif o.snat:
            sources = sorted({str(a.network) for a in pods}) + (["127.0.0.0/8"] if family == 4 else [])
            rules += [IptRule(dn, "MARK", src=src, comment=tag, target_arg=mark) for src in sources]
        pod = pods[0].ip
        conds = tuple(o.conditions_v4 if family == 4 else o.conditions_v6)
        for m in maps:
            hostip = str(m.host_ip) if m.host_ip is not None else ""
            to = f"{pod}:{m.container_port}" if family == 4 else f"[{pod}]:{m.container_port}"
            rules.append(IptRule(dn, "DNAT", dst=hostip, protocol=m.protocol, dport=m.host_port,
                                 comment=tag, target_arg=to))
            rules.append(IptRule(HOSTPORTS, dn, dst=hostip, protocol=m.protocol, dport=m.host_port,
                                 comment=tag, conditions=conds))
    if spec.masquerade:
        chains.append(ms)
        mcast = "224.0.0.0/4" if family == 4 else "ff00::/8"
        rules += [IptRule(ms, "RETURN", dst=d, comment=tag) for d in sorted({str(a.network) for a in pods})]
        rules += [IptRule(ms, "RETURN", dst=mcast, comment=tag), IptRule(ms, "MASQUERADE", comment=tag)]
        rules += [IptRule(POSTROUTING, ms, src=str(a.ip), comment=tag) for a in pods]
    return chains, rules


def _build(Rule, r: IptRule):
    rule = Rule()
    if r.conditions:
        _apply_conditions(rule, r.conditions)
    if r.src:
        rule.src = r.src
    if r.dst:
        rule.dst = r.dst
    if r.protocol:
        rule.protocol = r.protocol
        rule.create_match(r.protocol).dport = str(r.dport)
    if r.comment:
        _comment(rule, r.comment)
    target = rule.create_target(r.target)
    if r.target == "DNAT":
        target.to_destination = r.target_arg
    elif r.target == "MARK":
        target.set_xmark = r.target_arg
    return rule


def _add_family(iptc, spec: FirewallSpec, family: int) -> None:
    chains, rules = plan_rules(spec, family)
    if not rules:
        return
    table, Rule = _tables(iptc, family)
    table.autocommit = False
    try:
        for name in (HOSTPORTS, POSTROUTING):
            _ensure_chain(table, name)
        _ensure_jump(table, Rule, "PREROUTING", HOSTPORTS, True)
        _ensure_jump(table, Rule, "OUTPUT", HOSTPORTS, True)
        _ensure_jump(table, Rule, "POSTROUTING", POSTROUTING, False)
        if spec.mappings:
            _ensure_mark_masq(table, Rule, spec.options.mark)
        # idempotent: a repeated ADD replaces its own chains' jumps, and only those (the chained
        # pycni-portmap must not take the masquerade jump the bridge plugin made for the pod)
        _remove_jumps(table, set(chains))
        _take_ports(table, [r for r in rules if r.chain == HOSTPORTS], set(chains))
        for name in chains:
            _ensure_chain(table, name).flush()
        for r in rules:
            _find_chain(table, r.chain).append_rule(_build(Rule, r))
        table.commit()
    finally:
        table.autocommit = True


def _remove_jumps(table, targets: set[str]) -> None:
    """Remove the jumps to `targets` (an attachment's own chains) from our dispatch chains."""
    for name in (HOSTPORTS, POSTROUTING):
        chain = _find_chain(table, name)
        if chain is None:
            continue
        for r in list(chain.rules):
            if r.target is not None and r.target.name in targets:
                chain.delete_rule(r)


def _same_port(rule, want: IptRule) -> bool:
    """Whether a HOSTPORTS jump maps the same protocol, port and host address as `want`."""
    if (rule.protocol or "") != want.protocol:
        return False
    if str(want.dport) not in [m.dport for m in rule.matches if m.name == want.protocol]:
        return False
    dst = (rule.dst or "").split("/")[0]
    try:
        dst_ip = ipaddress.ip_address(dst) if dst else None
    except ValueError:
        return False
    if not want.dst:
        return dst_ip is None or dst_ip.is_unspecified
    return dst_ip == ipaddress.ip_address(want.dst)


def _take_ports(table, jumps: list[IptRule], mine: set[str]) -> None:
    """The last ADD takes a host port, as on nftables: another attachment's jump for the same
    protocol, port and host address goes (its other ports stay; its chains go with its DEL)."""
    chain = _find_chain(table, HOSTPORTS)
    if chain is None:
        return
    for r in list(chain.rules):
        target = r.target.name if r.target else ""
        if target.startswith("PYCNI-DN-") and target not in mine and any(_same_port(r, j) for j in jumps):
            log.warning(f"iptables: a {r.protocol} host port of {_rule_comment(r)!r} taken by a later ADD")
            chain.delete_rule(r)


def _delete_chains(table, names: set[str]) -> None:
    for c in list(table.chains):
        if c.name in names:
            c.flush()
            c.delete()


# for cni.firewall.reference: its step inside `teardown(spec, also=...)`, its CHECK
nat_table, find_chain, rule_comment, delete_chains = _tables, _find_chain, _rule_comment, _delete_chains


def _both_families(fn, families: list[int]) -> None:
    """Run fn(family) for each family. python-iptables can load an extension such as MASQUERADE
    for only the first family a process uses (the shared object registers it once, for the family
    current at load time), so with both families the IPv6 half runs in a forked child that has not
    loaded python-iptables yet."""
    if len(families) < 2 or "iptc" in sys.modules:
        for f in families:
            fn(f)
        return
    from cni.linux.children import die_with  # lazy: ctypes only when both families are updated

    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:   # child: IPv6 only, then leave without running any of the parent's cleanup
        os.close(read_fd)
        status, msg = 0, b""
        try:
            die_with(parent)       # never commit after a runtime killed us and ran DEL
            fn(6)
        except CNIError as e:
            status, msg = 1, f"{e.code}\0{e.msg}\0{e.details}".encode()
        except BaseException as e:
            status, msg = 1, f"999\0iptables update failed (IPv6)\0{e}".encode()
        os.write(write_fd, msg)
        os._exit(status)
    os.close(write_fd)
    try:
        fn(4)
    finally:
        with os.fdopen(read_fd, "rb") as f:
            msg = f.read()
        _, status = os.waitpid(pid, 0)
    if status != 0:
        code, text, details = (msg.decode(errors="replace").split("\0") + ["", "", ""])[:3]
        raise CNIError(text or "iptables update failed (IPv6)", details,
                       code=int(code) if code.isdigit() else 999)


def setup(spec: FirewallSpec) -> None:
    def one(family: int) -> None:
        try:
            with xtables_lock():
                _add_family(load(), spec, family)
        except (UnsupportedField, TryAgainLater):
            raise
        except Exception as e:
            raise CNIError("iptables update failed", f"IPv{family}: {e}") from None

    _both_families(one, [f for f in (4, 6) if spec.ips(f)])


def _families_present() -> list[int]:
    return [f for f in (4, 6) if "nat" in legacy_tables(f)]


def teardown(spec: FirewallSpec, also=None) -> None:
    """Remove the attachment's chains and the jumps to them; `also(table)`, when given, changes
    the same nat table before its one commit (the reference plugins' rules of the pod)."""
    mine = set(chain_names(_full_hash(spec)))

    def one(family: int) -> None:
        with xtables_lock():
            _teardown_family(family)

    def _teardown_family(family: int) -> None:
        table, _ = _tables(load(), family)
        table.autocommit = False
        try:
            _remove_jumps(table, mine)
            _delete_chains(table, mine)
            if also is not None:
                also(table)
            table.commit()
        except Exception as e:
            raise CNIError("iptables teardown failed", f"IPv{family}: {e}") from None
        finally:
            table.autocommit = True

    _both_families(one, _families_present())


def check(spec: FirewallSpec) -> None:
    dn, ms = chain_names(_full_hash(spec))

    def one(family: int) -> None:
        maps = [m for m in spec.mappings if m.applies_to(family)]
        with xtables_lock():
            table, _ = _tables(load(), family)
        chains = {c.name for c in table.chains}
        jumps = []
        for name in (HOSTPORTS, POSTROUTING):
            if name in chains:
                jumps += [r for r in _find_chain(table, name).rules if r.target is not None]
        if maps and (dn not in chains or sum(r.target.name == dn for r in jumps) < len(maps)):
            raise CNIError("CHECK failed: firewall rule missing", f"iptables DNAT rules of {spec.tag} (IPv{family})")
        if spec.masquerade and (ms not in chains or not any(r.target.name == ms for r in jumps)):
            raise CNIError("CHECK failed: firewall rule missing", f"iptables masquerade of {spec.tag} (IPv{family})")

    _both_families(one, [f for f in (4, 6) if spec.ips(f)])


def gc(network: str, valid_hashes: set[str]) -> None:
    keep = set()
    for h in valid_hashes:
        keep.update(chain_names(h))
    prefix = f"pycni {network}/"[:120]     # tags are cut there

    def one(family: int) -> None:
        with xtables_lock():
            _gc_family(family)

    def _gc_family(family: int) -> None:
        table, _ = _tables(load(), family)
        table.autocommit = False
        try:
            _gc_table(table)
        except Exception as e:
            raise CNIError("iptables GC failed", f"IPv{family}: {e}") from None
        finally:
            table.autocommit = True

    def _gc_table(table) -> None:
        stale = set()
        for name in (HOSTPORTS, POSTROUTING):
            chain = _find_chain(table, name)
            if chain is None:
                continue
            for r in list(chain.rules):
                if not _rule_comment(r).startswith(prefix):
                    continue       # another's rule: never decode its target
                target = r.target.name if r.target else ""
                if target.startswith(("PYCNI-DN-", "PYCNI-MS-")) and target not in keep:
                    stale.add(target)
                    chain.delete_rule(r)
        if stale:
            log.info(f"gc: removing iptables chains {sorted(stale)}")
        _delete_chains(table, stale)
        table.commit()

    _both_families(one, _families_present())
