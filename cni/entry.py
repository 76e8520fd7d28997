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


def _run_here(name: str, env, stdin, stdout) -> int:
    from cni.runtime.registry import run  # lazy: the plugin's imports only when this process runs the call

    return run(name, env, stdin, stdout)


def _serve(name: str) -> int:
    command = os.environ["CNI_COMMAND"]
    if command == "VERSION":                        # VERSION costs less here than a hand-over
        return _run_here(name, os.environ, sys.stdin.buffer, sys.stdout)
    import time  # lazy: per call, only what this command needs

    from cni.runtime import calls, client

    started = time.perf_counter()
    rc = client.forward(name, os.environ, sys.stdin.buffer, sys.stdout, _run_here)
    if rc is None:
        rc = _run_here(name, os.environ, sys.stdin.buffer, sys.stdout)
    if client.fallback:
        from cni.spec import skel  # lazy: per call, only what this command needs

        served, code = "process", skel.last_code
    else:
        served, code = "helper", client.answer_code
    calls.record(os.environ, name, command, code, time.perf_counter() - started, served, client.fallback)
    return rc


def _about(name: str) -> int:
    from cni.runtime.registry import ABOUT  # lazy: per call, only what this command needs
    from cni.spec.version import SUPPORTED

    sys.stderr.write(f"{name}: {ABOUT[name]}; CNI versions {', '.join(SUPPORTED)}; see pycni --help\n")
    return 0


def pycni() -> int:
    if "CNI_COMMAND" in os.environ:
        return _serve("pycni")
    from cni import cli  # lazy: per call, only what this command needs

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
    from cni.runtime.registry import PLUGINS  # lazy: per call, only what this command needs

    name = os.path.basename(argv0)
    return _plugin(name) if name in PLUGINS and name != "pycni" else pycni()
