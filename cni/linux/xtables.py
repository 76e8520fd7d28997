"""Which legacy x_tables (iptables) tables the kernel has registered in this namespace."""

from __future__ import annotations


def legacy_tables(family: int = 4) -> set[str]:
    """Tables registered in legacy x_tables in this namespace (empty on a pure nftables node)."""
    path = "/proc/net/ip_tables_names" if family == 4 else "/proc/net/ip6_tables_names"
    try:
        with open(path) as f:
            return set(f.read().split())
    except OSError:
        return set()
