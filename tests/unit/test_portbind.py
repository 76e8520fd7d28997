"""Port binding (cni.firewall.portbind): the elements of an attachment and the rendered nft text."""

import ipaddress

from cni.bridge import config
from cni.firewall import portbind as pb

def binding(level=pb.STRICT, ips=("10.1.0.5", "fd00::5")):
    return pb.Binding("net", "c1", "eth0", "vethb5a04c6bb5e", "02:42:0a:01:00:05",
                      tuple(ipaddress.ip_address(i) for i in ips), level)


def test_link_local_is_eui64():
    assert str(pb.link_local("02:42:0a:01:00:05")) == "fe80::42:aff:fe01:5"
    assert str(pb.link_local("d2:ae:d4:8f:97:22")) == "fe80::d0ae:d4ff:fe8f:9722"


def test_elements_of_a_full_binding():
    port = '"vethb5a04c6bb5e"'
    assert pb.elements(binding()) == [
        ("ports", port), ("mac", f"{port} . 02:42:0a:01:00:05"), ("bound", port),
        ("addr4", f"{port} . 10.1.0.5"), ("addr6", f"{port} . fd00::5"),
        ("ll6", f"{port} . fe80::42:aff:fe01:5"),
        ("nd6", f"{port} . 0xfd000000000000000000000000000005"),
        ("nd6", f"{port} . 0xfe8000000000000000420afffe010005"),
    ]


def test_macspoofchk_binds_only_the_mac():
    port = '"vethb5a04c6bb5e"'
    assert pb.elements(binding(pb.MAC_ONLY)) == [("ports", port), ("mac", f"{port} . 02:42:0a:01:00:05")]


def test_render_add_and_delete():
    b = binding(ips=("10.1.0.5",))
    tag = b.tag
    assert tag == "a08a0fcb-6e5fcbeeefc74e29 pycni net/c1/eth0"
    add = pb.render_add(b).splitlines()
    assert add[0] == "add element bridge pycni base_v1 { 0 }"
    assert add[1] == f'add element bridge pycni ports {{ "vethb5a04c6bb5e" comment "{tag}" }}'
    assert len(add) == 1 + len(pb.elements(b))
    delete = pb.render_delete(b).splitlines()
    assert delete[:2] == [f'add element bridge pycni ports {{ "vethb5a04c6bb5e" comment "{tag}" }}',
                          'delete element bridge pycni ports { "vethb5a04c6bb5e" }']


def test_base_drops_what_a_pod_port_may_not_send():
    base = pb.render_base()
    for rule in ("from_pod iifname . ether saddr != @mac drop",
                 "from_pod ether type != { ip, ip6, arp } drop",
                 "from_pod iifname . arp saddr ip != @addr4 drop",
                 "from_pod iifname . ip saddr != @addr4 drop",
                 "from_pod icmpv6 type { nd-router-advert, nd-redirect } drop",
                 "from_pod icmpv6 type nd-neighbor-advert iifname . @th,64,128 != @nd6 drop",
                 "to_pod oifname . ip daddr != @addr4 drop",
                 "to_pod oifname . ip6 daddr != @addr6 drop"):
        assert f"add rule bridge pycni {rule}\n" in base
    assert "hook prerouting priority -300" in base and "hook forward priority -300" in base


def test_tagged_listing_reads_back_as_keys():
    listing = [{"set": {"name": "mac", "elem": [{"elem": {"val": {"concat": ["vethx", "02:00:00:00:00:01"]},
                                                          "comment": "c"}}]}},
               {"set": {"name": "ports", "elem": [{"elem": {"val": "vethx", "comment": "c"}}]}},
               {"set": {"name": "base_v1", "elem": [0]}}]
    assert pb.tagged(listing) == [("mac", '"vethx" . 02:00:00:00:00:01', "c"), ("ports", '"vethx"', "c")]


def test_options():
    base = {"cniVersion": "1.0.0", "name": "n", "type": "pycni"}
    assert config.parse(base).binds_port == ""
    assert config.parse({**base, "macspoofchk": True}).binds_port == "mac"
    assert config.parse({**base, "portBinding": True}).binds_port == "ports"
    assert config.parse({**base, "networkPolicy": "/run/x"}).binds_port == "ports"
    # DEL of a config ADD refuses: an option that does not parse unbinds (finds the most)
    assert config.parse_for_delete({**base, "mtu": 1, "portBinding": "yes"}).binds_port == "ports"
    assert config.parse_for_delete({**base, "mtu": 1}).binds_port == ""


def test_del_and_gc_finish_where_nftables_is_missing():
    """An iptables-only node never bound a port: GC and DEL have nothing to do there, and must not
    fail for want of nft (seen failing with `cannot run nft` before the check)."""
    import os
    import subprocess
    import sys

    code = ("from cni.firewall import portbind as p\n"
            "p.gc('net', set())\n"
            "p.unbind_start('net', 'c', 'eth0', '02:00:00:00:00:01', ())()\n"
            "p.unbind_start('net', 'c', 'eth0')()\n")
    env = {**os.environ, "PATH": "/nonexistent", "PYCNI_NFT": "exec"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
