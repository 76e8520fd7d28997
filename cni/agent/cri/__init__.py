"""The container runtime's CRI (k8s.io/cri-api runtime/v1), as the agent's GC asks it which pod
sandboxes exist. api.proto is the published CRI definition, unchanged; api_pb2.py and
api_pb2_grpc.py are generated from it by build/cri_stubs.py (scripts/setup.sh and build/image.sh
run it) and are not kept in git."""
