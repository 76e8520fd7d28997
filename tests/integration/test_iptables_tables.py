"""The iptables backend touches only the tables pycni writes (issue 28): python-iptables opened
every legacy table of the family to ask whether a jump's target is a chain, and opening one
creates it, so one ADD left filter, mangle, raw and security behind (empty built-in chains every
packet of the node then walked)."""

from __future__ import annotations

from .conftest import netconf, node  # noqa: F401  (node: the fixture)


def test_an_iptables_add_and_del_leave_only_the_nat_table(node):
    conf = netconf(node, ranges=[[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd88::/64"}]], ipMasq=True,
                   backend="iptables", capabilities={"portMappings": True},
                   runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    pod = node.pod()
    res = node.pycni("ADD", conf, pod)
    assert res.rc == 0, res.out
    assert "PYCNI" in node.sh("iptables-legacy-save", "-t", "nat")     # the rules are there
    assert "PYCNI" in node.sh("ip6tables-legacy-save", "-t", "nat")
    for names in ("/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"):
        assert node.sh("cat", names).split() == ["nat"], names
    assert node.pycni("DEL", conf, pod).rc == 0
    for names in ("/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"):
        assert node.sh("cat", names).split() == ["nat"], names
