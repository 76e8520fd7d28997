"""End-to-end tests of the self-contained build (dist/pycni) under real conditions: a root
filesystem without Python, containerd + runc, podman. They run the artifact, never the venv.

The build is made once per test run (build/build.sh) unless dist/pycni is newer than every source
file, or PYCNI_ARTIFACT names a build directory to test instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("cni", "ipam", "build")


def _stale(exe: Path) -> bool:
    if not exe.exists():
        return True
    built = exe.stat().st_mtime
    for top in SOURCES:
        for path in (ROOT / top).rglob("*"):
            if path.suffix in (".py", ".spec", ".sh") and ".work" not in path.parts \
                    and path.stat().st_mtime > built:
                return True
    return False


@pytest.fixture(scope="session")
def artifact() -> Path:
    """The one-directory build: a dir with `pycni`, `pycni-ipam`, `pycni-portmap`, `_internal/`."""
    given = os.environ.get("PYCNI_ARTIFACT")
    if given:
        return Path(given).resolve()
    dist = ROOT / "dist" / "pycni"
    if _stale(dist / "pycni"):
        subprocess.run(["bash", str(ROOT / "build" / "build.sh")], check=True, cwd=ROOT)
    return dist


def host_libraries(exe: Path, bundled: Path) -> set[Path]:
    """Shared libraries the build loads from the host: the executable's own (the PyInstaller
    bootloader is loaded by the system loader before any bundled library is known) and, for the
    bundled libraries, those the bundle does not carry."""
    inside = {p.name for p in bundled.rglob("*.so*")}

    def deps(binary: Path) -> list[Path]:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
        found = (next((x for x in line.split() if x.startswith("/")), None) for line in out.splitlines())
        return [Path(p) for p in found if p]

    libs = set(deps(exe))
    for lib in bundled.rglob("*.so*"):
        libs.update(p for p in deps(lib) if p.name not in inside)
    return libs


def copy_file(src: Path, root: Path) -> None:
    """Copy `src` to the same path under `root`, keeping symlinks' targets resolvable."""
    dest = root / src.relative_to("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src.resolve(), dest)


def have(*programs: str) -> bool:
    return all(shutil.which(p) for p in programs)


class Sandbox:
    """A long-running program (containerd) in the node's network namespace and in a private mount
    namespace where /run, /opt and /var/lib are empty tmpfs and `binds` (host dir -> path) are
    mounted: runtimes find our bin and conf dirs at their fixed paths and write nothing on the
    machine. `enter` runs more commands in the same namespaces."""

    def __init__(self, node_ns: str, cmd: list[str], binds: dict[str, str], log: Path):
        mounts = ["set -e", "for d in /run /opt /var/lib; do mount -t tmpfs -o mode=755 tmpfs $d; done"]
        for src, dest in binds.items():
            mounts.append(f'mkdir -p "{dest}" && mount --bind "{src}" "{dest}"')
        mounts.append('exec "$@"')
        self.log = log
        self._out = open(log, "wb")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{node_ns}", "unshare", "--mount", "--propagation",
             "private", "sh", "-c", "; ".join(mounts), "sh", *cmd],
            stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid      # nsenter, unshare and sh exec: the runtime keeps this PID

    def enter(self, *cmd: str, check: bool = True, timeout: float = 120,
              **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-n", *cmd], capture_output=True,
                              text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def popen(self, *cmd: str, log: Path) -> subprocess.Popen:
        return subprocess.Popen(["nsenter", "-t", str(self.pid), "-m", "-n", *cmd],
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


def pids_with(marker: str) -> list[int]:
    """PIDs whose command line contains `marker` (a path unique to one test), e.g. the shims our
    containerd started."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def wait_for(predicate, timeout: float = 30, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def busybox_rootfs(root: Path) -> Path:
    """A root filesystem of Debian's busybox-static, every applet linked, and /www for httpd."""
    (root / "bin").mkdir(parents=True)
    for d in ("www", "tmp", "proc", "sys", "dev", "etc", "run", "var"):
        (root / d).mkdir()
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        if applet != "busybox":
            os.symlink("busybox", root / "bin" / applet)
    (root / "www" / "index.html").write_text("hello from a pod on pycni\n")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    return root


@pytest.fixture
def client(node):
    """A machine beside the node: a namespace with a veth to it (10.250.0.2 -> node 10.250.0.1)."""
    name = node.pod()
    subprocess.run(["ip", "link", "add", "cl0", "netns", node.name, "type", "veth", "peer", "name",
                    "eth0", "netns", name], check=True)
    node.sh("ip", "addr", "add", "10.250.0.1/24", "dev", "cl0")
    node.sh("ip", "link", "set", "cl0", "up")
    for cmd in (["ip", "addr", "add", "10.250.0.2/24", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"]):
        subprocess.run(["ip", "netns", "exec", name, *cmd], check=True)
    return name
