"""PyInstaller entry script of `pycni-agent`, the DaemonSet's process: `pycni agent` with the
Kubernetes client bundled (the plugin build stays without it)."""

import sys

from cni.entry import use_host_libraries

use_host_libraries()

from cni.cli import main  # noqa: E402

sys.exit(main(["agent", *sys.argv[1:]]))
