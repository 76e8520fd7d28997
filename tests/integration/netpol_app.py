"""Servers and probes for the NetworkPolicy tests, run inside test namespaces only.

    netpol_app.py serve NAME PORT...     answer NAME on TCP and UDP on each PORT (v4 and v6)
    netpol_app.py probe TIMEOUT JSON     JSON = [[addr, port, "tcp"|"udp"], ...]: probe them all at
                                         once, print a JSON list of the answers ("" = no answer)

A dropped packet shows as no answer within TIMEOUT seconds. Servers stop by themselves after 600 s.
"""

import json
import selectors
import socket
import sys
import threading
import time


def serve(name: str, ports: list[int]) -> None:
    sel = selectors.DefaultSelector()
    for port in ports:
        for kind, typ in (("tcp", socket.SOCK_STREAM), ("udp", socket.SOCK_DGRAM)):
            s = socket.socket(socket.AF_INET6, typ)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::", port))
            if kind == "tcp":
                s.listen(64)
            sel.register(s, selectors.EVENT_READ, kind)
    print("ready", flush=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            s = key.fileobj
            try:
                if key.data == "tcp":
                    conn, _ = s.accept()
                    conn.sendall(name.encode())
                    conn.close()
                else:
                    _, peer = s.recvfrom(2048)
                    s.sendto(name.encode(), peer)
            except OSError:
                pass


def _one(addr: str, port: int, proto: str, timeout: float) -> str:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        if proto == "tcp":
            with socket.create_connection((addr, port), timeout=timeout) as s:
                s.settimeout(timeout)
                return s.recv(256).decode()
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(b"?", (addr, port))
            return s.recv(256).decode()
    except OSError:
        return ""


def probe(timeout: float, targets: list) -> None:
    out = [""] * len(targets)

    def run(i, t):
        out[i] = _one(t[0], int(t[1]), t[2], timeout)

    threads = [threading.Thread(target=run, args=(i, t)) for i, t in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], [int(p) for p in sys.argv[3:]])
    elif sys.argv[1] == "probe":
        probe(float(sys.argv[2]), json.loads(sys.argv[3]))
