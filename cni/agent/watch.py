"""The agent's view of the cluster: list and watch one kind of object with the official
`kubernetes` client (imported here only), converting each to the API's JSON so the pure parsers
(`nodes.parse_node`, `policy.objects`) read it exactly as they read a file. After the list and
after every event, `on_change` gets the whole set, keyed by (namespace, name). A watch that
ends is re-opened; 410 Gone (our resourceVersion expired) lists again at once."""

from __future__ import annotations

import time
from typing import Any, Callable

from cni.spec.log import log
from cni.agent.nodes import NodeError, NodeInfo, parse_node

RESYNC_SECONDS = 300       # the watch is re-opened (and everything re-synced) at least this often

Objects = dict[tuple[str, str], dict]


def _client():
    try:
        # lazy: the Kubernetes client is the agent's alone (not in the plugin's build)
        from kubernetes import client, config, watch
        from kubernetes.client.exceptions import ApiException
    except ImportError:
        raise SystemExit("pycni agent: this build has no Kubernetes client; run pycni-agent (the "
                         "DaemonSet image) or install pycni[agent], or pass --nodes-file") from None
    return client, config, watch, ApiException


def load_config(kubeconfig: str | None) -> None:
    _, config, _, _ = _client()
    if kubeconfig:
        config.load_kube_config(kubeconfig)
    else:
        config.load_incluster_config()


def lister(kind: str) -> Callable[..., Any]:
    """The client's list call of `kind` (all namespaces)."""
    client = _client()[0]
    core, net = client.CoreV1Api(), client.NetworkingV1Api()
    return {"nodes": core.list_node, "pods": core.list_pod_for_all_namespaces,
            "namespaces": core.list_namespace,
            "networkpolicies": net.list_network_policy_for_all_namespaces}[kind]


def _key(obj: dict) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


def follow_objects(list_call: Callable[..., Any], on_change: Callable[[Objects], None],
                   stop: Callable[[], bool] = lambda: False, what: str = "objects") -> None:
    client, _, watch, ApiException = _client()
    api = client.ApiClient()
    backoff = 1.0
    while not stop():
        try:
            listed = list_call()
            objects = {_key(o): o for o in map(api.sanitize_for_serialization, listed.items)}
            on_change(dict(objects))
            version = listed.metadata.resource_version
            for event in watch.Watch().stream(list_call, resource_version=version,
                                              timeout_seconds=RESYNC_SECONDS):
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    break
                obj = api.sanitize_for_serialization(obj)
                if kind == "DELETED":
                    objects.pop(_key(obj), None)
                else:
                    objects[_key(obj)] = obj
                on_change(dict(objects))
                if stop():
                    return
            backoff = 1.0
        except Exception as e:         # network trouble, API server restarting, ...
            if isinstance(e, ApiException) and e.status == 410:
                continue               # 410 Gone: our resourceVersion expired, list again at once
            log.error(f"agent: watching {what}: {type(e).__name__}: {e}")
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)


def follow(on_change: Callable[[list[NodeInfo]], None], kubeconfig: str | None = None,
           stop: Callable[[], bool] = lambda: False) -> None:
    """Nodes, parsed: on_change(every node that parses)."""
    load_config(kubeconfig)

    def nodes(objects: Objects) -> None:
        out = []
        for obj in objects.values():
            try:
                out.append(parse_node(obj))
            except NodeError as e:
                log.error(f"agent: ignoring a node: {e}")
        on_change(out)

    follow_objects(lister("nodes"), nodes, stop, "nodes")
