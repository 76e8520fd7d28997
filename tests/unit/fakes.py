"""A tiny in-memory `ipam.store.Store` for allocator tests."""

from __future__ import annotations

import contextlib


class FakeStore:
    def __init__(self):
        self.files = {}      # ip -> (cid, ifname)
        self.cursors = {}    # set index -> ip
        self.locked = 0

    def present(self):
        return True

    @contextlib.contextmanager
    def lock(self, create=True):
        self.locked += 1
        try:
            yield
        finally:
            self.locked -= 1

    def reserve(self, ip, container_id, ifname, set_index):
        if ip in self.files:
            return False
        self.files[ip] = (container_id, ifname)
        self.cursors[set_index] = ip
        return True

    def last_reserved(self, set_index):
        return self.cursors.get(set_index)

    def release(self, ip):
        self.files.pop(ip, None)

    def holders(self):
        return dict(self.files)

    def forget(self, container_id, ifname):
        pass        # no links kept beside the "files"

    def prune(self):
        pass

    def held_by(self, container_id, ifname, exhaustive=True):
        return [ip for ip, h in self.files.items() if h in ((container_id, ifname), (container_id, ""))]
