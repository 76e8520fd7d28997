"""Upgrades under load: `pycni install` of three builds in a row (the oldest is no longer the
installed one nor the one before it) while a DEL started from the oldest build is still running.
The DEL must finish as if nothing happened: a build a running call may use is never removed."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.integration.conftest import IP, netconf, node  # noqa: F401  (fixture)


def variant(artifact: Path, where: Path, n: int) -> Path:
    """A copy of the build with one extra file: another build id, the same code."""
    shutil.copytree(artifact, where, symlinks=True)
    (where / "_internal" / "pycni-variant").write_text(str(n))
    return where


def install(bundle: Path, bin_dir: Path) -> None:
    subprocess.run([bundle / "pycni", "install", "--bin-dir", bin_dir, "--conf-dir", bin_dir.parent / "conf",
                    "--from", bundle], check=True, capture_output=True, timeout=120)


def test_del_from_a_build_pruned_while_it_runs(node, artifact, tmp_path):  # noqa: F811
    bundles = [variant(artifact, tmp_path / f"b{n}", n) for n in range(3)]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    install(bundles[0], bin_dir)
    oldest = Path(os.readlink(bin_dir / "pycni")).parts[1]
    pod = node.pod()
    conf = netconf(node, "1.0.0", ipMasq=True, capabilities={"portMappings": True},
                   runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80}]})
    add = node.run(bin_dir / "pycni", "ADD", conf, pod, cid="old")
    assert add.rc == 0, add.out
    # the DEL starts from the oldest build and waits for the IPAM lock, which we hold meanwhile
    lock = os.open(node.data_dir / "testnet" / "lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "DEL", "CNI_CONTAINERID": "old",
           "CNI_NETNS": f"/var/run/netns/{pod}", "CNI_IFNAME": "eth0", "CNI_PATH": str(bin_dir),
           "PYCNI_LOG_FILE": str(node.log_file), "PYCNI_HELPER": "0",
           "PYCNI_HELPER_SOCKET": str(node.tmp / "helper.sock")}
    dele = subprocess.Popen([IP, "netns", "exec", node.name, str(bin_dir / "pycni")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env)
    dele.stdin.write(json.dumps({**conf, "prevResult": add.out}).encode())
    dele.stdin.close()
    try:
        time.sleep(1.5)                      # well into its wait for the lock
        assert dele.poll() is None, "the DEL did not wait for the IPAM lock"
        for bundle in bundles[1:]:
            install(bundle, bin_dir)
        assert Path(os.readlink(bin_dir / "pycni")).parts[1] != oldest
    finally:
        os.close(lock)
    dele.wait(timeout=60)
    out = dele.stdout.read()
    dele.stdout.close()
    assert dele.returncode == 0, out.decode()
    assert node.reservations("testnet") == []
    assert "pycni testnet/old" not in node.sh("nft", "list", "ruleset")
    assert (bin_dir / ".pycni" / oldest).is_dir(), "a build in use was removed"


def test_a_helper_of_an_older_build_hands_calls_back_and_becomes_the_new_build(node, artifact, tmp_path):  # noqa: F811
    """A runtime upgrades the build while the helper runs: a caller of the new build is never served
    by the old code (the helper answers "not mine", the call runs in process), and the helper
    re-executes itself as the new build."""
    bundles = [variant(artifact, tmp_path / f"b{n}", n) for n in range(2)]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    install(bundles[0], bin_dir)
    sock = tmp_path / "helper.sock"
    helper = subprocess.Popen([IP, "netns", "exec", node.name, str(bin_dir / "pycni"), "helper", "--socket", str(sock)],
                              stderr=subprocess.PIPE, text=True)
    env = {"PYCNI_HELPER_SOCKET": str(sock)}
    try:
        assert "serving on" in helper.stderr.readline()
        old_build = os.path.realpath(f"/proc/{helper.pid}/exe")
        conf = netconf(node, "1.0.0")
        pods = [node.pod() for _ in range(3)]

        def served() -> int:
            return node.log_file.read_text().count("(helper) ADD") if node.log_file.exists() else 0

        assert node.run(bin_dir / "pycni", "ADD", conf, pods[0], cid="u0", env=env).rc == 0
        assert served() == 1
        install(bundles[1], bin_dir)
        add = node.run(bin_dir / "pycni", "ADD", conf, pods[1], cid="u1", env=env)
        assert add.rc == 0, add.out
        assert served() == 1                                 # the old helper did not serve it
        for _ in range(100):                                 # it re-executes as the new build
            if sock.exists() and os.path.realpath(f"/proc/{helper.pid}/exe") != old_build:
                break
            time.sleep(0.1)
        assert os.path.realpath(f"/proc/{helper.pid}/exe") != old_build
        for _ in range(100):
            if node.run(bin_dir / "pycni", "VERSION", conf, env=env).rc == 0 and sock.exists():
                break
            time.sleep(0.1)
        assert node.run(bin_dir / "pycni", "ADD", conf, pods[2], cid="u2", env=env).rc == 0
        assert served() == 2                                 # the new helper serves again
    finally:
        helper.kill()
        helper.wait()
        helper.stderr.close()
