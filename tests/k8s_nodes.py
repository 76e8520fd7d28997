"""Node objects in the Kubernetes API's JSON, as the agent's tests feed them (list, watch, file)."""

from __future__ import annotations


def node_object(name: str, pod_cidrs: list[str], internal_ips: list[str] = (), legacy: bool = False,
                resource_version: str | None = None) -> dict:
    """A v1.Node; `legacy` sets only spec.podCIDR, as clusters before dual-stack did."""
    spec = {"podCIDR": pod_cidrs[0]} if legacy else {"podCIDR": pod_cidrs[0], "podCIDRs": list(pod_cidrs)}
    meta = {"name": name, "labels": {"kubernetes.io/hostname": name}}
    if resource_version:
        meta["resourceVersion"] = resource_version
    addresses = [{"type": "InternalIP", "address": a} for a in internal_ips]
    addresses.append({"type": "Hostname", "address": name})
    return {"apiVersion": "v1", "kind": "Node", "metadata": meta, "spec": spec,
            "status": {"addresses": addresses}}


def node_list(*nodes: dict, resource_version: str | None = None) -> dict:
    meta = {"resourceVersion": resource_version} if resource_version else {}
    return {"apiVersion": "v1", "kind": "NodeList", "metadata": meta, "items": list(nodes)}
