"""`ddsweep status`: where a sweep stands, read from its store alone (no Ray, no driver needed).

States of a trial: done (a readable row), failed (a failure record with no retry left), started (a
checkpoint folder, or an attempt failed and Tune may retry), pending (nothing yet). Running trials are
the started ones whose heartbeat (orchestrator.progress) is fresh; each shows the share of its images
seen so far. Whether a driver is alive comes from the sweep lock's heartbeat (orchestrator.lock); the
ETA from the finished rows' mean time and the trials running at once. Failures are grouped by cause:
the first line of the error with hexadecimal ids and digests masked, so one stage failure that failed
fifty trials is one line.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

from orchestrator.grid import points, unique
from orchestrator.lock import DriverLock
from orchestrator.progress import STALE_S, clock, eta_seconds, running_trials
from orchestrator.results import SweepStore
from orchestrator.spec import SweepSpec
from workers.config import TrialConfig
from workers.naming import arch_label, selector_label, trial_name

ORDER = ("done", "started", "failed", "pending")
HEX = re.compile(r"\b[0-9a-f]{8,64}\b")


@dataclass
class Driver:
    alive: bool
    host: str = ""
    pid: int = 0
    heartbeat_age_s: float | None = None  # seconds since the holder's last heartbeat
    held: bool = False  # a lock file exists


@dataclass
class SweepStatus:
    spec: SweepSpec
    states: dict[str, str]  # trial_id -> done | started | failed | pending
    trials: dict[str, TrialConfig]  # trial_id -> its config
    points: list  # orchestrator.grid.points(spec)
    running: dict[str, dict]  # trial_id -> its heartbeat (attempt, host, fraction, epoch, started_at, ...)
    failures: dict[str, dict]  # trial_id -> failure record, for trials not done
    driver: Driver
    eta_s: float | None
    mean_trial_s: float | None
    done_all: set[str] = field(default_factory=set)  # every readable row, the grid's or not

    def counts(self) -> Counter:
        return Counter(self.states.values())

    @property
    def grid_ids(self) -> set[str]:
        return set(self.states)

    def name(self, trial_id: str) -> str:
        t = self.trials.get(trial_id)
        return trial_name(t) if t is not None else trial_id


def cause(error: str) -> str:
    """The cause of a failure: the error's first line with hexadecimal ids and digests masked."""
    first = (error or "").strip().splitlines()[0] if (error or "").strip() else "(no message)"
    return HEX.sub("…", first)


def driver_state(store: SweepStore) -> Driver:
    lock = DriverLock(store.st, store.name)
    h = lock.holder()
    if not h:
        return Driver(alive=False)
    age = time.time() - lock.heartbeat(h)
    alive = age <= STALE_S
    if h.get("host") == socket.gethostname():
        try:
            os.kill(int(h.get("pid", -1)), 0)
        except ProcessLookupError:
            alive = False
        except (PermissionError, ValueError):
            pass
    host, pid = str(h.get("host", "?")), int(h.get("pid", 0) or 0)
    return Driver(alive=alive, host=host, pid=pid, heartbeat_age_s=age, held=True)


def collect(spec: SweepSpec, store: SweepStore) -> SweepStatus:
    pts = points(spec)
    trials = unique(pts)
    done_all = store.done_ids()
    fails = store.failures()
    started = store.checkpointed_ids()
    ids = {t.trial_id for t in trials}

    def state(tid: str) -> str:
        if tid in done_all:
            return "done"
        if tid in fails and fails[tid].get("final", True):
            return "failed"
        if tid in started or tid in fails:
            return "started"
        return "pending"

    states = {tid: state(tid) for tid in ids}
    running = running_trials(store, {t for t, s in states.items() if s == "started"})
    driver = driver_state(store)
    durations = _durations(store, ids & done_all)
    left = sum(1 for s in states.values() if s in ("started", "pending"))
    eta = eta_seconds(durations, left, len(running)) if driver.alive else None
    mean = sum(durations) / len(durations) if durations else None
    return SweepStatus(
        spec=spec,
        states=states,
        trials={t.trial_id: t for t in trials},
        points=pts,
        running=running,
        failures={k: v for k, v in fails.items() if k in ids and states[k] != "done"},
        driver=driver,
        eta_s=eta,
        mean_trial_s=mean,
        done_all=done_all,
    )


def _durations(store: SweepStore, ids: set[str]) -> list[float]:
    """Wall seconds of the finished trials (total_seconds of their rows)."""
    if not ids:
        return []
    import pyarrow as pa
    import pyarrow.compute as pc

    table = store.rows(columns=["trial_id", "total_seconds"])
    table = table.filter(pc.is_in(table.column("trial_id"), value_set=pa.array(sorted(ids), pa.string())))
    return [float(v) for v in table.column("total_seconds").to_pylist() if v is not None]


def headline(st: SweepStatus) -> str:
    c = st.counts()
    return (
        f"sweep {st.spec.name}, storage {st.spec.storage}: {len(st.states)} trials: "
        + ", ".join(f"{c.get(s, 0)} {s}" for s in ORDER)
        + f"; {len(st.running)} running now"
    )


def details(st: SweepStatus) -> str:
    lines = [_driver_line(st)]
    now = time.time()
    if st.running:
        lines.append(f"  running ({len(st.running)}):")
        for tid, beat in sorted(st.running.items(), key=lambda kv: kv[1].get("started_at", 0)):
            lines.append(
                f"    {st.name(tid):<40} {100 * float(beat.get('fraction', 0)):5.1f}% of its images "
                f"(epoch {beat.get('epoch', 0)}), attempt {beat.get('attempt', '?')}, on {beat.get('host', '?')}, "
                f"for {clock(now - float(beat.get('started_at', now)))}"
            )
    left = sum(1 for s in st.states.values() if s in ("started", "pending"))
    if left and st.driver.alive:
        mean = f"{clock(st.mean_trial_s)} per trial" if st.mean_trial_s is not None else "no trial finished yet"
        lines.append(
            f"  ETA {clock(st.eta_s)}: {left} trial(s) left, {mean}, {max(1, len(st.running))} running at once"
        )
    lines += _by_axis(st)
    lines += _failures(st)
    return "\n".join(lines)


def _driver_line(st: SweepStatus) -> str:
    d, source = st.driver, st.spec.source_path or "SWEEP.yaml"
    if d.alive:
        return f"  driver: alive, {d.host} pid {d.pid}, heartbeat {clock(d.heartbeat_age_s)} ago"
    left = sum(1 for s in st.states.values() if s != "done")
    if d.held:
        return (
            f"  driver: none alive (the lock of {d.host} pid {d.pid} is stale: heartbeat {clock(d.heartbeat_age_s)} "
            f"ago); {left} trial(s) without a row: `ddsweep run {source}` continues"
        )
    return "  driver: none running" + (f"; `ddsweep run {source}` runs the {left} trial(s) left" if left else "")


def _by_axis(st: SweepStatus) -> list[str]:
    spec = st.spec
    labels = {s: selector_label(s) for s in spec.selectors}
    axes = [
        ("selector", lambda p: labels[p["selector"]]),
        ("regime", lambda p: p["regime"]),
        ("ipc", lambda p: p["ipc"]),
        ("seed", lambda p: p["seed"]),
    ]
    if "budget" in spec.extra_axes:
        axes.append(("budget", lambda p: f"{p['budget'].unit}={p['budget'].value:g}"))
    if "teacher" in spec.extra_axes:
        axes.append(("teacher", lambda p: p["teacher"]))
    if "student" in spec.extra_axes:
        axes.append(("student", lambda p: arch_label(p["student"])))
    out = []
    states = [st.states[t.trial_id] for _, t in st.points]
    running = [t.trial_id in st.running for _, t in st.points] if st.running else [False] * len(states)
    for axis, key in axes:
        counts: dict[object, Counter] = {}
        for (p, _), state, run in zip(st.points, states, running):
            c = counts.get(key(p))
            if c is None:
                c = counts[key(p)] = Counter()
            c[state] += 1
            if run:
                c["running"] += 1
        out.append(f"  by {axis}:")
        for v, c in counts.items():
            out.append(
                f"    {str(v):<28} "
                + "  ".join(f"{s} {c.get(s, 0)}" for s in ORDER)
                + (f"  (running {c['running']})" if c["running"] else "")
            )
    return out


def _failures(st: SweepStatus) -> list[str]:
    if not st.failures:
        return []
    groups: dict[str, list[str]] = {}
    for tid, f in st.failures.items():
        groups.setdefault(cause(f.get("error", "")), []).append(tid)
    final = sum(1 for tid in st.failures if st.states[tid] == "failed")
    out = [f"  failures: {final} failed for good, {len(st.failures) - final} retrying; by cause:"]
    for why, tids in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        tids.sort(key=st.name)
        shown = []
        for tid in tids[:3]:
            f = st.failures[tid]
            tag = "" if st.states[tid] == "failed" else ", retrying"
            shown.append(f"{st.name(tid)} (attempt {f.get('attempt', '?')}{tag})")
        more = f" and {len(tids) - 3} more" if len(tids) > 3 else ""
        out.append(f"    {len(tids)} x {why}")
        out.append(f"        {', '.join(shown)}{more}")
    return out
