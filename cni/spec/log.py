"""A small logger for the exec path: lines to a log file and, from warnings up, to stderr.
Lines are readable text by default; with `logFormat: json` each is one JSON object carrying the
call (plugin, command, network, containerID, ifname) for log collectors.

Rule: logging never fails a CNI call; if the file cannot be written we go on without it.
(The stdlib `logging` package is avoided on purpose: it costs import time on every pod start.)
"""

from __future__ import annotations

import os
import sys
import time

DEFAULT_LOG_FILE = "/var/log/pycni.log"
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def escape(text: str) -> str:
    """One text log line stays one line: every non-printable character (newline, CR, ESC, NUL,
    Unicode line separators...) written as a Python escape. Printable text is returned as is."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Logger:
    def __init__(self) -> None:
        self.path = os.environ.get("PYCNI_LOG_FILE", DEFAULT_LOG_FILE)
        self.level = LEVELS["info"]
        self.stderr = sys.stderr
        self.context = ""
        self.json = False
        self.fields: dict[str, str] = {}

    def configure(self, path: str | None = None, level: str | None = None, context: str = "",
                  fmt: str | None = None, fields: dict[str, str] | None = None) -> None:
        if path is not None:
            self.path = path
        if level in LEVELS:
            self.level = LEVELS[level]
        if context:
            self.context = context
        if fmt in ("text", "json"):
            self.json = fmt == "json"
        if fields:
            self.fields = dict(fields)

    def _emit(self, level: str, msg: str) -> None:
        n = LEVELS[level]
        if n < self.level:
            return
        if self.json:
            from cni.spec import jsonio  # lazy: only for logFormat json

            line = jsonio.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "level": level,
                                 "pid": os.getpid(), **self.fields, "msg": msg}) + "\n"
        else:
            line = (f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {level.upper()} [{os.getpid()}] "
                    f"{escape(self.context + msg)}\n")
        if n >= LEVELS["warning"] and self.stderr is not None:
            try:
                self.stderr.write(f"pycni: {escape(msg)}\n")
            except (OSError, ValueError):
                pass
        if self.path:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
                try:
                    os.write(fd, line.encode(errors="replace"))
                finally:
                    os.close(fd)
            except (OSError, ValueError):   # ValueError: a NUL byte in a configured path
                pass

    def debug(self, msg: str) -> None:
        self._emit("debug", msg)

    def info(self, msg: str) -> None:
        self._emit("info", msg)

    def warning(self, msg: str) -> None:
        self._emit("warning", msg)

    def error(self, msg: str) -> None:
        self._emit("error", msg)


log = Logger()
