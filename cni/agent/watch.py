"""The agent's view of the cluster: list and watch Nodes with the official `kubernetes` client
(imported here only), converting each to the API's JSON so `nodes.parse_node` reads it exactly as
it reads a file. Calls `on_change(nodes)` with the full set after every change."""

from __future__ import annotations

import time
from typing import Callable

from cni.spec.log import log
from cni.agent.nodes import NodeError, NodeInfo, parse_node

RESYNC_SECONDS = 300       # the watch is re-opened (and everything re-synced) at least this often


def follow(on_change: Callable[[list[NodeInfo]], None], kubeconfig: str | None = None,
           stop: Callable[[], bool] = lambda: False) -> None:
    try:
        from kubernetes import client, config, watch
        from kubernetes.client.exceptions import ApiException
    except ImportError:
        raise SystemExit("pycni agent: this build has no Kubernetes client; run pycni-agent (the "
                         "DaemonSet image) or install pycni[agent], or pass --nodes-file") from None

    if kubeconfig:
        config.load_kube_config(kubeconfig)
    else:
        config.load_incluster_config()
    v1 = client.CoreV1Api()
    api = client.ApiClient()
    backoff = 1.0

    def info(obj) -> NodeInfo | None:
        try:
            return parse_node(api.sanitize_for_serialization(obj))
        except NodeError as e:
            log.error(f"agent: ignoring a node: {e}")
            return None

    while not stop():
        try:
            listed = v1.list_node()
            nodes = {n.name: n for n in map(info, listed.items) if n is not None}
            on_change(list(nodes.values()))
            version = listed.metadata.resource_version
            for event in watch.Watch().stream(v1.list_node, resource_version=version,
                                              timeout_seconds=RESYNC_SECONDS):
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    break
                node = info(obj)
                if node is None:
                    continue
                if kind == "DELETED":
                    nodes.pop(node.name, None)
                else:
                    nodes[node.name] = node
                on_change(list(nodes.values()))
                if stop():
                    return
            backoff = 1.0
        except Exception as e:         # network trouble, API server restarting, ...
            if isinstance(e, ApiException) and e.status == 410:
                continue               # 410 Gone: our resourceVersion expired, list again at once
            log.error(f"agent: {type(e).__name__}: {e}")
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
