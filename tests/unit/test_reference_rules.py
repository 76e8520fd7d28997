"""The reference plugins' names and pycni's plan to remove their rules (cni.firewall.reference),
and the kernel question behind it (cni.linux.nfchains): pure parts."""

from __future__ import annotations

import hashlib
import struct

from cni.firewall import reference
from cni.linux import nfchains


def test_chain_names_are_the_references():
    # containernetworking/plugins pkg/utils: "CNI-" + prefix + hex(sha512(name + id)), 28 characters
    digest = hashlib.sha512(b"testnetrefc1").hexdigest()
    assert reference.chain_names("testnet", "refc1") == (
        ("CNI-" + digest)[:28], ("CNI-DN-" + digest)[:28], ("CNI-SN-" + digest)[:28])
    # as the reference 1.1.1 named them on this machine (iptables-nft-save of a reference pod)
    assert reference.chain_names("testnet", "refc1")[:2] == ("CNI-5914ba8fe7508511c1beaa24",
                                                              "CNI-DN-5914ba8fe7508511c1bea")


def test_comments_are_gos_quoting():
    assert reference.comments("testnet", "a") == ('name: "testnet" id: "a"', 'dnat name: "testnet" id: "a"')


def rule(chain, handle, target=None, comment=None):
    expr = [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "10.0.0.2"}},
            {"xt": {"type": "match", "name": "comment"}}]
    if target:
        expr.append({"jump": {"target": target}})
    r = {"family": "ip", "table": "nat", "chain": chain, "handle": handle, "expr": expr}
    if comment:
        r["comment"] = comment
    return {"rule": r}


def test_plan_removes_the_jumps_to_the_pods_chains_and_its_commented_rules_only():
    masq, dnat, _ = reference.chain_names("net", "a")
    other = reference.chain_names("net", "b")[0]
    entries = {
        "POSTROUTING": [{"chain": {"name": "POSTROUTING"}}, rule("POSTROUTING", 10, "CNI-HOSTPORT-MASQ"),
                        rule("POSTROUTING", 11, masq), rule("POSTROUTING", 12, other),
                        rule("POSTROUTING", 13, None, comment='name: "net" id: "a"')],
        "CNI-HOSTPORT-DNAT": [rule("CNI-HOSTPORT-DNAT", 20, dnat), rule("CNI-HOSTPORT-DNAT", 21, "CNI-DN-x")],
        "CNI-HOSTPORT-SNAT": [],
    }
    plan = reference.plan_nft("ip", {masq, dnat}, entries, reference.comments("net", "a"))
    assert plan == ["delete rule ip nat POSTROUTING handle 11", "delete rule ip nat POSTROUTING handle 13",
                    "delete rule ip nat CNI-HOSTPORT-DNAT handle 20",
                    f"flush chain ip nat {sorted([masq, dnat])[0]}", f"delete chain ip nat {sorted([masq, dnat])[0]}",
                    f"flush chain ip nat {sorted([masq, dnat])[1]}", f"delete chain ip nat {sorted([masq, dnat])[1]}"]


def test_getchain_request_layout():
    msg = nfchains.request("ip6", "nat", "CNI-x", seq=7)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq, pid) == (len(msg), 10 << 8 | 4, 0x5, 7, 0)
    assert msg[16:20] == bytes([10, 0, 0, 0])                   # nfgenmsg: AF_INET6, v0, res_id 0
    assert msg[20:28] == struct.pack("=HH", 8, 1) + b"nat\0"    # NFTA_CHAIN_TABLE
    assert msg[28:40] == struct.pack("=HH", 10, 3) + b"CNI-x\0" + b"\0\0"   # NFTA_CHAIN_NAME, padded
    assert len(msg) % 4 == 0
