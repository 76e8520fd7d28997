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
from cni.spec.errors import CNIError
from cni.spec.log import log
from cni.spec.stdin import version_of_stdin
from cni.spec.version import CURRENT, SUPPORTED

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Callable, ContextManager, Mapping

    from cni.spec.request import Plugin, Request

def _emit(stdout: IO[str], obj: dict) -> None:
    stdout.write(jsonio.dumps(obj) + "\n")
    stdout.flush()


last_code = 0       # the CNI error code of the last call `run` answered (0: success), for the call record


def run(plugin_factory: Callable[[], Plugin], env: Mapping[str, str], stdin: IO[bytes],
        stdout: IO[str], about: str = "pycni",
        guard: Callable[[Request], ContextManager] | None = None,
        helper_state: Callable[[], str] | None = None) -> int:
    """Serve one CNI call. Returns the process exit code.

    What the runtime that runs us adds is handed in, never imported from above: `guard(req)`, a
    context manager held around ADD, DEL and CHECK (the runtime's lock that keeps the calls of one
    attachment from overlapping), and `helper_state()`, the line STATUS reports about the helper."""
    if env.get("CNI_COMMAND") == "VERSION":
        _emit(stdout, {"cniVersion": version_of_stdin(stdin), "supportedVersions": list(SUPPORTED)})
        return 0
    version = CURRENT
    try:
        from cni.spec.request import build_request  # lazy: VERSION answers without them
        from cni.spec.result import render

        req = build_request(env, stdin, helper_state)
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
        if guard is not None and req.command in ("ADD", "DEL", "CHECK"):
            with guard(req):
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
        import traceback  # lazy: VERSION answers without them

        last_code = 999

        log.error("unexpected error: " + "".join(traceback.format_exception(e)).rstrip())
        _emit(stdout, CNIError("internal error", f"{type(e).__name__}: {e}").to_dict(version))
        return 1
