"""NetworkPolicy as pure data: the API's defaulting rules, selectors, peers and ports as parsed,
and what the compiler makes of them (sets, rules, members). The kernel's verdicts are tested with
traffic in tests/integration/test_netpol.py."""

from __future__ import annotations

import ipaddress

import pytest

from cni.agent.policy.compile import compile_policies, render
from cni.agent.policy.objects import (PolicyError, Port, Selector, parse_namespace, parse_pod,
                                      parse_policy)
from cni.firewall.policy import elements_of, render_remove


def pol(spec, ns="x", name="p"):
    return parse_policy({"metadata": {"namespace": ns, "name": name}, "spec": spec})


def pod(key, node="n1", ips=("10.244.0.5",), labels=None, ports=()):
    ns, name = key.split("/")
    return parse_pod({"metadata": {"namespace": ns, "name": name, "labels": labels or {"pod": name}},
                      "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                          {"name": n, "containerPort": p, "protocol": proto} for n, p, proto in ports]}]},
                      "status": {"podIPs": [{"ip": ip} for ip in ips]}})


def test_policy_types_default_from_the_rules_present():
    assert pol({"podSelector": {}}).ingress == () and pol({"podSelector": {}}).egress is None
    both = pol({"podSelector": {}, "egress": [{}]})
    assert both.ingress == () and len(both.egress) == 1
    assert pol({"podSelector": {}, "egress": []}).egress is None       # an empty list is no Egress
    only_egress = pol({"podSelector": {}, "policyTypes": ["Egress"]})
    assert only_egress.ingress is None and only_egress.egress == ()


def test_rules_peers_and_ports():
    p = pol({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [
        {},
        {"from": [{"podSelector": {}, "namespaceSelector": {"matchLabels": {"team": "a"}}},
                  {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.2.0.0/16"]}}],
         "ports": [{"port": 80}, {"protocol": "UDP", "port": "dns"}, {"port": 8000, "endPort": 8080},
                   {"protocol": "SCTP"}]}]})
    every, some = p.ingress
    assert every.peers is None and every.ports is None
    both, block = some.peers
    assert both.pods == Selector() and both.namespaces == Selector((("team", "a"),))
    nets = set(block.block)
    assert ipaddress.ip_network("10.0.0.0/16") in nets and ipaddress.ip_network("10.3.0.0/16") in nets
    assert not any(n.overlaps(ipaddress.ip_network("10.1.0.0/16")) for n in nets)
    assert some.ports == (Port("tcp", 80), Port("udp", "dns"), Port("tcp", 8000, 8080), Port("sctp"))


@pytest.mark.parametrize("port", [{"port": 80, "endPort": 79}, {"port": "http", "endPort": 90},
                                  {"protocol": "ICMP"}, {"port": 70000}])
def test_invalid_ports_are_refused(port):
    with pytest.raises(PolicyError):
        pol({"podSelector": {}, "ingress": [{"ports": [port]}]})


def test_selector_expressions():
    s = pol({"podSelector": {"matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["web", "api"]},
        {"key": "canary", "operator": "DoesNotExist"},
        {"key": "env", "operator": "NotIn", "values": ["prod"]},
        {"key": "app", "operator": "Exists"}]}}).selector
    assert s.matches({"tier": "web", "app": "x"})
    assert s.matches({"tier": "api", "app": "x", "env": "dev"})
    assert not s.matches({"tier": "db", "app": "x"})
    assert not s.matches({"tier": "web", "app": "x", "canary": "1"})
    assert not s.matches({"tier": "web", "app": "x", "env": "prod"})
    assert not s.matches({"tier": "web"})


def test_pods_left_out_and_namespaces_named():
    assert parse_pod({"metadata": {"name": "h"}, "spec": {"hostNetwork": True}}) is None
    assert parse_pod({"metadata": {"name": "done"}, "status": {"phase": "Succeeded", "podIP": "10.0.0.1"}}) is None
    p = pod("x/a", ips=("10.244.0.5", "fd00::5"), ports=[("http", 8080, "TCP")])
    assert p.ips == (ipaddress.ip_address("10.244.0.5"), ipaddress.ip_address("fd00::5"))
    assert p.ports == (("http", "tcp", 8080),)
    assert parse_namespace({"metadata": {"name": "x"}}) == ("x", {"kubernetes.io/metadata.name": "x"})


def test_rules_do_not_grow_with_pods_elements_do():
    policies = [pol({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "peer"}}}],
                                                     "ports": [{"port": 80}, {"port": "http"}]}]})]

    def compiled(n):
        pods = [pod(f"x/p{i}", ips=(f"10.244.{i // 200}.{i % 200 + 2}",), labels={"pod": "peer"},
                    ports=[("http", 8080, "TCP")]) for i in range(n)]
        return compile_policies(policies, pods, {"x": {}}, "n1")

    small, large = compiled(10), compiled(500)
    # (numbered, named) for IPv4; no IPv6 rules: no pod has an IPv6 address, so none could match
    assert small.rule_count() == large.rule_count() == 2
    # per pod: ingress_iso, pol0_sel = r0i0_pods (the same content: one set), the named port
    assert large.element_count() == small.element_count() + 3 * 490
    assert set(small.sets) == {"pending4", "ingress_iso4", "egress_iso4", "pending6", "ingress_iso6",
                               "egress_iso6", "pol0_sel4", "r0i0_ports", "r0i0_named4"}
    assert "tcp . 80" in small.sets["r0i0_ports"][1]
    assert "10.244.0.2 . tcp . 8080" in small.sets["r0i0_named4"][1]


def test_policies_selecting_no_pod_of_this_node_make_no_rules():
    policies = [pol({"podSelector": {}, "ingress": [{}]})]
    c = compile_policies(policies, [pod("x/a", node="other")], {}, "n1")
    assert c.policies == 0 and c.rule_count() == 0 and c.isolating_namespaces == {"x"}


def test_members_of_a_pod_without_address_are_templates_the_plugin_fills():
    policies = [pol({"podSelector": {"matchLabels": {"pod": "new"}}, "egress": [{"ports": [{"port": "web"}]}],
                     "ingress": [{"ports": [{"port": "web"}]}]})]
    new = pod("x/new", ips=(), labels={"pod": "new"}, ports=[("web", 8080, "TCP")])
    c = compile_policies(policies, [new], {}, "n1")
    members = c.members[("x", "new")]
    assert (4, "ingress_iso4", "") in members and (6, "egress_iso6", "") in members
    assert (4, "r0i0_named4", " . tcp . 8080") in members
    elements = elements_of(members, [ipaddress.ip_address("10.244.0.9")])
    assert ["r0i0_named4", "10.244.0.9 . tcp . 8080"] in elements
    assert all(not e.startswith("fd") for _, e in elements)
    removal = render_remove(elements[:1])
    assert removal.startswith("add element inet pycni-policy") and "\ndelete element" in removal


def test_sctp_ports_and_merged_ranges_render():
    policies = [pol({"podSelector": {}, "ingress": [{"ports": [
        {"protocol": "SCTP", "port": 80}, {"port": 80, "endPort": 90}, {"port": 85}, {"port": 91}]}]})]
    c = compile_policies(policies, [pod("x/a")], {}, "n1")
    assert c.sets["r0i0_ports"][1] == ["sctp . 80", "tcp . 80-91"]    # nft refuses overlaps
    text = render(c, "inet pycni-policy", {4: ["10.244.0.99"]})
    assert text.startswith("add table inet pycni-policy\ndelete table inet pycni-policy\n")
    assert "set pending4 { type ipv4_addr; elements = { 10.244.0.99 } }" in text
    assert "ip daddr @pol0_sel4 meta l4proto . th dport @r0i0_ports return" in text


def test_an_api_address_enters_sets_only_for_the_attachment_that_holds_it_now():
    """Issue 23 row 2: a terminating Pod keeps status.podIPs after its DEL released the address;
    the node's records and IPAM decide, not the API."""
    from cni.agent.policy.enforce import Local, addresses

    ip = ipaddress.ip_address
    nets = (ipaddress.ip_network("10.244.0.0/24"),)
    gone = pod("y/friend", node="n1", ips=("10.244.0.5",))          # DEL done, object still listed
    reused = pod("y/stranger", node="n1", ips=())                   # ADD done, API not told yet
    remote = pod("z/far", node="n2", ips=("10.244.1.7",))           # another node's range
    stale = pod("z/moved", node="n2", ips=("10.244.0.9",))          # claims an address of our range
    before = pod("z/old", node="n1", ips=("10.244.0.8",))           # attached before policies: no record
    recorded = {("y/stranger".split("/")[0], "stranger"): [ip("10.244.0.5")]}
    mine = Local(nets, frozenset({ip("10.244.0.5"), ip("10.244.0.8")}))
    got = {p.key: p.ips for p in addresses([gone, reused, remote, stale, before], recorded, "n1", mine)}
    assert got == {("y", "friend"): (), ("y", "stranger"): (ip("10.244.0.5"),),
                   ("z", "far"): (ip("10.244.1.7"),), ("z", "moved"): (), ("z", "old"): (ip("10.244.0.8"),)}
    # without the record (B not attached yet) the freed address is still nobody's
    got = {p.key: p.ips for p in addresses([gone], {}, "n1", Local(nets, frozenset()))}
    assert got == {("y", "friend"): ()}
    # IPAM unreadable: no local API address is trusted
    assert addresses([before], {}, "n1", Local(nets, None))[0].ips == ()
    # and the compiled sets agree: a policy allowing friends has no element for the stranger's address
    allow = pol({"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "f"}}}]}]})
    friend = pod("y/friend", node="n1", ips=("10.244.0.5",), labels={"role": "f"})
    protected = pod("x/a", node="n1", ips=("10.244.0.2",))
    out = render(compile_policies([allow], addresses([friend, protected], {("x", "a"): [ip("10.244.0.2")]},
                                                     "n1", Local(nets, frozenset())), {"x": {}, "y": {}}, "n1"),
                 "inet t")
    assert "10.244.0.5" not in out


def test_policies_alike_in_content_emit_each_rule_once():
    """Issue 28: policies whose sets merge (same selected pods, same peers, same ports) rendered
    the same rule once per policy; a new connection walked every copy."""
    spec = {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "peer"}}}],
                                            "ports": [{"port": 80}]}],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "peer"}}}]}]}
    policies = [pol(spec, name=f"p{i}") for i in range(20)]
    pods = [pod("x/a"), pod("x/b", ips=("10.244.0.6",), labels={"pod": "peer"})]
    c = compile_policies(policies, pods, {"x": {}}, "n1")
    assert len(c.ingress) == len(set(c.ingress)) == 1, c.ingress
    assert len(c.egress) == len(set(c.egress)) == 1, c.egress
