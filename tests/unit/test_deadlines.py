"""Every child pycni starts has a deadline below the runtime's, and passing it is a clear error
(not a hang): a delegated plugin, and nft. The children are stand-ins that never answer."""

from __future__ import annotations

import shutil
import time

import pytest

from cni.firewall import nft
from cni.spec.errors import CNIError, TryAgainLater
from ipam import delegate


def hanging(path, name: str):
    exe = path / name
    exe.write_text(f"#!/bin/sh\nexec {shutil.which('sleep')} 30\n")
    exe.chmod(0o755)
    return exe


def test_a_delegated_plugin_that_never_answers(tmp_path, monkeypatch):
    hanging(tmp_path, "slow-ipam")
    monkeypatch.setattr(delegate, "DELEGATE_TIMEOUT", 0.5)
    t0 = time.monotonic()
    with pytest.raises(CNIError) as e:
        delegate.exec_plugin("slow-ipam", "ADD", {}, (str(tmp_path),), b"{}")
    assert time.monotonic() - t0 < 5
    assert e.value.msg == "plugin slow-ipam did not answer ADD" and "killed" in e.value.details


def test_nft_that_never_answers(tmp_path, monkeypatch):
    """The nft program (used where libnftables is missing, or with PYCNI_NFT=exec) has a deadline;
    in process, through libnftables, there is no child to wait for."""
    hanging(tmp_path, "nft")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("PYCNI_NFT", "exec")
    monkeypatch.setattr(nft, "_LIB", [])
    monkeypatch.setattr(nft, "NFT_TIMEOUT", 0.5)
    t0 = time.monotonic()
    with pytest.raises(TryAgainLater) as e:
        nft.transaction("add table inet pycni\n")
    assert time.monotonic() - t0 < 5
    assert e.value.code == 11 and "killed" in e.value.details
