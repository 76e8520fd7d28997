"""A minimal CRI client (the kubelet's side of containerd's CRI plugin) for the end-to-end tests.

Only the calls a pod's network life needs: Status, RunPodSandbox, PodSandboxStatus, StopPodSandbox,
RemovePodSandbox of `runtime.v1.RuntimeService`. Messages are written and read with a few lines of
protobuf wire format (field numbers of k8s.io/cri-api runtime/v1), so the tests need grpcio only,
no generated code.
"""

from __future__ import annotations

import struct
from typing import Any

import grpc

SERVICE = "/runtime.v1.RuntimeService/"
TCP, UDP = 0, 1


# ------------------------------------------------------------------ protobuf wire format

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode(fields: list[tuple[int, Any]]) -> bytes:
    """fields: (number, value); value is int/bool (varint), str/bytes (length-delimited) or a
    nested field list (a message). Repeat a number for repeated fields; maps are repeated
    messages of (1: key, 2: value)."""
    out = bytearray()
    for num, value in fields:
        if isinstance(value, bool) or isinstance(value, int):
            out += _varint(num << 3) + _varint(int(value))
        else:
            data = value.encode() if isinstance(value, str) else \
                value if isinstance(value, bytes) else encode(value)
            out += _varint(num << 3 | 2) + _varint(len(data)) + data
    return bytes(out)


def decode(data: bytes) -> dict[int, list]:
    """Field number -> values (ints for varints, bytes for length-delimited)."""
    fields: dict[int, list] = {}
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(data, i)
        elif wire == 2:
            size, i = _read_varint(data, i)
            value, i = data[i:i + size], i + size
        elif wire == 1:
            value, i = struct.unpack_from("<Q", data, i)[0], i + 8
        elif wire == 5:
            value, i = struct.unpack_from("<I", data, i)[0], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        fields.setdefault(num, []).append(value)
    return fields


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i


def _map(entries: dict[str, str]) -> list[list[tuple[int, str]]]:
    """A protobuf map: one (1: key, 2: value) message per entry."""
    return [[(1, k), (2, v)] for k, v in entries.items()]


# ------------------------------------------------------------------ the calls


class CRI:
    def __init__(self, socket_path: str, timeout: float = 60):
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: str, request: bytes) -> dict[int, list]:
        rpc = self.channel.unary_unary(SERVICE + method, request_serializer=None,
                                       response_deserializer=None)
        return decode(rpc(request, timeout=self.timeout))

    def conditions(self) -> dict[str, tuple[bool, str]]:
        """RuntimeReady / NetworkReady -> (status, reason + message)."""
        status = decode(self._call("Status", b"").get(1, [b""])[0])
        found = {}
        for raw in status.get(1, []):
            c = decode(raw)
            found[c.get(1, [b""])[0].decode()] = (
                bool(c.get(2, [0])[0]),
                (c.get(3, [b""])[0] + b" " + c.get(4, [b""])[0]).decode().strip())
        return found

    def run_pod(self, name: str, uid: str, namespace: str = "default",
                ports: list[tuple[int, int, int]] = (), log_dir: str = "",
                annotations: dict[str, str] | None = None) -> str:
        """ports: (protocol, container_port, host_port). Returns the sandbox id."""
        config = [
            (1, [(1, name), (2, uid), (3, namespace), (4, 0)]),
            (2, name),
            *([(3, log_dir)] if log_dir else []),
            *[(5, [(1, proto), (2, cport), (3, hport)]) for proto, cport, hport in ports],
            *[(6, e) for e in _map({"io.kubernetes.pod.name": name})],
            *[(7, e) for e in _map(annotations or {})],
            (8, [(1, ""), (2, [(1, [(1, 0), (2, 1), (3, 0)])])]),   # netns POD, pid CONTAINER, ipc POD
        ]
        reply = self._call("RunPodSandbox", encode([(1, config)]))
        return reply[1][0].decode()

    def pod_ips(self, sandbox_id: str) -> list[str]:
        reply = self._call("PodSandboxStatus", encode([(1, sandbox_id)]))
        status = decode(reply[1][0])
        network = decode(status.get(5, [b""])[0])
        ips = [network.get(1, [b""])[0].decode()]
        ips += [decode(extra)[1][0].decode() for extra in network.get(2, [])]
        return [ip for ip in ips if ip]

    def stop_pod(self, sandbox_id: str) -> None:
        self._call("StopPodSandbox", encode([(1, sandbox_id)]))

    def remove_pod(self, sandbox_id: str) -> None:
        self._call("RemovePodSandbox", encode([(1, sandbox_id)]))
