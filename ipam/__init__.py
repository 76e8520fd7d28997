"""pycni's file-backed IPAM: the on-disk layout of the reference host-local plugin.

Importable on its own: `ipam.config` parses, `ipam.allocator` decides, `ipam.store` keeps files.
"""
