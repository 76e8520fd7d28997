"""Throwaway namespaces for integration tests: a "node" namespace plays the host, pods beside it.

Nothing here touches the machine's own network namespace: the plugin always runs under
`ip netns exec <node>`, and every namespace is removed at teardown, pass or fail.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PREFIX = "pycnit-"
# PYCNI_BIN_DIR runs these tests against another build of the executables (e.g. dist/pycni)
BIN = Path(os.environ.get("PYCNI_BIN_DIR") or Path(sys.executable).parent).resolve()
DEV_BIN = not os.environ.get("PYCNI_BIN_DIR")   # the venv's console scripts (Python env vars apply)
REFERENCE_DIR = Path("/usr/lib/cni")
IP = shutil.which("ip") or "/usr/sbin/ip"   # absolute: a test may run the plugin with another PATH
_counter = itertools.count()


TIMEOUT = 120      # seconds for any one command a test runs: a hang fails the test, not the suite


def sh(*cmd: str, check: bool = True, ns: str | None = None) -> str:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    proc = subprocess.run(full, capture_output=True, text=True, timeout=TIMEOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(full)} failed: {proc.stderr.strip()}")
    return proc.stdout


def ready_line(proc: subprocess.Popen, timeout: float = 20.0, stream=None) -> str:
    """The first line a child prints (a server's "ready"), or an assertion after `timeout`:
    a bare readline() would wait forever for a child that hangs before printing."""
    import selectors

    with selectors.DefaultSelector() as sel:
        stream = stream or proc.stdout
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            proc.kill()
            raise AssertionError(f"{proc.args} printed nothing in {timeout:g}s")
    return stream.readline()


def _all_test_netns() -> list[str]:
    """Test namespaces of test runs that are over: names carry the pid of the run that made them,
    and another run going on at the same time keeps its own."""
    out = []
    for line in sh("ip", "netns", "list").splitlines():
        name = line.split()[0]
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and os.path.exists(f"/proc/{pid}"):
            continue
        out.append(name)
    return out


@pytest.fixture(scope="session", autouse=True)
def _no_stale_namespaces():
    if os.geteuid() == 0:
        for ns in _all_test_netns():    # left behind by a killed earlier run
            sh("ip", "netns", "del", ns, check=False)
    yield
    if os.geteuid() == 0:
        for ns in _all_test_netns():
            sh("ip", "netns", "del", ns, check=False)


@dataclass
class Call:
    rc: int
    out: dict | None
    stderr: str

    @property
    def code(self):
        return (self.out or {}).get("code")


@dataclass
class Node:
    """A node namespace with its own data dir, log file and pods."""
    name: str
    tmp: Path
    pods: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.tmp / "ipam"

    @property
    def log_file(self) -> Path:
        return self.tmp / "pycni.log"

    def sh(self, *cmd: str, check: bool = True) -> str:
        return sh(*cmd, check=check, ns=self.name)

    def pod(self) -> str:
        name = f"{self.name}-p{len(self.pods)}"
        sh("ip", "netns", "add", name)
        self.pods.append(name)
        sh("ip", "link", "set", "lo", "up", ns=name)
        return name

    def run(self, exe: str | Path, command: str, conf: dict | bytes, netns: str = "", cid: str = "c1",
            ifname: str = "eth0", args: str = "", env: dict | None = None) -> Call:
        """Run a plugin inside the node namespace the way a runtime does: env + stdin."""
        e = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        e.update(CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_IFNAME=ifname, CNI_ARGS=args,
                 CNI_PATH=f"{BIN}:{REFERENCE_DIR}",
                 CNI_NETNS=f"/var/run/netns/{netns}" if netns and not netns.startswith("/") else netns,
                 PYCNI_LOG_FILE=str(self.log_file),   # errors before the config is read log here
                 PYCNI_HELPER_SOCKET=str(self.tmp / "helper.sock"))   # no helper unless a test starts one
        e.update(env or {})
        stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        proc = subprocess.run([IP, "netns", "exec", self.name, str(exe)], input=stdin, env=e,
                              capture_output=True, timeout=TIMEOUT)
        text = proc.stdout.decode()
        assert "Traceback" not in text
        return Call(proc.returncode, json.loads(text) if text.strip() else None, proc.stderr.decode())

    def pycni(self, command: str, conf, netns: str = "", **kw) -> Call:
        return self.run(BIN / "pycni", command, conf, netns, **kw)

    def links(self) -> list[str]:
        return [line.split(":")[1].strip().split("@")[0]
                for line in self.sh("ip", "-o", "link", "show").splitlines()]

    def reservations(self, network: str) -> list[str]:
        d = self.data_dir / network
        if not d.exists():
            return []
        return sorted(p.name for p in d.iterdir()
                      if p.name != "lock" and not p.name.startswith(("last_", ".")))

    def scratch_files(self, network: str) -> list[str]:
        """Anything in the network's data dir besides reservations, the lock, the cursors and the
        attachments' links to live reservations (a reservation half written, a temporary file, a
        link whose address file is gone): nothing, after any operation."""
        d = self.data_dir / network
        return stray_files(d) if d.exists() else []


def stray_files(netdir: Path) -> list[str]:
    out = [p.name for p in netdir.iterdir() if p.name.startswith(".") and p.name != ".pycni-held"]
    index = netdir / ".pycni-held"
    for key in sorted(index.iterdir()) if index.exists() else ():
        if key.name == "complete":
            continue
        links = list(key.iterdir()) if key.is_dir() else []
        out += [f".pycni-held/{key.name}"] if not links else []
        out += [f".pycni-held/{key.name}/{p.name}" for p in links if p.stat().st_nlink < 2]
    return sorted(out)


@pytest.fixture
def node(tmp_path):
    name = f"{PREFIX}{os.getpid()}-{next(_counter)}"
    sh("ip", "netns", "add", name)
    n = Node(name, tmp_path)
    try:
        n.sh("ip", "link", "set", "lo", "up")
        yield n
    finally:
        for p in n.pods:
            sh("ip", "netns", "del", p, check=False)
        sh("ip", "netns", "del", name, check=False)


def netconf(node: Node, version: str = "1.0.0", name: str = "testnet", subnet: str = "10.88.0.0/24",
            ranges: list | None = None, **extra) -> dict:
    conf = {
        "cniVersion": version, "name": name, "type": "pycni", "bridge": "tbr0",
        "isGateway": True, "isDefaultGateway": True, "logFile": str(node.log_file),
        "ipam": {"type": "pycni-ipam", "dataDir": str(node.data_dir),
                 "ranges": ranges or [[{"subnet": subnet}]]},
    }
    conf.update(extra)
    return conf
