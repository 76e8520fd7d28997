"""PyInstaller entry script: the one frozen executable behind pycni, pycni-ipam, pycni-portmap, pycni-bandwidth
and the loopback plugin (the name it is run as decides)."""

import sys

from cni.entry import by_name, use_host_libraries

use_host_libraries()
sys.exit(by_name(sys.argv[0]))
