"""ListPodSandbox over the runtime's CRI socket (gRPC on a unix socket), with the generated stubs."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from cni.agent.cri import api_pb2, api_pb2_grpc


class Unreachable(Exception):
    """The runtime did not answer: nothing may be concluded about its pods."""


@dataclass(frozen=True)
class Sandbox:
    id: str
    namespace: str
    name: str
    ready: bool
    created: float          # seconds since the epoch


def list_sandboxes(socket_path: str, timeout: float = 10.0) -> list[Sandbox]:
    """Every pod sandbox the runtime has, ready or not (a stopped sandbox's network is the
    runtime's to tear down with DEL: GC keeps it)."""
    channel = grpc.insecure_channel(f"unix://{socket_path}")
    try:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        reply = stub.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=timeout)
    except grpc.RpcError as e:
        raise Unreachable(f"{socket_path}: {e.code().name}: {e.details()}") from None
    finally:
        channel.close()
    return [Sandbox(s.id, s.metadata.namespace, s.metadata.name, s.state == api_pb2.SANDBOX_READY,
                    s.created_at / 1e9) for s in reply.items]
