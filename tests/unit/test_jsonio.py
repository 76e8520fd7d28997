"""cni.spec.jsonio reads and writes what `json` does, in a process that never imported `json`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

from cni.spec import jsonio

ROOT = __file__.rsplit("/tests/", 1)[0]

documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@given(documents)
def test_round_trip_matches_json(doc):
    text = jsonio.dumps(doc)
    assert text == json.dumps(doc, separators=(",", ":"))
    assert jsonio.loads(text) == json.loads(text)
    assert jsonio.loads(text.encode()) == json.loads(text)


@given(st.text(max_size=40))
def test_any_text_parses_or_fails_as_json_does(text):
    try:
        want = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            jsonio.loads(text)
        return
    got = jsonio.loads(text)
    assert got == want or (got != got and want != want)     # NaN


BAD = ['{', '{"a": [1,}', '{} x', '"\\x"', '[1, 2', '', '  ', 'nul', b'\xff', b'{"a":1}\x00']


def test_errors_without_json_imported():
    """The C accelerator only raises json's error class when json.decoder is already imported;
    in a plugin process it is not (that is the point): every bad input must still be a ValueError."""
    code = ("import sys; from cni.spec import jsonio\n"
            "assert 'json' not in sys.modules\n"
            f"for bad in {BAD!r}:\n"
            "    try:\n        jsonio.loads(bad)\n    except ValueError:\n        continue\n"
            "    raise SystemExit(f'no error for {bad!r}')\n"
            "print(jsonio.dumps({'ok': [1, 2.5, None, 'x']}), 'json' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-I", "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ['{"ok":[1,2.5,null,"x"]}', "True"]    # json came in for the errors only


def test_byte_order_mark_and_utf16_as_json_reads_them():
    assert jsonio.loads(b'\xef\xbb\xbf{"a":1}') == {"a": 1}
    assert jsonio.loads('{"a":1}'.encode("utf-16")) == {"a": 1}


def test_nan_is_refused_on_output():
    with pytest.raises(ValueError):
        jsonio.dumps({"x": float("nan")})
    with pytest.raises(TypeError):
        jsonio.dumps({"x": object()})
