"""What a user sees while a sweep runs: ddsweep's own lines, warnings that concern them, nothing misleading.

Ray Tune prints its own reporter (a configuration box, a TensorBoard hint, result paths) and logs
advice that is wrong for ddsweep (after Ctrl-C: "Resume experiment with: Tuner.restore(...)"; the
store, not Tune's state, decides what runs). `quiet_ray` keeps all of it, whole, in a log file and
lets through only ddsweep's `[ddsweep]` lines, errors, and Ray's warnings about resources that do
not fit (a trial asking for a GPU on a CPU-only cluster would otherwise wait silently forever).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

PREFIX = "[ddsweep]"
# Ray's loggers whose info and warnings are Tune/Train/Ray internals, not the user's concern ...
QUIETED = ("ray.tune", "ray.train", "ray.air", "ray._private.authentication")
# ... except these, which say why trials do not start.
KEPT = ("insufficient_resources",)


_live = None  # an orchestrator.progress.LiveLine kept under ddsweep's lines in a terminal (set_live)


def set_live(line) -> None:
    """Keep `line` (with clear() and draw()) under every line `say` prints; None removes (and clears) it."""
    global _live
    if _live is not None and line is None:
        _live.clear()
    _live = line


def say(msg: str) -> None:
    if _live is not None:
        _live.clear()
    print(f"{PREFIX} {msg}", flush=True)
    if _live is not None:
        _live.draw()


@dataclass
class Console:
    log_path: Path
    interrupted: bool = False  # Tune received Ctrl-C (SIGINT) and stopped the trials


class _Lines:
    """A stdout that passes ddsweep's lines through and keeps everything else in the log."""

    def __init__(self, real: TextIO, log: TextIO) -> None:
        self.real, self.log, self.buf = real, log, ""

    def write(self, s: str) -> int:
        self.buf += s
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            (self.real if line.startswith(PREFIX) else self.log).write(line + "\n")
        return len(s)

    def flush(self) -> None:
        self.real.flush()
        self.log.flush()

    def __getattr__(self, name: str):  # encoding, isatty, fileno, ...: the real stream's
        return getattr(self.real, name)


class _Filter(logging.Filter):
    def __init__(self, console: Console, log: TextIO) -> None:
        super().__init__()
        self.console, self.log = console, log
        self.fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def filter(self, record: logging.LogRecord) -> bool:
        if "Stop signal received" in record.getMessage():
            self.console.interrupted = True
        quiet = record.name.startswith(QUIETED) and not any(k in record.name for k in KEPT)
        if quiet and record.levelno < logging.ERROR:
            self.log.write(self.fmt.format(record) + "\n")
            return False
        return True


@contextmanager
def quiet_ray(log_path: Path) -> Iterator[Console]:
    """Route Ray/Tune chatter to `log_path` for the duration; yields a Console that records a Ctrl-C."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    console = Console(log_path)
    with open(log_path, "a") as log:
        flt = _Filter(console, log)
        loggers = [logging.getLogger(), logging.getLogger("ray")]
        handlers = [h for lg in loggers for h in lg.handlers]
        for h in handlers:
            h.addFilter(flt)
        real, sys.stdout = sys.stdout, _Lines(sys.stdout, log)
        try:
            yield console
        finally:
            sys.stdout.flush()
            sys.stdout = real
            for h in handlers:
                h.removeFilter(flt)
