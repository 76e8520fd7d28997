"""The agent hosts the resident helper (`pycni helper`) so every node has one without another unit.

The helper it starts is the build it installed, run from the bin dir's own path (`<bin-dir>/pycni`):
the plugin a runtime executes and the helper then have the same build identity (the helper answers
a caller of another build "not mine"), and when the agent installs a new build the helper sees
`pycni` point elsewhere and re-executes itself as that build. In the DaemonSet the bin dir is
mounted at the node's own path (/opt/cni/bin), so the helper's files are where the node sees them
once a call has moved the helper's child into the caller's mount namespace.

If the helper exits it is started again, with a back-off (1 s doubling to 30 s; a helper that ran
for a minute starts over at 1 s). Pod starts never wait for it: without a helper every call runs
in process. The helper dies with the agent (PR_SET_PDEATHSIG, SIGTERM: it removes its socket).
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

from cni.linux.children import tied_to_me
from cni.spec.log import log

BACKOFF_FIRST, BACKOFF_MAX, HEALTHY_AFTER = 1.0, 30.0, 60.0


class HelperHost:
    def __init__(self, exe: Path, socket: str, clock=time.monotonic, max_calls: int | None = None):
        self.exe, self.socket, self.clock = exe, socket, clock
        self.extra = ["--max-calls", str(max_calls)] if max_calls else []
        self.proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="pycni-helper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _supervise(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stopping.is_set():
            began = self.clock()
            try:
                # forked from this thread, which lives as long as the helper should (PDEATHSIG)
                self.proc = subprocess.Popen([str(self.exe), "helper", "--socket", self.socket, *self.extra],
                                             stdin=subprocess.DEVNULL, preexec_fn=tied_to_me(signal.SIGTERM))
            except OSError as e:
                log.error(f"agent: cannot start the helper {self.exe}: {e}")
                _say(f"cannot start the helper {self.exe}: {e}")
            else:
                _say(f"helper started (pid {self.proc.pid}, {self.socket})")
                code = self.proc.wait()
                if self._stopping.is_set():
                    return
                log.error(f"agent: the helper exited with {code}")
                _say(f"helper exited with {code}; calls run in process until it is back")
            if self.clock() - began >= HEALTHY_AFTER:
                backoff = BACKOFF_FIRST
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, BACKOFF_MAX)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread.is_alive():
            self._thread.join(timeout)


def _say(text: str) -> None:
    print(f"agent: {text}", flush=True)
