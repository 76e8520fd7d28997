"""The agent's own API client (cni.agent.kube): List documents decoded one item at a time
whatever the order of their members, and kubeconfig files read as kubectl reads them."""

from __future__ import annotations

import json

import pytest

from cni.agent import kube


def decode(text: str):
    items: list = []
    rest = kube.decode_list(text, items.append)
    return items, rest


@pytest.mark.parametrize("doc", [
    {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7", "continue": "abc"},
     "items": [{"metadata": {"name": "a"}}, {"metadata": {"name": "b", "x": [1, {"items": []}]}}]},
    {"items": [{"metadata": {"name": "a"}}, {"metadata": {"name": "b", "x": [1, {"items": []}]}}],
     "metadata": {"resourceVersion": "7", "continue": "abc"}, "kind": "PodList"},
])
def test_a_list_is_decoded_item_by_item_in_any_member_order(doc):
    for text in (json.dumps(doc), json.dumps(doc, indent=2), json.dumps(doc, separators=(",", ":"))):
        items, rest = decode(text)
        assert items == doc["items"]
        assert rest["metadata"] == {"resourceVersion": "7", "continue": "abc"}


def test_empty_and_broken_lists():
    assert decode('{"items": [], "metadata": {}}') == ([], {"metadata": {}})
    assert decode("{}") == ([], {})
    assert decode('{"items": null, "metadata": {}}') == ([], {"items": None, "metadata": {}})
    for bad in ('[1]', '{"items": [{"a": 1} {"b": 2}]}', '{"items": [', ''):
        with pytest.raises(ValueError):
            decode(bad)


def kubeconfig(tmp_path, user: dict, server: str = "http://127.0.0.1:6443/prefix/", **cluster) -> str:
    path = tmp_path / "config"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    return str(path)


def test_kubeconfig_token_and_token_file(tmp_path):
    c = kube.from_kubeconfig(kubeconfig(tmp_path, {"token": "s3cret"}))
    assert (c.host, c.port, c.base, c.context) == ("127.0.0.1", 6443, "/prefix", None)
    assert c.headers()["Authorization"] == "Bearer s3cret"
    (tmp_path / "tok").write_text("first\n")
    c = kube.from_kubeconfig(kubeconfig(tmp_path, {"tokenFile": "tok"}))
    assert c.headers()["Authorization"] == "Bearer first"
    (tmp_path / "tok").write_text("rotated\n")              # bound tokens rotate: read every time
    assert c.headers()["Authorization"] == "Bearer rotated"


def test_kubeconfig_https_insecure_and_refusals(tmp_path):
    c = kube.from_kubeconfig(kubeconfig(tmp_path, {"token": "t"}, "https://[fd00::1]", **{"insecure-skip-tls-verify": True}))
    assert (c.host, c.port) == ("fd00::1", 443) and c.context is not None
    with pytest.raises(kube.ConfigError, match="exec"):
        kube.from_kubeconfig(kubeconfig(tmp_path, {"exec": {"command": "aws"}}))
    with pytest.raises(kube.ConfigError, match="http"):
        kube.from_kubeconfig(kubeconfig(tmp_path, {}, "unix:///x"))


def test_in_cluster_needs_the_service_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(kube.ConfigError, match="not in a cluster"):
        kube.in_cluster(str(tmp_path))
