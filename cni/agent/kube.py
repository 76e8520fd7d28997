"""The agent's own Kubernetes API client: HTTPS (or HTTP) GETs with a bearer token or a client
certificate, JSON in, nothing else. The official client turns every object into model objects
(a 3 KB Pod becomes hundreds of Python objects, and its import alone costs ~33 MB); the agent
reads a few fields of each object and drops the rest as it parses (cni.agent.watch).

Where the API is: inside a pod, the service account (`in_cluster`); else a kubeconfig file
(`from_kubeconfig`: its current context's server, certificate-authority(-data),
insecure-skip-tls-verify, token / tokenFile, client-certificate(-data) + client-key(-data)).
Exec and auth-provider plugins are not supported (the agent runs in the cluster)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlencode, urlparse

import yaml

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


class ApiError(Exception):
    """The API answered with an error Status (or not at all as an API server would)."""

    def __init__(self, status: int, reason: str = "", message: str = ""):
        super().__init__(f"{status} {reason}: {message}" if reason else f"{status}: {message}")
        self.status, self.reason, self.message = status, reason, message


class ConfigError(ValueError):
    pass


@dataclass
class Cluster:
    host: str
    port: int
    base: str = ""                       # a path prefix of the server URL (an API proxy)
    context: ssl.SSLContext | None = None    # None: plain HTTP
    token: str | None = None
    token_file: str | None = None        # re-read at every request: bound tokens rotate

    def headers(self) -> dict[str, str]:
        out = {"Accept": "application/json", "User-Agent": "pycni-agent"}
        token = self.token
        if self.token_file:
            with open(self.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        if token:
            out["Authorization"] = f"Bearer {token}"
        return out

    def connect(self, timeout: float | None) -> http.client.HTTPConnection:
        if self.context is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.context)

    def get(self, conn: http.client.HTTPConnection, path: str, query: dict[str, Any]) -> http.client.HTTPResponse:
        """Send one GET on `conn`; the response when 200, else ApiError (the body read)."""
        url = self.base + path + ("?" + urlencode(query) if query else "")
        conn.request("GET", url, headers=self.headers())
        resp = conn.getresponse()
        if resp.status != 200:
            body = resp.read()
            raise api_error(resp.status, body)
        return resp

    def get_json(self, conn: http.client.HTTPConnection, path: str, query: dict[str, Any]) -> dict:
        resp = self.get(conn, path, query)
        return json.loads(resp.read())

    def merge_patch(self, path: str, patch: dict, timeout: float = 10.0) -> dict:
        """One JSON merge patch (RFC 7386) of the object at `path` on a connection of its own;
        the patched object, else ApiError."""
        conn = self.connect(timeout)
        try:
            headers = {**self.headers(), "Content-Type": "application/merge-patch+json"}
            conn.request("PATCH", self.base + path, body=json.dumps(patch).encode(), headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise api_error(resp.status, body)
            return json.loads(body)
        finally:
            conn.close()


def api_error(status: int, body: bytes | dict) -> ApiError:
    try:
        obj = json.loads(body) if isinstance(body, (bytes, str)) else body
        return ApiError(int(obj.get("code") or status), str(obj.get("reason") or ""), str(obj.get("message") or ""))
    except (ValueError, AttributeError):
        return ApiError(status, "", body[:200].decode(errors="replace") if isinstance(body, bytes) else "")


_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"


def decode_list(text: str, on_item: Callable[[dict], None]) -> dict:
    """A List document, its `items` decoded one at a time (each handed to `on_item` and then
    dropped: a page never exists as one object tree); returns its other members (metadata, ...).
    ValueError when it is not one."""
    try:
        return _decode_list(text, on_item)
    except IndexError:
        raise ValueError("not a List document: it ends too soon") from None


def _decode_list(text: str, on_item: Callable[[dict], None]) -> dict:
    out: dict = {}
    i, n = 0, len(text)

    def skip(i: int) -> int:
        while i < n and text[i] in _SPACE:
            i += 1
        return i

    def expect(i: int, c: str) -> int:
        i = skip(i)
        if i >= n or text[i] != c:
            raise ValueError(f"not a List document: {c!r} expected at {i}")
        return i + 1

    i = expect(0, "{")
    if skip(i) < n and text[skip(i)] == "}":
        return out
    while True:
        key, i = _DECODER.raw_decode(text, skip(i))
        i = expect(i, ":")
        if key == "items" and text[skip(i)] == "[":
            i = skip(skip(i) + 1)
            if text[i] == "]":
                i += 1
            else:
                while True:
                    item, i = _DECODER.raw_decode(text, skip(i))
                    on_item(item)
                    del item
                    i = skip(i)
                    if text[i] == "]":
                        i += 1
                        break
                    i = expect(i, ",")
        else:
            out[key], i = _DECODER.raw_decode(text, skip(i))
        i = skip(i)
        if i < n and text[i] == "}":
            return out
        i = expect(i, ",")


def list_all(cluster: Cluster, path: str, limit: int, on_item: Callable[[dict], None],
             stop: Callable[[], bool] = lambda: False, timeout: float = 60.0) -> tuple[str, int]:
    """One LIST in pages of `limit` on one connection, every item to `on_item`; returns the
    list's resourceVersion and the number of pages. ApiError(410) when the list's version expired
    between pages (list again from the start)."""
    conn = cluster.connect(timeout)
    pages = 0
    try:
        token = None
        while True:
            query: dict[str, Any] = {"limit": limit}
            if token:
                query["continue"] = token
            text = cluster.get(conn, path, query).read().decode()
            pages += 1
            meta = decode_list(text, on_item).get("metadata") or {}
            del text
            token = meta.get("continue")
            if not token or stop():
                return str(meta.get("resourceVersion") or ""), pages
    finally:
        conn.close()


def in_cluster(root: str = SERVICE_ACCOUNT) -> Cluster:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise ConfigError("not in a cluster ($KUBERNETES_SERVICE_HOST/PORT unset): pass --kubeconfig")
    ctx = ssl.create_default_context(cafile=os.path.join(root, "ca.crt"))
    token_file = os.path.join(root, "token")
    if not os.path.exists(token_file):
        raise ConfigError(f"no service account token at {token_file}")
    return Cluster(host.strip("[]"), int(port), "", ctx, token_file=token_file)


def from_kubeconfig(path: str) -> Cluster:
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f) or {}
    here = os.path.dirname(os.path.abspath(path))

    def named(section: str, name: str) -> dict:
        for item in doc.get(section) or ():
            if item.get("name") == name:
                return item.get(section[:-1]) or {}
        raise ConfigError(f"{path}: no {section[:-1]} {name!r}")

    current = doc.get("current-context")
    if not current:
        raise ConfigError(f"{path}: no current-context")
    ctx = named("contexts", current)
    cluster, user = named("clusters", ctx.get("cluster")), named("users", ctx.get("user"))
    url = urlparse(cluster.get("server") or "")
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"{path}: server {cluster.get('server')!r} is not an http(s) URL")
    if user.get("exec") or user.get("auth-provider"):
        raise ConfigError(f"{path}: exec and auth-provider credentials are not supported")

    def file_or_data(d: dict, key: str) -> tuple[str | None, bytes | None]:
        if d.get(f"{key}-data"):
            return None, base64.b64decode(d[f"{key}-data"])
        if d.get(key):
            return os.path.join(here, d[key]), None
        return None, None

    context = None
    if url.scheme == "https":
        if cluster.get("insecure-skip-tls-verify"):
            context = ssl._create_unverified_context()       # as the kubeconfig asks
        else:
            ca_file, ca_data = file_or_data(cluster, "certificate-authority")
            context = ssl.create_default_context(cafile=ca_file, cadata=ca_data.decode() if ca_data else None)
        cert_file, cert_data = file_or_data(user, "client-certificate")
        key_file, key_data = file_or_data(user, "client-key")
        if cert_file or cert_data:
            _load_cert_chain(context, cert_file, cert_data, key_file, key_data)
    token_file = user.get("tokenFile")
    return Cluster(url.hostname, url.port or (443 if url.scheme == "https" else 80), url.path.rstrip("/"),
                   context, token=user.get("token"),
                   token_file=os.path.join(here, token_file) if token_file else None)


def _load_cert_chain(context: ssl.SSLContext, cert_file, cert_data, key_file, key_data) -> None:
    """ssl loads a client certificate from files only: inline data goes through a private
    temporary directory, removed at once."""
    with tempfile.TemporaryDirectory(prefix="pycni-kube-") as d:
        if cert_data is not None:
            cert_file = os.path.join(d, "cert.pem")
            with open(os.open(cert_file, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(cert_data)
        if key_data is not None:
            key_file = os.path.join(d, "key.pem")
            with open(os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(key_data)
        context.load_cert_chain(cert_file, key_file)


def load(kubeconfig: str | None) -> Cluster:
    return from_kubeconfig(kubeconfig) if kubeconfig else in_cluster()
