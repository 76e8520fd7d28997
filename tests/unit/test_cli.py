"""`pycni` for people: `python -m cni`, `--help` of the command and of every verb, `--version`,
and the docs naming only verbs that exist."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cni.spec.version import PYCNI, SUPPORTED

ROOT = Path(__file__).resolve().parents[2]
VERBS = ("exec", "install", "agent", "helper", "inspect", "explain")


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    return subprocess.run([sys.executable, "-m", "cni", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL)


def test_python_m_cni_help_lists_every_verb():
    p = run("--help")
    assert p.returncode == 0, p.stderr
    for verb in VERBS:
        assert verb in p.stdout


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb):
    p = run(verb, "--help")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"usage: pycni {verb}")


def test_version_names_the_release_and_spec_versions():
    p = run("--version")
    assert p.returncode == 0
    assert p.stdout.splitlines()[0] == f"pycni {PYCNI}"
    assert all(v in p.stdout for v in SUPPORTED)


def test_python_m_cni_is_the_plugin_when_a_runtime_calls_it():
    p = run(env={"CNI_COMMAND": "VERSION"})
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["supportedVersions"] == list(SUPPORTED)


def test_pyproject_takes_the_version_from_the_one_place():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and "cni.spec.version.PYCNI" in text
    assert f"localhost/pycni:{PYCNI}" in (ROOT / "manifests" / "pycni.yaml").read_text()


def _code(markdown: str) -> list[str]:
    """The command text of a Markdown document: fenced blocks' lines and inline code spans.
    Blocks fenced as ```text are a program's output (benchmark tables), not commands."""
    fenced = [body for info, body in re.findall(r"^```([^\n]*)\n(.*?)^```", markdown, re.S | re.M)
              if info.strip() != "text"]
    rest = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    return [line for block in fenced for line in block.splitlines()] + re.findall(r"`([^`\n]+)`", rest)


def test_the_docs_name_only_verbs_that_exist():
    used = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in _code(doc.read_text()):
            used |= set(re.findall(r"(?:^|[\s/$])pycni ([a-z][\w-]*)", line))
    assert used, "the docs show no pycni command at all"
    assert used <= set(VERBS), f"docs name pycni verbs that do not exist: {sorted(used - set(VERBS))}"
