"""JSON in and out of a CNI call without importing the `json` package.

`import json` costs ~3 ms per process (it pulls in `re` and compiles patterns), a tenth of a
frozen pycni's whole start. The standard library's C accelerator `_json`, which `json` itself
uses, parses and serialises the same documents with the same rules: this module drives it
directly and falls back to `json` for what the accelerator does not cover (byte-order marks,
UTF-16/32 input, an interpreter without `_json`).

loads(bytes|str) -> object   raises ValueError (json.JSONDecodeError for bad syntax)
dumps(object) -> str         compact, ASCII-only, NaN refused, as `json.dumps(separators=(",", ":"))`
"""

from __future__ import annotations

_WHITESPACE = " \t\n\r"
_CONSTANTS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}

try:
    import _json
except ImportError:         # pragma: no cover - CPython always has it
    _json = None


class _Context:
    """What `_json.make_scanner` reads from a decoder: the settings of `json.loads` by default."""
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


_scan = _json.make_scanner(_Context()) if _json is not None else None


def _unserialisable(obj):
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_encode = (_json.make_encoder({}, _unserialisable, _json.encode_basestring_ascii, None, ":", ",",
                              False, False, False) if _json is not None else None)


def _slow_loads(text):
    import json  # lazy: the json package only where _json's functions are missing

    return json.loads(text)


def loads(text: bytes | str):
    if _scan is None:
        return _slow_loads(text)
    if isinstance(text, (bytes, bytearray)):
        if text[:3] == b"\xef\xbb\xbf" or b"\x00" in text[:4]:
            return _slow_loads(text)        # a BOM, or UTF-16/32: json.loads knows these
        text = text.decode("utf-8")         # UnicodeDecodeError is a ValueError
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        obj, end = _scan(text, start)
    except (StopIteration, SystemError):
        # bad syntax: json's own error, with its position. (The accelerator raises the error class
        # it finds in an already imported json.decoder; without one it fails with SystemError.)
        return _slow_loads(text)
    if text[end:].strip(_WHITESPACE):
        return _slow_loads(text)            # "Extra data": the same
    return obj


def dumps(obj) -> str:
    if _encode is None:
        import json  # lazy: the json package only where _json's functions are missing

        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return "".join(_encode(obj, 0))
