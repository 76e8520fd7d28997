"""What a CNI process reads before anything else: the command names the spec defines, and the
network configuration on stdin (bounded, decoded, its cniVersion).

Rule: this module imports nothing but the JSON codec and the errors, so VERSION (`cni.spec.skel`)
answers from it without building a `Request`; `cni.spec.request` reads stdin through it too.
"""

from __future__ import annotations

from cni.spec import jsonio
from cni.spec.errors import CNIError, DecodeFailure, IOFailure
from cni.spec.version import CURRENT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Mapping

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
