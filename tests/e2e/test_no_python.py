"""The build runs where there is no Python: a busybox root filesystem with only glibc copied in.
VERSION, STATUS and a full ADD/DEL/CHECK from inside that chroot, pods in throwaway namespaces."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import IP, sh, node  # noqa: F401  (fixture)

from .conftest import copy_file, host_libraries

BUSYBOX = Path("/bin/busybox")


@pytest.fixture
def rootfs(tmp_path, artifact) -> Path:
    if not BUSYBOX.exists():
        pytest.fail("busybox-static is missing: the test command installs it (scripts/setup.sh)")
    root = tmp_path / "rootfs"
    for d in ("bin", "proc", "sys", "run/netns", "tmp", "var/lib/cni", "var/log", "etc/cni/net.d"):
        (root / d).mkdir(parents=True)
    (root / "bin" / "busybox").write_bytes(BUSYBOX.read_bytes())
    (root / "bin" / "busybox").chmod(0o755)
    for applet in ("sh", "ls", "cat", "ip"):
        os.symlink("busybox", root / "bin" / applet)
    # install the build the way a user does (its own `install` command), into the chroot's dirs,
    # which the chroot sees at /opt/cni/bin: the names run the launcher with the build's interpreter
    subprocess.run([artifact / "pycni", "install", "--bin-dir", root / "opt/cni/bin", "--node-bin-dir",
                    "/opt/cni/bin", "--conf-dir", root / "etc/cni/net.d"], check=True, capture_output=True)
    assert os.readlink(root / "opt/cni/bin/pycni").endswith("/pycni-launch")
    bundle = (root / "opt/cni/bin/pycni").resolve().parent
    for lib in host_libraries(bundle / "pycni", bundle / "_internal"):
        copy_file(lib, root)
    # glibc loads libgcc_s at run time, for the unwinding of a thread that ends (pthread_exit):
    # without it, a DEL whose veth-deleting thread returns before the process exits aborts
    # ("libgcc_s.so.1 must be installed for pthread_exit to work"), more often the busier the machine
    gcc_s = sorted(Path("/").glob("usr/lib/*-linux-gnu/libgcc_s.so.1")) or \
        sorted(Path("/").glob("lib/*-linux-gnu/libgcc_s.so.1"))
    assert gcc_s, "libgcc_s.so.1 not found on the machine"
    copy_file(gcc_s[0], root)
    return root


def chroot_run(node, root: Path, args: list[str], env: dict, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """Run `args` chrooted into `root`, in the node namespace, with /proc and /run/netns mounted
    in a private mount namespace (nothing is mounted on the machine)."""
    script = ('set -e; mount -t proc proc "$R/proc"; mount --rbind /run/netns "$R/run/netns"; '
              'exec chroot "$R" "$@"')
    full_env = {"R": str(root), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env}   # only /bin exists inside
    return subprocess.run([IP, "netns", "exec", node.name, "unshare", "--mount", "--propagation",
                           "private", "sh", "-c", script, "sh", *args],
                          input=stdin, env=full_env, capture_output=True)


def cni(node, root, command, conf, netns="", cid="c1"):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0",
           "CNI_NETNS": f"/run/netns/{netns}" if netns else "", "CNI_PATH": "/opt/cni/bin"}
    proc = chroot_run(node, root, ["/opt/cni/bin/pycni"], env, json.dumps(conf).encode())
    out = proc.stdout.decode()
    return proc.returncode, (json.loads(out) if out.strip() else None), proc.stderr.decode()


def test_rootfs_has_no_python(node, rootfs):
    bundle = (rootfs / "opt/cni/bin/pycni").resolve().parent
    assert not (bundle / "_internal" / "kubernetes").exists()     # the agent's client is not in the plugin
    assert [p for p in rootfs.rglob("*python*") if ".pycni" not in p.parts] == []
    proc = chroot_run(node, rootfs, ["/bin/sh", "-c", "command -v python3 python"], {})
    assert proc.returncode != 0 and proc.stdout == b""


def test_version_add_check_del_without_python(node, rootfs):
    conf = {"cniVersion": "1.1.0", "name": "chrootnet", "type": "pycni", "bridge": "cbr0",
            "isGateway": True, "logFile": "/var/log/pycni.log",
            "ipam": {"type": "pycni-ipam", "ranges": [[{"subnet": "10.77.0.0/24"}]]}}
    rc, out, err = cni(node, rootfs, "VERSION", conf)
    assert rc == 0 and "1.1.0" in out["supportedVersions"], err

    rc, out, err = cni(node, rootfs, "STATUS", conf)
    assert rc == 0, err
    # masquerade needs nft (or the iptables libraries): the chroot has neither, and STATUS says so
    rc, out, _ = cni(node, rootfs, "STATUS", {**conf, "ipMasq": True})
    assert out["code"] == 50 and "nft" in out["details"] and "iptables" in out["details"]

    pod = node.pod()
    rc, result, err = cni(node, rootfs, "ADD", conf, pod)
    assert rc == 0, err
    ip = result["ips"][0]["address"].split("/")[0]
    assert ip.startswith("10.77.0.")
    assert f"inet {ip}/24" in sh("ip", "-o", "addr", "show", "eth0", ns=pod)
    assert "master cbr0" in node.sh("ip", "-o", "link", "show", "master", "cbr0")
    assert (rootfs / "var/lib/cni/networks/chrootnet" / ip).exists()
    sh("ping", "-c1", "-W2", "10.77.0.1", ns=pod)

    rc, _, err = cni(node, rootfs, "CHECK", {**conf, "prevResult": result}, pod)
    assert rc == 0, err
    rc, _, err = cni(node, rootfs, "DEL", conf, pod)
    assert rc == 0, err
    assert "eth0" not in sh("ip", "-o", "link", ns=pod)
    assert not (rootfs / "var/lib/cni/networks/chrootnet" / ip).exists()
    assert node.sh("ip", "-o", "link", "show", "master", "cbr0").strip() == ""
