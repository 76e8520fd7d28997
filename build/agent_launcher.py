"""PyInstaller entry script of `pycni-agent`, the DaemonSet's process: `pycni agent` with the
Kubernetes client bundled (the plugin build stays without it)."""

import os
import sys

if "LD_LIBRARY_PATH_ORIG" in os.environ:          # programs we start (nft) use the host's libraries
    os.environ["LD_LIBRARY_PATH"] = os.environ.pop("LD_LIBRARY_PATH_ORIG")
else:
    os.environ.pop("LD_LIBRARY_PATH", None)

from cni.cli import main  # noqa: E402

sys.exit(main(["agent", *sys.argv[1:]]))
