"""Runs a network configuration list the way libcni does (ADD in order with prevResult passed on,
DEL in reverse, runtimeConfig from declared capabilities, plugins found in CNI_PATH, results
cached for DEL and CHECK). This is our stand-in for cnitool: the demo and the tests use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import json
import os
from typing import Any, Mapping

import yaml

from cni.spec.errors import CNIError, InvalidConfig
from cni.spec.names import sha256_hex
from cni.spec.version import at_least
from ipam.delegate import exec_plugin

DEFAULT_CACHE_DIR = "/var/lib/cni/results"


@dataclass(frozen=True)
class Attachment:
    container_id: str
    netns: str
    ifname: str = "eth0"
    cni_args: str = ""
    capability_args: Mapping[str, Any] = field(default_factory=dict)


def load_conflist(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if path.endswith((".yaml", ".yml")):
            try:
                conf = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise ValueError(str(e)) from None
        else:
            conf = json.loads(text)
    except ValueError as e:
        raise InvalidConfig("invalid network configuration", f"{path}: {e}") from None
    if not isinstance(conf, dict):
        raise InvalidConfig("invalid network configuration", f"{path}: not an object")
    if "plugins" not in conf:  # a single-plugin .conf file
        conf = {"cniVersion": conf.get("cniVersion"), "name": conf.get("name"), "plugins": [conf]}
    if not isinstance(conf["plugins"], list) or not conf["plugins"]:
        raise InvalidConfig("invalid network configuration", f"{path}: \"plugins\" must be a non-empty list")
    return conf


def default_container_id(netns: str) -> str:
    return sha256_hex(netns)


def plugin_config(netlist: Mapping, plugin: Mapping, capability_args: Mapping[str, Any],
                  prev_result: Any = None, extra: Mapping[str, Any] | None = None) -> bytes:
    conf = {k: v for k, v in plugin.items() if k != "capabilities"}
    conf["name"] = netlist["name"]
    conf["cniVersion"] = netlist["cniVersion"]
    caps = plugin.get("capabilities") or {}
    runtime = {k: v for k, v in capability_args.items() if caps.get(k)}
    if runtime:
        conf["runtimeConfig"] = runtime
    if prev_result is not None:
        conf["prevResult"] = prev_result
    if extra:
        conf.update(extra)
    return json.dumps(conf).encode()


class Driver:
    def __init__(self, netlist: Mapping, cni_path: list[str], cache_dir: str = DEFAULT_CACHE_DIR,
                 env: Mapping[str, str] | None = None):
        self.netlist = netlist
        self.path = tuple(cni_path)
        self.cache_dir = cache_dir
        self.base_env = dict(os.environ if env is None else env)

    def _env(self, command: str, att: Attachment | None) -> dict[str, str]:
        env = {k: v for k, v in self.base_env.items() if not k.startswith("CNI_")}
        env.update(CNI_COMMAND=command, CNI_PATH=os.pathsep.join(self.path))
        if att is not None:
            env.update(CNI_CONTAINERID=att.container_id, CNI_NETNS=att.netns, CNI_IFNAME=att.ifname,
                       CNI_ARGS=att.cni_args)
        return env

    def _cache_path(self, att: Attachment) -> str:
        return os.path.join(self.cache_dir, f"{self.netlist['name']}-{att.container_id}-{att.ifname}")

    def _run(self, command: str, plugin: Mapping, att: Attachment | None, prev: Any = None,
             extra: Mapping[str, Any] | None = None) -> dict | None:
        stdin = plugin_config(self.netlist, plugin, att.capability_args if att else {}, prev, extra)
        return exec_plugin(str(plugin.get("type") or ""), command, self._env(command, att), self.path, stdin)

    def add(self, att: Attachment) -> dict:
        result = None
        for plugin in self.netlist["plugins"]:
            result = self._run("ADD", plugin, att, result)
        if result is None:
            raise CNIError("the last plugin printed no result")
        os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
        tmp = self._cache_path(att) + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"kind": "cniCacheV1", "result": result, "config": self.netlist,
                       "capabilityArgs": dict(att.capability_args)}, f)
        os.replace(tmp, self._cache_path(att))
        return result

    def _cached(self, att: Attachment) -> dict | None:
        try:
            with open(self._cache_path(att)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _prev_for(self, att: Attachment) -> Any:
        if not at_least(self.netlist["cniVersion"], "0.4.0"):
            return None
        cached = self._cached(att)
        return cached.get("result") if cached else None

    def delete(self, att: Attachment) -> None:
        cached = self._cached(att)
        if cached and not att.capability_args:
            att = Attachment(att.container_id, att.netns, att.ifname, att.cni_args,
                             cached.get("capabilityArgs") or {})
        prev = self._prev_for(att)
        for plugin in reversed(self.netlist["plugins"]):
            self._run("DEL", plugin, att, prev)
        try:
            os.unlink(self._cache_path(att))
        except FileNotFoundError:
            pass

    def check(self, att: Attachment) -> None:
        prev = self._prev_for(att)
        if prev is None:
            raise CNIError("no cached result for this attachment", self._cache_path(att))
        cached = self._cached(att) or {}
        att = Attachment(att.container_id, att.netns, att.ifname, att.cni_args,
                         att.capability_args or cached.get("capabilityArgs") or {})
        for plugin in self.netlist["plugins"]:
            self._run("CHECK", plugin, att, prev)

    def status(self) -> None:
        for plugin in self.netlist["plugins"]:
            self._run("STATUS", plugin, None)

    def gc(self, valid: list[tuple[str, str]]) -> None:
        attachments = [{"containerID": c, "ifname": i} for c, i in valid]
        extra = {"cni.dev/valid-attachments": attachments, "cni.dev/attachments": attachments}
        for plugin in self.netlist["plugins"]:
            self._run("GC", plugin, None, extra=extra)
