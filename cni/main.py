"""`python -m cni.main`: the same as the `pycni` executable."""

import sys

from .entry import pycni

if __name__ == "__main__":
    sys.exit(pycni())
