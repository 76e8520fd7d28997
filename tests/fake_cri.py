"""A container runtime's CRI, as much as the agent's GC asks of it: `python tests/fake_cri.py
SOCKET ID...` serves runtime.v1.RuntimeService/ListPodSandbox on the unix socket SOCKET with one
ready sandbox per ID (generated stubs, the real gRPC server), prints "ready", and stops when its
stdin closes. Other calls answer UNIMPLEMENTED, as a runtime's unknown method does."""

from __future__ import annotations

import sys
from concurrent import futures

import grpc

from cni.agent.cri import api_pb2, api_pb2_grpc


class Runtime(api_pb2_grpc.RuntimeServiceServicer):
    def __init__(self, ids: list[str]):
        self.ids = ids

    def ListPodSandbox(self, request, context):
        return api_pb2.ListPodSandboxResponse(items=[
            api_pb2.PodSandbox(id=i, state=api_pb2.SANDBOX_READY if n % 2 == 0 else api_pb2.SANDBOX_NOTREADY,
                               metadata=api_pb2.PodSandboxMetadata(name=f"pod-{n}", namespace="default"))
            for n, i in enumerate(self.ids)])


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(Runtime(sys.argv[2:]), server)
    server.add_insecure_port("unix://" + sys.argv[1])
    server.start()
    print("ready", flush=True)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
