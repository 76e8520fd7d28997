"""Every manifest parses and matches the Kubernetes API schema, offline: each object is checked
field by field against the official `kubernetes` client's models (unknown fields, wrong types,
missing required fields are errors), then the DaemonSet's contract with the agent is checked."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client  # noqa: E402

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object,
              "datetime": str, "date": str}


def model_class(api_version: str, kind: str):
    group, _, version = api_version.rpartition("/")
    name = f"{version.capitalize()}{kind}"
    cls = getattr(client, name, None)
    assert cls is not None, f"no model for {api_version} {kind}"
    return cls


def check(value, type_name: str, path: str, errors: list[str]) -> None:
    """Strict structural check of `value` (the manifest's JSON) against a client model type."""
    if type_name.lower().startswith("list["):        # "list[V1Container]" or "List[V1Container]"
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list")
            return
        for i, item in enumerate(value):
            check(item, type_name[5:-1], f"{path}[{i}]", errors)
        return
    container = re.fullmatch(r"(?:dict\(str, (.+)\)|Dict\[str, (.+)\])", type_name)
    if container:
        inner = container.group(1) or container.group(2)
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping")
            return
        for k, v in value.items():
            check(v, inner, f"{path}.{k}", errors)
        return
    if type_name in PRIMITIVES:
        if type_name == "object":
            return
        if isinstance(value, bool) and type_name != "bool" or not isinstance(value, PRIMITIVES[type_name]):
            errors.append(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
        return
    cls = getattr(client, type_name)
    if not isinstance(value, dict):
        errors.append(f"{path}: expected an object ({type_name})")
        return
    by_json = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    for key, item in value.items():
        if key not in by_json:
            errors.append(f"{path}.{key}: unknown field of {type_name}")
            continue
        check(item, cls.openapi_types[by_json[key]], f"{path}.{key}", errors)


def objects() -> list[tuple[str, dict]]:
    out = []
    for f in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and doc.get("apiVersion", "").startswith("kind.x-k8s.io"):
                continue
            if doc:
                out.append((f"{f.name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}", doc))
    return out


@pytest.mark.parametrize("where, obj", objects(), ids=[w for w, _ in objects()])
def test_matches_the_api_schema(where, obj):
    cls = model_class(obj["apiVersion"], obj["kind"])
    errors: list[str] = []
    check(obj, cls.__name__, obj["kind"], errors)
    assert errors == []
    # the client's own deserializer enforces required fields and enums
    api = client.ApiClient()
    model = api._ApiClient__deserialize(obj, cls.__name__)
    assert api.sanitize_for_serialization(model)["kind"] == obj["kind"]


def test_a_broken_manifest_is_caught():
    """The checker is not a rubber stamp: typos, wrong types and missing names fail."""
    ds = next(o for _, o in objects() if o["kind"] == "DaemonSet")
    broken = yaml.safe_load(yaml.safe_dump(ds))
    broken["spec"]["template"]["spec"]["hostNetwrok"] = True
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["readOnly"] = "yes"
    errors: list[str] = []
    check(broken, "V1DaemonSet", "DaemonSet", errors)
    assert len(errors) == 2
    assert any("hostNetwrok: unknown field" in e for e in errors)
    assert any("readOnly: expected bool" in e for e in errors)
    del broken["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ValueError):
        client.ApiClient()._ApiClient__deserialize(broken, "V1DaemonSet")


def test_daemonset_contract():
    objs = {(o["kind"], o["metadata"]["name"]): o for _, o in objects()}
    ds = objs[("DaemonSet", "pycni")]
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    assert ("ServiceAccount", pod["serviceAccountName"]) in objs
    rules = objs[("ClusterRole", "pycni")]["rules"]
    for group, kind in (("", "nodes"), ("", "pods"), ("", "namespaces"), ("networking.k8s.io", "networkpolicies")):
        assert any(group in r["apiGroups"] and kind in r["resources"] and {"list", "watch"} <= set(r["verbs"])
                   for r in rules), kind
    binding = objs[("ClusterRoleBinding", "pycni")]
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    (agent,) = pod["containers"]
    caps = agent["securityContext"]["capabilities"]["add"]
    assert {"NET_ADMIN", "NET_RAW"} <= set(caps)
    assert {"SYS_ADMIN", "SYS_CHROOT"} <= set(caps)          # the helper's setns into the caller's
    sc = agent["securityContext"]     # issue 28 row 14 (each capability tested: test_capabilities.py)
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    metrics_host = next(a for a in agent["args"] if a.startswith("--metrics-address=")).split("=")[1].rpartition(":")[0]
    assert metrics_host == "127.0.0.1"                       # issue 28 row 6: out of pods' reach
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    host = {volumes[m["name"]]: path for path, m in mounts.items()}
    assert set(host) == {"/opt/cni/bin", "/etc/cni/net.d", "/run/pycni", "/run/xtables.lock", "/var/run/netns",
                         "/run/containerd/containerd.sock"}
    assert mounts["/var/run/netns"]["mountPropagation"] == "HostToContainer"
    args = dict(a.removeprefix("--").split("=", 1) for a in agent["args"])
    assert args["bin-dir"] == host["/opt/cni/bin"] and args["conf-dir"] == host["/etc/cni/net.d"]
    assert args["data-dir"].startswith(host["/run/pycni"])           # IPAM data on the node's tmpfs
    assert args["policy-dir"].startswith(host["/run/pycni"] + "/")   # policy state too; on by default
    assert "no-network-policy" not in args
    # GC asks the node's runtime (kind: containerd) through its socket, mounted at the path given
    assert host["/run/containerd/containerd.sock"] == args["cri-socket"] and "gc-every" not in args
    # the probes ask the agent's own server, on the port it serves
    port = int(args["metrics-address"].rpartition(":")[2])
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port, "host": "127.0.0.1"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port, "host": "127.0.0.1"}
    # the helper runs the installed build at the node's own path (same build identity, same files
    # after its child enters the caller's mount namespace) and listens where the node's plugin looks
    assert host["/opt/cni/bin"] == "/opt/cni/bin"
    from cni.runtime.client import DEFAULT_SOCKET

    assert args["helper"] == DEFAULT_SOCKET and DEFAULT_SOCKET.startswith(host["/run/pycni"] + "/")
    # the container's memory limit holds because the helper's children are bounded (issue 25)
    assert int(args["helper-max-calls"]) <= 16
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # the agent's command line parses
    from cni.cli import _parser

    parsed = _parser().parse_args(["agent", *[a.replace("$(POD_SUBNETS)", env["POD_SUBNETS"]["value"])
                                              for a in agent["args"]]])
    assert parsed.source == "/opt/pycni/plugin"
    # kind's podSubnet is the agent's cluster CIDR
    kind = yaml.safe_load((MANIFESTS / "kind-config.yaml").read_text())
    assert kind["networking"]["disableDefaultCNI"] is True
    assert kind["networking"]["podSubnet"] == env["POD_SUBNETS"]["value"]


def test_kind_config():
    kind = yaml.safe_load((MANIFESTS / "kind-config.yaml").read_text())
    assert kind["apiVersion"] == "kind.x-k8s.io/v1alpha4" and kind["kind"] == "Cluster"
    assert set(kind) <= {"kind", "apiVersion", "name", "networking", "nodes", "featureGates",
                         "runtimeConfig", "kubeadmConfigPatches", "containerdConfigPatches"}
    assert set(kind["networking"]) <= {"ipFamily", "apiServerPort", "apiServerAddress", "podSubnet",
                                       "serviceSubnet", "disableDefaultCNI", "kubeProxyMode", "dnsSearch"}
    assert all(n["role"] in ("control-plane", "worker") for n in kind["nodes"])


def test_containerd_snippet():
    conf = tomllib.loads((MANIFESTS / "containerd-config.toml").read_text())
    assert conf["version"] == 2
    cni = conf["plugins"]["io.containerd.grpc.v1.cri"]["cni"]
    assert cni == {"bin_dir": "/opt/cni/bin", "conf_dir": "/etc/cni/net.d", "max_conf_num": 1}
