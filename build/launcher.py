"""PyInstaller entry script: the one frozen executable behind pycni, pycni-ipam and pycni-portmap."""

import os
import sys

# The bootloader points LD_LIBRARY_PATH at the bundled libraries; programs we start (nft, a
# delegated IPAM plugin, ...) are the host's and must load the host's libraries.
if "LD_LIBRARY_PATH_ORIG" in os.environ:
    os.environ["LD_LIBRARY_PATH"] = os.environ.pop("LD_LIBRARY_PATH_ORIG")
else:
    os.environ.pop("LD_LIBRARY_PATH", None)

from cni.entry import by_name  # noqa: E402

sys.exit(by_name(sys.argv[0]))
