"""pycni: a CNI plugin (bridge + file-backed IPAM) in Python."""

__version__ = "0.1.0"
