"""`python -m cni`: the same as the `pycni` executable."""

import sys

from cni.entry import pycni

if __name__ == "__main__":
    sys.exit(pycni())
