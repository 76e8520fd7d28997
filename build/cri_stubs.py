"""Generates the CRI stubs the agent's GC talks to the runtime with: cni/agent/cri/api_pb2.py and
api_pb2_grpc.py from cni/agent/cri/api.proto (k8s.io/cri-api runtime/v1, as published), with
grpcio-tools' protoc. Run by scripts/setup.sh and build/image.sh; the generated files are not
kept in git (.gitignore).

    .venv/bin/python build/cri_stubs.py
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO = os.path.join("cni", "agent", "cri", "api.proto")


def main() -> int:
    from grpc_tools import protoc  # only at build time

    os.chdir(ROOT)
    out = [os.path.join("cni", "agent", "cri", n) for n in ("api_pb2.py", "api_pb2_grpc.py")]
    if all(os.path.exists(p) and os.path.getmtime(p) >= os.path.getmtime(PROTO) for p in out):
        return 0
    code = protoc.main(["protoc", "-I.", "--python_out=.", "--grpc_python_out=.", PROTO])
    if code != 0:
        print(f"cri_stubs: protoc failed ({code}) on {PROTO}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
