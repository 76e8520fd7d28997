"""pycni's own version, and the CNI spec versions: which we speak, which verbs each allows, how to
compare them."""

from __future__ import annotations

from cni.spec.errors import IncompatibleVersion

# pycni's release: the one place it is written (pyproject.toml, the build and the image tag read it)
PYCNI = "0.1.0"

SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT = "1.1.0"

# the first spec version that allows each verb
_VERB_MIN = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}


def as_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)


def at_least(version: str, minimum: str) -> bool:
    return as_tuple(version) >= as_tuple(minimum)


def ensure_supported(version: str) -> None:
    if version not in SUPPORTED:
        raise IncompatibleVersion(
            "incompatible CNI versions",
            f'config is "{version}", plugin supports {list(SUPPORTED)}',
        )


def ensure_verb_allowed(command: str, version: str) -> None:
    minimum = _VERB_MIN.get(command)
    if minimum and not at_least(version, minimum):
        raise IncompatibleVersion(
            f"config version does not allow {command}",
            f'config is "{version}", {command} needs at least "{minimum}"',
        )
