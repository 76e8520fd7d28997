"""The CNI process contract: environment + stdin in, result or error JSON out, an exit code.

Rule: this module and `cni.spec.request` (which turns the environment and stdin into a `Request`)
are the only ones that read `CNI_*` variables and stdin, and this is the only place an exception
becomes output. Command handlers receive a `Request` and return a `Result` (or None); they never
print, exit or look at the environment. Anything unexpected becomes code 999.

VERSION is answered with what this module imports itself (no dataclasses, no `json` package): it
is what a runtime calls most often to probe a plugin, and a CNI process's start is its cost.
"""

from __future__ import annotations

from cni.spec import jsonio
from cni.spec.errors import CNIError, DecodeFailure, IOFailure
from cni.spec.log import log
from cni.spec.version import CURRENT, SUPPORTED

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Callable, Mapping

    from cni.spec.request import Plugin

COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "VERSION", "GC")
MAX_STDIN = 16 * 1024 * 1024


def decode_config(raw: bytes) -> dict:
    try:
        conf = jsonio.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise DecodeFailure("failed to decode network configuration", str(e)) from None
    if not isinstance(conf, dict):
        raise DecodeFailure("failed to decode network configuration", "top level must be an object")
    return conf


def config_version(conf: Mapping) -> str:
    version = conf.get("cniVersion", "0.1.0") or "0.1.0"
    if not isinstance(version, str):
        raise DecodeFailure("invalid cniVersion", repr(version))
    return version


def read_stdin(stdin: IO[bytes]) -> bytes:
    try:
        raw = stdin.read(MAX_STDIN + 1)
    except OSError as e:
        raise IOFailure("failed to read stdin", str(e)) from None
    if len(raw) > MAX_STDIN:
        raise IOFailure("network configuration too large", f"more than {MAX_STDIN} bytes on stdin")
    return raw


def version_of_stdin(stdin: IO[bytes]) -> str:
    """VERSION's answer carries the config's cniVersion when stdin has one (an unreadable or
    empty stdin is no error for VERSION)."""
    try:
        raw = read_stdin(stdin)
        conf = decode_config(raw) if raw.strip() else {}
        return config_version(conf) if conf else CURRENT
    except CNIError:
        return CURRENT


def _emit(stdout: IO[str], obj: dict) -> None:
    stdout.write(jsonio.dumps(obj) + "\n")
    stdout.flush()


last_code = 0       # the CNI error code of the last call `run` answered (0: success), for the call record


def run(plugin_factory: Callable[[], Plugin], env: Mapping[str, str], stdin: IO[bytes],
        stdout: IO[str], about: str = "pycni", serialize: str = "") -> int:
    """Serve one CNI call. Returns the process exit code. With `serialize` (the plugin's name),
    ADD, DEL and CHECK of one attachment never overlap (cni.runtime.attachment_lock)."""
    if env.get("CNI_COMMAND") == "VERSION":
        _emit(stdout, {"cniVersion": version_of_stdin(stdin), "supportedVersions": list(SUPPORTED)})
        return 0
    version = CURRENT
    try:
        from cni.spec.request import build_request
        from cni.spec.result import render

        req = build_request(env, stdin)
        version = req.version
        conf = req.config
        log.configure(conf.get("logFile") if isinstance(conf.get("logFile"), str) else None,
                      conf.get("logLevel") if isinstance(conf.get("logLevel"), str) else None,
                      f"{about} {req.command} {req.container_id[:12]}/{req.ifname} ",
                      "json" if conf.get("logFormat") == "json" else "text",
                      {"plugin": about, "command": req.command, "network": str(conf.get("name", "")),
                       "containerID": req.container_id, "ifname": req.ifname})
        if req.nothing_made:
            log.info(f"DEL: nothing to do ({req.nothing_made})")
            return 0
        plugin = plugin_factory()
        handler = {"ADD": plugin.add, "DEL": plugin.delete, "CHECK": plugin.check,
                   "STATUS": plugin.status, "GC": plugin.gc}[req.command]
        if serialize and req.command in ("ADD", "DEL", "CHECK"):
            from cni.runtime.attachment_lock import one_call_per_attachment

            with one_call_per_attachment(env, serialize, str(conf.get("name")), req.container_id, req.ifname):
                result = handler(req)
        else:
            result = handler(req)
        if req.command == "ADD":
            _emit(stdout, render(result, version))
        log.debug("ok")
        return 0
    except CNIError as e:
        global last_code
        last_code = e.code
        log.error(f"code {e.code}: {e}")
        _emit(stdout, e.to_dict(version))
        return 1
    except Exception as e:  # the one place an unexpected exception is reported
        import traceback

        last_code = 999

        log.error("unexpected error: " + "".join(traceback.format_exception(e)).rstrip())
        _emit(stdout, CNIError("internal error", f"{type(e).__name__}: {e}").to_dict(version))
        return 1
