"""Flush UDP conntrack entries of host ports, so a new pod gets the traffic a stale entry held.

Done after the rules go in on ADD (reference plugins PR #553) and also on DEL (which the reference
still misses: plugins#1190). Failures are logged, never fatal: the rules are what matters.
"""

from __future__ import annotations

import socket
from typing import Iterable

from cni.spec.log import log


def flush_udp_ports(ports: Iterable[int]) -> int:
    """Delete the UDP entries whose original destination port is one of `ports`: one walk of the
    table per address family, whatever the number of ports (the kernel has no filter by port, so
    a walk per port cost a full dump each)."""
    ports = frozenset(ports)
    if not ports:
        return 0
    removed = 0
    try:
        # lazy: pyroute2's conntrack only when UDP entries are flushed
        from pyroute2.conntrack import Conntrack
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

        for family in (socket.AF_INET, socket.AF_INET6):
            ct = Conntrack(nfgen_family=family)     # a socket dumps the family it was made for
            try:
                flt = NFCTAttrTuple(family=family, proto=socket.IPPROTO_UDP)
                stale = [e for e in ct.dump_entries(tuple_orig=flt) if e.tuple_orig.dport in ports]
                for entry in stale:
                    try:
                        ct.delete(entry)
                        removed += 1
                    except Exception as e:   # raced with expiry
                        log.debug(f"conntrack delete: {e}")
            finally:
                ct.close()
    except Exception as e:
        log.warning(f"could not flush UDP conntrack entries for {len(ports)} ports: {e}")
    return removed
