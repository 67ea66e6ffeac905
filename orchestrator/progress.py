"""Progress while a sweep runs: trial heartbeats in the store, the ETA rule, the live line of `ddsweep run`.

- `TrialHeartbeat`: a running trial's `checkpoints/<trial_id>/running.json` (attempt, host, pid, start,
  the fraction of its images seen), rewritten every HEARTBEAT_S by a daemon thread and removed when the
  attempt ends, whatever the outcome. `ddsweep status` counts a trial as running while that file is
  younger than STALE_S (a killed worker stops refreshing it), the rule of the driver lock's heartbeat.
- `eta_seconds`: remaining trials x the mean time of the finished ones / the trials running at once.
- `LiveLine`: in a terminal, one status line under ddsweep's own lines (done / running / failed /
  pending, stages building, elapsed, ETA), redrawn in place; nothing at all when stdout is not a terminal.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import threading
import time
from typing import TextIO

from orchestrator.lock import STALE_S
from orchestrator.results import SweepStore

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
RUNNING = "running.json"


class TrialHeartbeat:
    """`with TrialHeartbeat(store, trial_id, name, attempt) as beat:` ... `beat.progress(fraction, epoch)`."""

    def __init__(self, store: SweepStore, trial_id: str, name: str, attempt: int, every_s: float = HEARTBEAT_S):
        self.store, self.every_s = store, every_s
        self.path = store.path("checkpoints", trial_id, RUNNING)
        self.state = {
            "trial_id": trial_id,
            "trial_name": name,
            "attempt": attempt,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": time.time(),
            "fraction": 0.0,
            "epoch": 0,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    def progress(self, fraction: float, epoch: int) -> None:
        """The share of the trial's images seen so far, after `epoch` epochs (written with the next beat)."""
        self.state["fraction"], self.state["epoch"] = float(fraction), int(epoch)

    def _beat(self) -> None:
        try:
            self.store.st.write_atomic(self.path, json.dumps({**self.state, "updated_at": time.time()}).encode())
        except OSError as err:  # progress is a courtesy: the trial goes on, `status` just won't see it running
            if not self._warned:
                self._warned = True
                log.warning(
                    "cannot write the heartbeat %s (%s); ddsweep status will not list this trial", self.path, err
                )

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._beat()

    def __enter__(self) -> TrialHeartbeat:
        self._beat()
        self._thread = threading.Thread(target=self._loop, name="ddsweep-trial-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.store.st.delete(self.path)


def running_trials(store: SweepStore, candidates: set[str], now: float | None = None) -> dict[str, dict]:
    """{trial_id: heartbeat} of the `candidates` (trials with a checkpoint folder) whose heartbeat is fresh."""
    now = time.time() if now is None else now
    out = {}
    for tid in sorted(candidates):
        try:
            beat = json.loads(store.st.read_bytes(store.path("checkpoints", tid, RUNNING)))
        except (FileNotFoundError, OSError, ValueError):
            continue
        if now - float(beat.get("updated_at", 0)) <= STALE_S:
            out[tid] = beat
    return out


def eta_seconds(durations: list[float], remaining: int, slots: int) -> float | None:
    """Seconds until `remaining` trials finish, `slots` at a time, at the mean of the finished trials'
    `durations` (None before the first one finishes)."""
    if not durations:
        return None
    if remaining <= 0:
        return 0.0
    return remaining * (sum(durations) / len(durations)) / max(1, slots)


def clock(seconds: float | None) -> str:
    """4s, 3m05s, 2h07m; '?' when unknown."""
    if seconds is None or math.isnan(seconds):
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class LiveLine:
    """One status line kept at the bottom of a terminal while `ddsweep run` prints its own lines above it."""

    def __init__(self, total: int, done: int, stream: TextIO | None = None, every_s: float = 1.0) -> None:
        import sys

        out = stream if stream is not None else sys.stdout
        self.stream = getattr(out, "real", out)  # under console.quiet_ray, the terminal itself
        self.enabled = _is_terminal(self.stream)
        self.total, self.done, self.failed, self.running = total, done, 0, 0
        self.stages_building = 0
        self.t0 = time.time()
        self.started: dict[str, float] = {}
        self.durations: list[float] = []
        self.slots = 0
        self.every_s, self.last = every_s, 0.0
        self.shown = False

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks (and so this line) with the experiment's state; a terminal cannot be
        pickled, and a copy elsewhere has no terminal to draw on."""
        return {**self.__dict__, "stream": None, "enabled": False}

    # ---- what happened
    def trial_started(self, trial_id: str) -> None:
        self.started.setdefault(trial_id, time.time())

    def trial_finished(self, trial_id: str, ok: bool = True) -> None:
        t = self.started.pop(trial_id, None)
        if ok:
            self.done += 1
            if t is not None:
                self.durations.append(time.time() - t)
        else:
            self.failed += 1

    def update(self, running: int, stages_building: int) -> None:
        self.running, self.stages_building = running, stages_building
        self.slots = max(self.slots, running)

    # ---- what it says
    def text(self) -> str:
        pending = max(0, self.total - self.done - self.failed - self.running)
        eta = eta_seconds(self.durations, pending + self.running, self.slots or self.running)
        parts = [
            f"{self.done}/{self.total} done",
            f"{self.running} running",
            f"{self.failed} failed",
            f"{pending} pending",
        ]
        if self.stages_building:
            parts.append(f"{self.stages_building} stage(s) building")
        parts += [f"elapsed {clock(time.time() - self.t0)}", f"ETA {clock(eta)}"]
        return "[ddsweep] " + ", ".join(parts)

    def clear(self) -> None:
        if self.enabled and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False

    def draw(self, force: bool = True) -> None:
        if not self.enabled or (not force and time.time() - self.last < self.every_s):
            return
        width = shutil.get_terminal_size((100, 20)).columns
        self.stream.write("\r\x1b[K" + self.text()[: max(10, width - 1)])
        self.stream.flush()
        self.shown, self.last = True, time.time()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False
