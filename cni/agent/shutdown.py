"""Stopping the agent without leaving a half-written node: every sync that writes (routes, the
masquerade and policy tables, the policy state files) runs inside `Writers.writing()`. On SIGTERM
`Writers.close` refuses new writes and waits for the ones under way; the agent then exits at
once (threads blocked on the API are abandoned: nothing of theirs is half done)."""

from __future__ import annotations

import threading
from contextlib import contextmanager


class Stopping(Exception):
    """The agent is stopping: this write is not started."""


class Writers:
    def __init__(self):
        self._cond = threading.Condition()
        self._busy = 0
        self.closed = False

    @contextmanager
    def writing(self):
        with self._cond:
            if self.closed:
                raise Stopping()
            self._busy += 1
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()

    def close(self, wait: float) -> bool:
        """No new writes; True once the running ones finished (False: still busy after `wait`)."""
        with self._cond:
            self.closed = True
            return self._cond.wait_for(lambda: self._busy == 0, wait)
