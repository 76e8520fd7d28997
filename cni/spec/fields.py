"""Typed reads of config fields, shared by every config parser: one error message per mistake."""

from __future__ import annotations

from typing import Any, Mapping

from cni.spec.errors import InvalidConfig


def flag(conf: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = conf.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidConfig(f"invalid {key}", f"{key} must be true or false, got {value!r}")
    return value


def integer(conf: Mapping[str, Any], key: str, lo: int, hi: int, default: int | None = None) -> int | None:
    value = conf.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise InvalidConfig(f"invalid {key}", f"{key} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def string(conf: Mapping[str, Any], key: str, default: str = "") -> str:
    value = conf.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidConfig(f"invalid {key}", f"{key} must be a string, got {value!r}")
    return value


def mapping(conf: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = conf.get(key) or {}
    if not isinstance(value, dict):
        raise InvalidConfig(f"invalid {key}", f"{key} must be an object")
    return value


def go_keys(obj: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """`names` read from `obj` as Go's encoding/json reads them into a struct: the exact key first,
    else any key equal ignoring case. Runtimes written in Go send capability args with their own
    struct field names (containerd's go-cni: {"HostPort": 8080, "ContainerPort": 80, ...}), which
    the reference plugins accept for exactly this reason."""
    out = {}
    for name in names:
        if name in obj:
            out[name] = obj[name]
            continue
        folded = name.casefold()
        for key, value in obj.items():
            if isinstance(key, str) and key.casefold() == folded:
                out[name] = value
                break
    return out
