"""Console-script entry points. Each first offers the call to a running `pycni helper` and only
imports the plugin (and pyroute2, python-iptables, ...) when it has to run the call itself."""

from __future__ import annotations

import os
import sys


def use_host_libraries() -> None:
    """In a PyInstaller build the bootloader points LD_LIBRARY_PATH at the bundled libraries;
    programs we start (nft, a delegated plugin) are the host's and must load the host's. Called by
    the build's launchers (build/launcher.py, build/agent_launcher.py) before anything else."""
    if "LD_LIBRARY_PATH_ORIG" in os.environ:
        os.environ["LD_LIBRARY_PATH"] = os.environ.pop("LD_LIBRARY_PATH_ORIG")
    else:
        os.environ.pop("LD_LIBRARY_PATH", None)


def _serve(name: str) -> int:
    command = os.environ["CNI_COMMAND"]
    if command == "VERSION":                        # VERSION costs less here than a hand-over
        from cni.plugins import run

        return run(name, os.environ, sys.stdin.buffer, sys.stdout)
    import time

    from cni.runtime import calls, client

    started = time.perf_counter()
    rc = client.forward(name, os.environ, sys.stdin.buffer, sys.stdout)
    if rc is None:
        from cni.plugins import run

        rc = run(name, os.environ, sys.stdin.buffer, sys.stdout)
    if client.fallback:
        from cni.spec import skel

        served, code = "process", skel.last_code
    else:
        served, code = "helper", client.answer_code
    calls.record(os.environ, name, command, code, time.perf_counter() - started, served, client.fallback)
    return rc


def _about(name: str) -> int:
    from cni.plugins import ABOUT
    from cni.spec.version import SUPPORTED

    sys.stderr.write(f"{name}: {ABOUT[name]}; CNI versions {', '.join(SUPPORTED)}; see pycni --help\n")
    return 0


def pycni() -> int:
    if "CNI_COMMAND" in os.environ:
        return _serve("pycni")
    from cni.tools import cli

    return cli.main(sys.argv[1:])


def _plugin(name: str) -> int:
    return _serve(name) if "CNI_COMMAND" in os.environ else _about(name)


def pycni_ipam() -> int:
    return _plugin("pycni-ipam")


def pycni_portmap() -> int:
    return _plugin("pycni-portmap")


def pycni_bandwidth() -> int:
    return _plugin("pycni-bandwidth")


def pycni_loopback() -> int:
    return _plugin("pycni-loopback")


def by_name(argv0: str) -> int:
    """One executable, several names (the frozen build installs pycni-ipam, pycni-portmap,
    pycni-bandwidth, pycni-loopback and loopback as symlinks to pycni): the name a runtime ran decides the plugin.
    Unknown names act as `pycni`."""
    from cni.plugins import PLUGINS

    name = os.path.basename(argv0)
    return _plugin(name) if name in PLUGINS and name != "pycni" else pycni()
