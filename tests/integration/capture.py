"""A packet capture for tests, run inside a test namespace only (no tcpdump needed): every IPv4 and
IPv6 frame any interface of the namespace receives or sends, reduced to its outer addresses, its
protocol and UDP destination port, and for VXLAN (UDP to PORT) the inner packet's addresses.

    capture.py PORT      prints "ready" once listening; on end of stdin prints one JSON list of
                         distinct [ifname, outer src, outer dst, protocol, UDP dport, inner src, inner dst]
"""

import ipaddress
import json
import selectors
import socket
import struct
import sys

ETH_P_ALL = 0x0003


def _ip(frame: bytes, offset: int):
    """(src, dst, protocol, payload offset) of the IP packet at `offset`, or None."""
    ethertype = struct.unpack_from("!H", frame, offset - 2)[0]
    if ethertype == 0x0800 and len(frame) >= offset + 20:
        ihl = (frame[offset] & 0x0F) * 4
        return (str(ipaddress.IPv4Address(frame[offset + 12:offset + 16])),
                str(ipaddress.IPv4Address(frame[offset + 16:offset + 20])), frame[offset + 9], offset + ihl)
    if ethertype == 0x86DD and len(frame) >= offset + 40:
        return (str(ipaddress.IPv6Address(frame[offset + 8:offset + 24])),
                str(ipaddress.IPv6Address(frame[offset + 24:offset + 40])), frame[offset + 6], offset + 40)
    return None


def summarize(frame: bytes, ifname: str, vxlan_port: int):
    outer = _ip(frame, 14)
    if outer is None:
        return None
    src, dst, proto, payload = outer
    dport, inner = 0, (None, None)
    if proto == 17 and len(frame) >= payload + 8:
        dport = struct.unpack_from("!H", frame, payload + 2)[0]
        if dport == vxlan_port:
            found = _ip(frame, payload + 8 + 8 + 14)     # UDP, VXLAN header, inner Ethernet
            if found is not None:
                inner = found[:2]
    return (ifname, src, dst, proto, dport, *inner)


def main() -> None:
    port = int(sys.argv[1])
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    # unbound: every interface of this namespace (a packet socket sees its own namespace only)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "sock")
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    print("ready", flush=True)
    seen = set()
    while True:
        for key, _ in sel.select():
            if key.data == "stdin":
                if not sys.stdin.readline():
                    print(json.dumps(sorted(seen, key=str)), flush=True)
                    return
                continue
            frame, addr = sock.recvfrom(65536)
            row = summarize(frame, addr[0], port)
            if row is not None:
                seen.add(row)


if __name__ == "__main__":
    main()
