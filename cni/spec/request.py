"""One CNI call, parsed: the `Request` every command handler receives, built from the environment
and stdin exactly once (`build_request`), and the pieces of the contract handlers share
(`valid_attachments` for GC)."""

from __future__ import annotations

import os
from typing import IO, Any, Callable, Mapping, Protocol

from cni.record import field, record
from cni.spec import names
from cni.spec.errors import InvalidConfig, InvalidEnvironment, InvalidNetns
from cni.spec.log import log
from cni.spec.result import Result
from cni.spec.stdin import COMMANDS, config_version, decode_config, read_stdin, version_of_stdin
from cni.spec.version import CURRENT, ensure_supported, ensure_verb_allowed

_REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
}
KNOWN_ARGS = frozenset({"IgnoreUnknown", "IP", "MAC", "K8S_POD_NAMESPACE", "K8S_POD_NAME",
                        "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"})
# What Kubernetes allows in the names it hands the runtime; a value outside them never came from
# the API server, and it reaches logs, policy state paths and set comments: refused before use.
_K8S_NAME_RULES = {
    "K8S_POD_NAME": (names.is_dns1123_subdomain, "a DNS-1123 subdomain"),
    "K8S_POD_NAMESPACE": (names.is_dns1123_label, "a DNS-1123 label"),
    "K8S_POD_UID": (names.is_k8s_uid, "a UID (letters, digits, '-', at most 128)"),
    "K8S_POD_INFRA_CONTAINER_ID": (names.is_k8s_uid, "a container id (letters, digits, '-', at most 128)"),
}


def _helper_not_told() -> str:
    return "not known (the call was not run by pycni's runtime)"


@record
class Request:
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = field(default_factory=dict)
    path: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    raw_config: bytes = b""
    version: str = CURRENT
    env: Mapping[str, str] = field(default_factory=dict)
    # DEL of a name ADD refuses: nothing can have been made for it, so there is nothing to do
    nothing_made: str = ""
    # what STATUS says of the resident helper: handed down by the runtime that runs the call
    helper_state: Callable[[], str] = field(default=_helper_not_told)


class Plugin(Protocol):
    def add(self, req: Request) -> Result: ...
    def delete(self, req: Request) -> None: ...
    def check(self, req: Request) -> None: ...
    def status(self, req: Request) -> None: ...
    def gc(self, req: Request) -> None: ...


def parse_cni_args(text: str) -> dict[str, str]:
    """`K=V;K2=V2` as libcni's LoadArgs reads it: unknown keys only with IgnoreUnknown."""
    out: dict[str, str] = {}
    if not text:
        return out
    for pair in text.split(";"):
        if not pair:
            continue
        kv = pair.split("=")
        if len(kv) != 2 or not kv[0]:
            raise InvalidEnvironment("invalid CNI_ARGS", f"pair {pair[:80]!r} is not KEY=VALUE")
        out[kv[0]] = kv[1]
    ignore = out.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = sorted(k for k in out if k not in KNOWN_ARGS)
    if unknown and not ignore:
        raise InvalidEnvironment("invalid CNI_ARGS", f"unknown args {unknown} (set IgnoreUnknown=1)")
    for key, (ok, what) in _K8S_NAME_RULES.items():
        value = out.get(key)
        if value is not None and value != "" and not ok(value):
            raise InvalidEnvironment("invalid CNI_ARGS", f"{key} {value[:80]!r} is not {what}")
    return out


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _check_netns(command: str, netns: str) -> None:
    if not netns:
        return
    if command != "DEL" and not os.path.exists(netns):
        raise InvalidEnvironment("invalid CNI_NETNS", f"network namespace {netns} does not exist")
    if _same_file(netns, "/proc/self/ns/net"):      # on DEL too: never act on the node as a pod
        raise InvalidNetns("plugin's netns and netns from CNI_NETNS should not be the same", netns)


def _cni_args(command: str, raw: str) -> dict[str, str]:
    try:
        return parse_cni_args(raw)
    except InvalidEnvironment as e:
        if command != "DEL":
            raise
        log.warning(f"DEL: CNI_ARGS ignored ({e.msg}: {e.details})")   # DEL needs none of them
        return {}


def build_request(env: Mapping[str, str], stdin: IO[bytes],
                  helper_state: Callable[[], str] | None = None) -> Request:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise InvalidEnvironment("unknown CNI_COMMAND", repr(command))
    if command == "VERSION":
        return Request(command, version=version_of_stdin(stdin), env=env)

    missing = [k for k in _REQUIRED.get(command, ()) if k not in env]
    if missing:
        raise InvalidEnvironment("required env variables missing", ", ".join(missing))
    raw = read_stdin(stdin)
    conf = decode_config(raw)
    version = config_version(conf)
    ensure_supported(version)
    ensure_verb_allowed(command, version)
    container_id = env.get("CNI_CONTAINERID", "")
    ifname = env.get("CNI_IFNAME", "")
    nothing_made = ""
    try:
        names.validate_network_name(conf.get("name"))
        if command in _REQUIRED:
            names.validate_container_id(container_id)
            names.validate_ifname(ifname)
    except (InvalidConfig, InvalidEnvironment) as e:
        if command != "DEL":
            raise
        nothing_made = f"{e.msg}: {e.details}"    # ADD refuses these names, so it made nothing
    netns = env.get("CNI_NETNS", "")
    if command in _REQUIRED:
        _check_netns(command, netns)
    return Request(
        command=command,
        container_id=container_id,
        netns=netns,
        ifname=ifname,
        args=_cni_args(command, env.get("CNI_ARGS", "")),
        path=tuple(p for p in env.get("CNI_PATH", "").split(os.pathsep) if p),
        config=conf,
        raw_config=raw,
        version=version,
        env=env,
        nothing_made=nothing_made,
        helper_state=helper_state or _helper_not_told,
    )


def valid_attachments(conf: Mapping[str, Any]) -> set[tuple[str, str]]:
    """GC's `cni.dev/valid-attachments` (or the legacy `cni.dev/attachments`) as (id, ifname)."""
    raw = conf.get("cni.dev/valid-attachments")
    if raw is None:
        raw = conf.get("cni.dev/attachments")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise InvalidConfig("invalid cni.dev/valid-attachments", "must be a list")
    out = set()
    for a in raw:
        if not isinstance(a, dict) or not isinstance(a.get("containerID"), str) \
                or not isinstance(a.get("ifname"), str):
            raise InvalidConfig("invalid cni.dev/valid-attachments", f"entry {a!r}")
        out.add((a["containerID"], a["ifname"]))
    return out
