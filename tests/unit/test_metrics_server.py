"""The agent's metrics server under clients that misbehave (issue 28 row 6), on loopback: what a
connection may cost is bounded, and a well-behaved request is answered whatever the others do."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from cni.agent.metrics import MetricsServer


@pytest.fixture
def server():
    s = MetricsServer("127.0.0.1", 0, lambda path: (200, f"ok {path}\n".encode(), "text/plain"),
                      max_connections=8, seconds=0.5)
    yield s
    s.shutdown()


def get(addr, path="/healthz", method="GET") -> bytes:
    with socket.create_connection(addr, timeout=3) as c:
        c.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        out = b""
        while chunk := c.recv(4096):
            out += chunk
    return out


def closed(sock: socket.socket, within: float = 3.0) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_answers_and_closes(server):
    out = get(server.server_address)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nok /healthz\n")
    assert b"Connection: close" in out
    assert get(server.server_address, method="HEAD").endswith(b"\r\n\r\n")
    assert get(server.server_address, method="POST").startswith(b"HTTP/1.1 405")


def test_more_idle_connections_than_allowed_close_the_oldest_and_requests_still_get_answers():
    server = MetricsServer("127.0.0.1", 0, lambda path: (200, b"ok\n", "text/plain"), max_connections=8,
                           seconds=60)       # the deadline plays no part here
    idle = [socket.create_connection(server.server_address) for _ in range(20)]
    try:
        time.sleep(0.1)
        assert get(server.server_address).startswith(b"HTTP/1.1 200")
        assert closed(idle[0]) and closed(idle[11])          # the oldest went first
        assert len(server.open) <= 8
        assert not closed(idle[-1], within=0.3)             # the newest stay
    finally:
        for s in idle:
            s.close()
        server.shutdown()


def test_a_slow_client_is_cut_off_at_the_deadline(server):
    c = socket.create_connection(server.server_address)
    try:
        c.sendall(b"GET /metrics HTTP/1.1\r\n")
        stop = threading.Event()

        def drip():
            while not stop.wait(0.1):
                try:
                    c.sendall(b"X")
                except OSError:
                    return
        threading.Thread(target=drip, daemon=True).start()
        assert closed(c, within=3.0)      # seconds=0.5 from accept, whatever it keeps sending
        stop.set()
    finally:
        c.close()


def test_a_request_larger_than_the_bound_is_dropped(server):
    c = socket.create_connection(server.server_address)
    try:
        c.sendall(b"GET / HTTP/1.1\r\nX: " + b"a" * 20000)
        assert closed(c)
    finally:
        c.close()
