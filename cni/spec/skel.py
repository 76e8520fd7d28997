"""The CNI process contract: environment + stdin in, result or error JSON out, an exit code.

Rule: this is the only module that reads `CNI_*` variables and stdin, and the only place an
exception becomes output. Command handlers receive a `Request` and return a `Result` (or None);
they never print, exit or look at the environment. Anything unexpected becomes code 999.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Mapping, Protocol

from cni.spec import names
from cni.spec.errors import CNIError, DecodeFailure, InvalidConfig, IOFailure, InvalidEnvironment, InvalidNetns
from cni.spec.log import log
from cni.spec.result import Result, render
from cni.spec.version import CURRENT, SUPPORTED, ensure_supported, ensure_verb_allowed

COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "VERSION", "GC")
_REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
}
KNOWN_ARGS = frozenset({"IgnoreUnknown", "IP", "MAC", "K8S_POD_NAMESPACE", "K8S_POD_NAME",
                        "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"})
MAX_STDIN = 16 * 1024 * 1024


@dataclass(frozen=True)
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
    return out


def _decode_config(raw: bytes) -> dict:
    try:
        conf = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise DecodeFailure("failed to decode network configuration", str(e)) from None
    if not isinstance(conf, dict):
        raise DecodeFailure("failed to decode network configuration", "top level must be an object")
    return conf


def _config_version(conf: Mapping) -> str:
    version = conf.get("cniVersion", "0.1.0") or "0.1.0"
    if not isinstance(version, str):
        raise DecodeFailure("invalid cniVersion", repr(version))
    return version


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


def _read_stdin(stdin: IO[bytes]) -> bytes:
    try:
        raw = stdin.read(MAX_STDIN + 1)
    except OSError as e:
        raise IOFailure("failed to read stdin", str(e)) from None
    if len(raw) > MAX_STDIN:
        raise IOFailure("network configuration too large", f"more than {MAX_STDIN} bytes on stdin")
    return raw


def _cni_args(command: str, raw: str) -> dict[str, str]:
    try:
        return parse_cni_args(raw)
    except InvalidEnvironment as e:
        if command != "DEL":
            raise
        log.warning(f"DEL: CNI_ARGS ignored ({e.msg}: {e.details})")   # DEL needs none of them
        return {}


def build_request(env: Mapping[str, str], stdin: IO[bytes]) -> Request:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise InvalidEnvironment("unknown CNI_COMMAND", repr(command))
    if command == "VERSION":
        raw = b""
        try:
            raw = _read_stdin(stdin)
            conf = _decode_config(raw) if raw.strip() else {}
            version = _config_version(conf) if conf else CURRENT
        except CNIError:
            version = CURRENT
        return Request(command, version=version, env=env)

    missing = [k for k in _REQUIRED.get(command, ()) if k not in env]
    if missing:
        raise InvalidEnvironment("required env variables missing", ", ".join(missing))
    raw = _read_stdin(stdin)
    conf = _decode_config(raw)
    version = _config_version(conf)
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


def _emit(stdout: IO[str], obj: dict) -> None:
    stdout.write(json.dumps(obj, indent=2) + "\n")
    stdout.flush()


def run(plugin_factory: Callable[[], Plugin], env: Mapping[str, str], stdin: IO[bytes],
        stdout: IO[str], about: str = "pycni") -> int:
    """Serve one CNI call. Returns the process exit code."""
    version = CURRENT
    req: Request | None = None
    try:
        req = build_request(env, stdin)
        version = req.version
        if req.command == "VERSION":
            _emit(stdout, {"cniVersion": version, "supportedVersions": list(SUPPORTED)})
            return 0
        conf = req.config
        log.configure(conf.get("logFile") if isinstance(conf.get("logFile"), str) else None,
                      conf.get("logLevel") if isinstance(conf.get("logLevel"), str) else None,
                      f"{about} {req.command} {req.container_id[:12]}/{req.ifname} ")
        if req.nothing_made:
            log.info(f"DEL: nothing to do ({req.nothing_made})")
            return 0
        plugin = plugin_factory()
        handler = {"ADD": plugin.add, "DEL": plugin.delete, "CHECK": plugin.check,
                   "STATUS": plugin.status, "GC": plugin.gc}[req.command]
        result = handler(req)
        if req.command == "ADD":
            _emit(stdout, render(result, version))
        log.debug("ok")
        return 0
    except CNIError as e:
        log.error(f"code {e.code}: {e}")
        _emit(stdout, e.to_dict(version))
        return 1
    except Exception as e:  # the one place an unexpected exception is reported
        import traceback

        log.error("unexpected error: " + "".join(traceback.format_exception(e)).rstrip())
        _emit(stdout, CNIError("internal error", f"{type(e).__name__}: {e}").to_dict(version))
        return 1
