"""Tiny TCP/UDP echo server and client for traffic tests, run inside test namespaces only.

    netapp.py serve NAME PORT            answer "<NAME> <peer address>" on TCP and UDP (v4 and v6)
    netapp.py tcp ADDR PORT              print the answer of a TCP server
    netapp.py udp ADDR PORT [SRCPORT]    print the answer of a UDP server (from a fixed source port)

The server stops by itself after 300 s; clients give up after 2 s and print nothing.
"""

import selectors
import socket
import sys
import time


def serve(name: str, port: int) -> None:
    sel = selectors.DefaultSelector()
    tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    for s, kind in ((tcp, "tcp"), (udp, "udp")):
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", port))
        sel.register(s, selectors.EVENT_READ, kind)
    tcp.listen(16)
    print("ready", flush=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            if key.data == "tcp":
                conn, peer = tcp.accept()
                conn.sendall(f"{name} {_plain(peer[0])}\n".encode())
                conn.close()
            else:
                _, peer = udp.recvfrom(2048)
                udp.sendto(f"{name} {_plain(peer[0])}\n".encode(), peer)


def _plain(addr: str) -> str:
    return addr[7:] if addr.startswith("::ffff:") else addr


def client(kind: str, addr: str, port: int, src_port: int = 0) -> None:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        if kind == "tcp":
            with socket.create_connection((addr, port), timeout=2) as s:
                print(s.recv(2048).decode().strip())
        else:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.settimeout(2)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if src_port:
                    s.bind(("", src_port))
                s.sendto(b"hi", (addr, port))
                print(s.recvfrom(2048)[0].decode().strip())
    except OSError:
        pass


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        client(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0)
