"""Running another CNI plugin (a delegated IPAM) exactly as libcni does: env + stdin, parse stdout.

The plugin runs only as long as the process that runs it (PR_SET_PDEATHSIG, cni.linux.children):
a runtime that kills pycni mid-ADD runs DEL next, and a delegated ADD still going then would
reserve an address after that DEL released the attachment's (a leak)."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Mapping

from cni.linux.children import tied_to_me
from cni.spec.errors import CNIError, InvalidConfig
from cni.spec.log import log

# A delegated plugin (host-local, dhcp, static) answers in milliseconds; one that hangs must not
# hold the runtime's own deadline (the kubelet's runtime request timeout is 2 minutes).
DELEGATE_TIMEOUT = 60.0


class PluginNotFound(InvalidConfig):
    """No such plugin in CNI_PATH (or no valid name for one): nothing of it can be run."""


def find_plugin(plugin_type: str, path: tuple[str, ...]) -> str:
    if not plugin_type or "/" in plugin_type or plugin_type in (".", ".."):
        raise PluginNotFound("invalid plugin type", repr(plugin_type))
    for d in path:
        candidate = os.path.join(d, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise PluginNotFound(f"failed to find plugin {plugin_type!r} in path", str(list(path)))


def exec_plugin(plugin_type: str, command: str, env: Mapping[str, str], path: tuple[str, ...],
                stdin: bytes) -> dict | None:
    """Run `plugin_type` for `command`; its parsed stdout on success, its error raised otherwise."""
    exe = find_plugin(plugin_type, path)
    child_env = dict(env)
    child_env["CNI_COMMAND"] = command
    log.debug(f"delegating {command} to {exe}")
    try:
        proc = subprocess.run([exe], input=stdin, env=child_env, capture_output=True, timeout=DELEGATE_TIMEOUT,
                              preexec_fn=tied_to_me())
    except subprocess.TimeoutExpired:
        raise CNIError(f"plugin {plugin_type} did not answer {command}",
                       f"{exe} ran for over {DELEGATE_TIMEOUT:g}s and was killed") from None
    except (OSError, subprocess.SubprocessError) as e:
        raise CNIError(f"failed to run plugin {plugin_type}", str(e)) from None
    out = proc.stdout.strip()
    parsed = None
    if out:
        try:
            parsed = json.loads(out)
        except ValueError:
            parsed = None
    if proc.returncode != 0:
        if isinstance(parsed, dict) and "code" in parsed:
            code = parsed.get("code")
            raise CNIError(str(parsed.get("msg") or f"{plugin_type} failed"),
                           str(parsed.get("details") or ""),
                           code=code if isinstance(code, int) else 999)
        raise CNIError(f"plugin {plugin_type} failed (exit {proc.returncode})",
                       (proc.stderr or proc.stdout).decode(errors="replace").strip()[:2000])
    if out and parsed is None:
        raise CNIError(f"plugin {plugin_type} printed invalid JSON", out[:500].decode(errors="replace"))
    return parsed
