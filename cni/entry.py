"""Console-script entry points. Each first offers the call to a running `pycni helper` and only
imports the plugin (and pyroute2, python-iptables, ...) when it has to run the call itself."""

from __future__ import annotations

import os
import sys


def _forward(plugin: str) -> int | None:
    if "CNI_COMMAND" not in os.environ:
        return None
    from .helper_client import forward

    return forward(plugin, os.environ, sys.stdin.buffer, sys.stdout)


def pycni() -> int:
    rc = _forward("pycni")
    if rc is not None:
        return rc
    from .main import main

    return main()


def pycni_ipam() -> int:
    rc = _forward("pycni-ipam")
    if rc is not None:
        return rc
    from ipam.plugin import main

    return main()


def pycni_portmap() -> int:
    rc = _forward("pycni-portmap")
    if rc is not None:
        return rc
    from .portmap_plugin import main

    return main()
