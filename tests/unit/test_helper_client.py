"""The helper client's bounds and its import rule (cni.runtime.client)."""

import subprocess
import sys

from cni.runtime import client
from cni.spec import stdin


def test_the_client_bounds_stdin_as_the_call_in_process_does():
    assert client.MAX_STDIN == stdin.MAX_STDIN


def test_the_client_imports_only_the_interpreters_built_in_modules():
    code = ("import sys; before = set(sys.modules); import cni.runtime.client; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    new = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2])).stdout.split()
    # the interpreter's C modules (built in, or _socket and _struct beside it) and struct, their
    # few-line front-end: nothing that costs an import
    allowed = {"cni", "cni.runtime", "cni.runtime.client", "_socket", "_struct", "struct"}
    assert set(new) - allowed <= set(sys.builtin_module_names), sorted(set(new) - allowed)
