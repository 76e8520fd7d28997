"""`pycni install`: atomic binary and conflist installation (cni.tools.install), on fake builds."""

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from cni.tools import install
from cni.spec.errors import CNIError, InvalidConfig


def fake_build(root: Path, tag: str) -> Path:
    """A stand-in for dist/pycni: an executable that prints its tag, and an _internal dir."""
    b = root / f"build-{tag}"
    (b / "_internal" / "lib").mkdir(parents=True)
    (b / "_internal" / "lib" / "libfake.so").write_text(tag)
    exe = b / "pycni"
    exe.write_text(f"#!/bin/sh\necho {tag} $(basename $0)\n")
    exe.chmod(0o755)
    return b


def test_install_layout_and_names(tmp_path):
    b = fake_build(tmp_path, "one")
    bin_dir = tmp_path / "bin"
    install.install_binaries(b, bin_dir)
    build = install.bundle_id(b)
    for name in install.NAMES:
        assert os.readlink(bin_dir / name) == f".pycni/{build}/pycni"
        out = subprocess.run([bin_dir / name], capture_output=True, text=True).stdout.split()
        assert out == ["one", name]
    assert (bin_dir / ".pycni" / build / "_internal" / "lib" / "libfake.so").read_text() == "one"
    assert sorted(p.name for p in bin_dir.iterdir()) == sorted([".pycni", "loopback", *install.NAMES])
    assert os.readlink(bin_dir / "loopback") == f".pycni/{build}/pycni"


def test_same_build_same_id_and_no_copy(tmp_path):
    b = fake_build(tmp_path, "one")
    bin_dir = tmp_path / "bin"
    install.install_binaries(b, bin_dir)
    install.install_binaries(b, bin_dir)
    assert [p.name for p in (bin_dir / ".pycni").iterdir()] == [install.bundle_id(b)]


def test_previous_build_kept_older_retired_then_removed(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    ids = []
    for tag in ("one", "two", "three"):
        b = fake_build(tmp_path, tag)
        install.install_binaries(b, bin_dir)
        ids.append(install.bundle_id(b))
    assert len(set(ids)) == 3
    store = bin_dir / ".pycni"
    # the oldest is retired, not removed: a call started from it may still be running
    assert sorted(p.name for p in store.iterdir()) == sorted(ids)
    assert (store / ids[0] / ".retired").exists() and not (store / ids[1] / ".retired").exists()
    install.install_binaries(fake_build(tmp_path, "four"), bin_dir)      # within the grace
    assert (store / ids[0]).is_dir() and (store / ids[1] / ".retired").exists()
    real_time = install.time.time
    monkeypatch.setattr(install.time, "time", lambda: real_time() + install.RETIRE_GRACE_SECONDS + 1)
    install.install_binaries(fake_build(tmp_path, "five"), bin_dir)      # after it
    assert not (store / ids[0]).exists() and not (store / ids[1]).exists()
    assert (store / ids[2] / ".retired").exists()


def test_replaces_a_plain_file(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pycni").write_text("old one-file build")
    install.install_binaries(fake_build(tmp_path, "one"), bin_dir)
    assert (bin_dir / "pycni").is_symlink()


def test_another_vendors_loopback_is_kept(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "loopback").write_text("the reference plugins' loopback")
    out = install.main(str(bin_dir), str(tmp_path / "net.d"), None, str(fake_build(tmp_path, "one")), None)
    assert (bin_dir / "loopback").read_text() == "the reference plugins' loopback"
    assert "kept" in out[-1] and (bin_dir / "pycni-loopback").is_symlink()


def test_exec_never_fails_while_builds_are_swapped(tmp_path):
    """A runtime exec'ing the plugin during upgrades sees the old or the new build, nothing else."""
    bin_dir = tmp_path / "bin"
    builds = [fake_build(tmp_path, t) for t in ("one", "two")]
    install.install_binaries(builds[0], bin_dir)
    failures, seen, stop = [], set(), threading.Event()

    def runtime():
        while not stop.is_set():
            p = subprocess.run([bin_dir / "pycni-ipam"], capture_output=True, text=True)
            if p.returncode != 0:
                failures.append(p.stderr)
            else:
                seen.add(p.stdout.split()[0])

    t = threading.Thread(target=runtime)
    t.start()
    try:
        for i in range(60):
            install.install_binaries(builds[i % 2], bin_dir)
    finally:
        stop.set()
        t.join()
    assert failures == [] and seen <= {"one", "two"} and seen


def test_not_a_build(tmp_path):
    with pytest.raises(InvalidConfig):
        install.install_binaries(tmp_path, tmp_path / "bin")
    with pytest.raises(CNIError, match="self-contained build"):
        install.main(str(tmp_path / "bin"), str(tmp_path / "net.d"), None, None, None)


CONFLIST = {"cniVersion": "1.0.0", "name": "pods", "plugins": [
    {"type": "pycni", "bridge": "cni0", "ipam": {"type": "pycni-ipam", "subnet": "10.1.0.0/24"}},
    {"type": "pycni-portmap", "capabilities": {"portMappings": True}}]}


def test_conflist_written_atomically_with_conflist_name(tmp_path):
    src = tmp_path / "10-pods.yaml"
    import yaml

    src.write_text(yaml.safe_dump(CONFLIST))
    out = install.main(str(tmp_path / "bin"), str(tmp_path / "net.d"), str(src),
                       str(fake_build(tmp_path, "one")), None)
    assert out[1].endswith("net.d/10-pods.conflist")
    assert [p.name for p in (tmp_path / "net.d").iterdir()] == ["10-pods.conflist"]
    assert json.loads((tmp_path / "net.d" / "10-pods.conflist").read_text()) == CONFLIST


@pytest.mark.parametrize("bad, why", [
    ({**CONFLIST, "cniVersion": "9.9.9"}, "cniVersion"),
    ({**CONFLIST, "name": ""}, "name"),
    ({**CONFLIST, "plugins": [{"bridge": "x"}]}, "type"),
    ({**CONFLIST, "plugins": [{"type": "pycni", "mtu": "big", "ipam": {}}]}, "mtu"),
    ({**CONFLIST, "plugins": [{"type": "pycni-portmap", "backend": "pf"}]}, "backend"),
    ({**CONFLIST, "plugins": [{"type": "pycni-bandwidth", "egressRate": 1000}]}, "burst must also be set"),
    ({**CONFLIST, "plugins": [{"type": "pycni", "ingressBurst": 8, "ipam": {}}]}, "rate must also be set"),
])
def test_bad_conflist_changes_nothing(tmp_path, bad, why):
    src = tmp_path / "10-bad.conflist"
    src.write_text(json.dumps(bad))
    with pytest.raises(InvalidConfig) as e:
        install.main(str(tmp_path / "bin"), str(tmp_path / "net.d"), str(src),
                     str(fake_build(tmp_path, "one")), None)
    assert why in (e.value.msg + e.value.details)
    assert not (tmp_path / "bin").exists() and not (tmp_path / "net.d").exists()


def test_conflist_filename():
    assert install.conflist_filename("/x/10-a.conf") == "10-a.conflist"
    assert install.conflist_filename("/x/a.yaml", "99-b.conflist") == "99-b.conflist"
    with pytest.raises(InvalidConfig):
        install.conflist_filename("/x/.hidden")


def test_helper_unit_for_a_hand_made_node(tmp_path, monkeypatch):
    """`pycni install --helper`: the unit starts the bin dir's own `pycni helper` (the installed
    build, re-executed after an upgrade), is valid for systemd, and is only enabled where systemd
    runs (not here)."""
    isdir = os.path.isdir
    monkeypatch.setattr(install.os.path, "isdir", lambda p: p != "/run/systemd/system" and isdir(p))
    b = fake_build(tmp_path, "one")
    bin_dir, units = tmp_path / "bin", tmp_path / "units"
    done = install.main(str(bin_dir), str(tmp_path / "conf"), None, str(b), None, str(units), "/run/pycni-x/h.sock")
    unit = (units / install.HELPER_UNIT).read_text()
    assert f"ExecStart={bin_dir}/pycni helper --socket /run/pycni-x/h.sock\n" in unit
    assert "Restart=always\n" in unit and "KillMode=process\n" in unit and "WantedBy=multi-user.target" in unit
    assert done[-1].startswith(f"{install.HELPER_UNIT} not enabled: systemd is not running here")
    assert [p.name for p in units.iterdir()] == [install.HELPER_UNIT]       # no temporary left
    verify = subprocess.run(["systemd-analyze", "verify", str(units / install.HELPER_UNIT)],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and not verify.stderr.strip() and not verify.stdout.strip(), verify.stderr


def with_interpreter(build: Path) -> Path:
    """A fake build that carries its own interpreter (as build/build.sh adds _internal/bin/python3.11):
    it reports what it was asked to run."""
    interp = build / "_internal" / "bin" / "python3.11"
    interp.parent.mkdir()
    interp.write_text('#!/bin/sh\necho interpreter "$1"\n')
    interp.chmod(0o755)
    return build


def test_names_run_the_launcher_with_the_builds_own_interpreter(tmp_path):
    b = with_interpreter(fake_build(tmp_path, "one"))
    bin_dir = tmp_path / "bin"
    install.install_binaries(b, bin_dir)
    build = install.bundle_id(b)
    assert not (b / install.LAUNCHER).exists()          # written into the installed copy only
    for name in install.NAMES:
        assert os.readlink(bin_dir / name) == f".pycni/{build}/{install.LAUNCHER}"
        out = subprocess.run([bin_dir / name], capture_output=True, text=True).stdout.split()
        assert out == ["interpreter", str(bin_dir / name)]          # the name decides the plugin
    first = (bin_dir / ".pycni" / build / install.LAUNCHER).read_text().splitlines()[0]
    assert first == f"#!{bin_dir}/.pycni/{build}/_internal/bin/python3.11"


def test_launcher_names_the_interpreter_where_the_node_sees_it(tmp_path):
    b = with_interpreter(fake_build(tmp_path, "one"))
    bin_dir = tmp_path / "mnt" / "bin"
    install.install_binaries(b, bin_dir, node_bin_dir=Path("/opt/cni/bin"))
    build = install.bundle_id(b)
    first = (bin_dir / ".pycni" / build / install.LAUNCHER).read_text().splitlines()[0]
    assert first == f"#!/opt/cni/bin/.pycni/{build}/_internal/bin/python3.11"
    install.install_binaries(b, bin_dir)                  # the same build, now seen where it is
    first = (bin_dir / ".pycni" / build / install.LAUNCHER).read_text().splitlines()[0]
    assert first == f"#!{bin_dir}/.pycni/{build}/_internal/bin/python3.11"


def test_no_launcher_when_the_shebang_would_be_too_long_or_there_is_no_interpreter(tmp_path):
    b = with_interpreter(fake_build(tmp_path, "one"))
    deep = tmp_path / ("d" * 120) / ("e" * 120) / "bin"
    install.install_binaries(b, deep)
    assert os.readlink(deep / "pycni") == f".pycni/{install.bundle_id(b)}/pycni"
    assert subprocess.run([deep / "pycni"], capture_output=True, text=True).stdout.split() == ["one", "pycni"]
    plain = fake_build(tmp_path, "two")
    install.install_binaries(plain, tmp_path / "bin")
    assert os.readlink(tmp_path / "bin" / "pycni") == f".pycni/{install.bundle_id(plain)}/pycni"
