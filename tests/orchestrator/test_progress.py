"""Progress you can read (issue #13, item 5): trial heartbeats, the ETA rule, the live line of `ddsweep run`
in a terminal, and `ddsweep status` (running trials, the driver, an ETA, failures by cause) counted from a
store these tests build with the real writers (rows, checkpoints, heartbeats, failure records, the lock)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import pty
import re
import select
import signal
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import BIN, REPO, write_sweep

from orchestrator import cli, console, status
from orchestrator.grid import expand
from orchestrator.lock import DriverLock
from orchestrator.progress import RUNNING, LiveLine, TrialHeartbeat, clock, eta_seconds, running_trials
from orchestrator.results import SweepStore
from orchestrator.spec import load_spec
from orchestrator.trainable import count_attempt


def test_eta_is_the_mean_finished_time_times_the_trials_left_over_the_trials_running_at_once():
    assert eta_seconds([], 10, 2) is None
    assert eta_seconds([4.0, 6.0], 10, 2) == pytest.approx(25.0)
    assert eta_seconds([4.0, 6.0], 10, 0) == pytest.approx(50.0)  # nothing running: one at a time
    assert eta_seconds([4.0], 0, 3) == 0.0
    assert [clock(s) for s in (4, 185, 7620, None)] == ["4s", "3m05s", "2h07m", "?"]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_line_redraws_in_place_in_a_terminal_and_says_nothing_elsewhere(monkeypatch):
    monkeypatch.delenv("TERM", raising=False)
    tty = Tty()
    live = LiveLine(total=10, done=2, stream=tty)
    assert live.enabled
    live.trial_started("a")
    live.trial_started("b")
    live.update(running=2, stages_building=3)
    live.draw()
    first = tty.getvalue()
    assert first.startswith("\r\x1b[K[ddsweep] 2/10 done, 2 running, 0 failed, 6 pending, 3 stage(s) building")
    assert first.endswith("ETA ?") and "\n" not in first  # no trial finished yet: no ETA
    live.started["a"] -= 8.0  # a finished after 8 s
    live.trial_finished("a")
    live.trial_finished("b", ok=False)
    live.update(running=1, stages_building=0)
    assert "3/10 done, 1 running, 1 failed, 5 pending, elapsed" in live.text()
    assert re.search(r"ETA (2[0-9]|3[0-9])s$", live.text()), live.text()  # 6 left x 8 s / 2 at once = 24 s
    # ddsweep's own lines go above it: the line is cleared first and drawn again after
    console.set_live(live)
    try:
        real = io.StringIO()
        monkeypatch.setattr("sys.stdout", real)
        tty.seek(0)
        tty.truncate()
        console.say("done 3/10 a")
        assert tty.getvalue().startswith("\r\x1b[K") and "[ddsweep] 3/10 done" in tty.getvalue()
        assert real.getvalue() == "[ddsweep] done 3/10 a\n"
    finally:
        console.set_live(None)
    copy = pickle.loads(pickle.dumps(live))  # Tune pickles its callbacks; a terminal cannot be
    assert not copy.enabled and copy.done == live.done
    plain = io.StringIO()
    quiet = LiveLine(total=10, done=0, stream=plain)
    quiet.draw()
    quiet.clear()
    assert not quiet.enabled and plain.getvalue() == ""


def test_a_trial_heartbeat_is_fresh_while_it_runs_and_gone_after(tmp_path):
    store = SweepStore(str(tmp_path), "s")
    with TrialHeartbeat(store, "a" * 16, "random-hl-ipc1-s0", attempt=2, every_s=0.05) as beat:
        beat.progress(0.25, 3)
        time.sleep(0.3)
        got = running_trials(store, {"a" * 16})
        assert got["a" * 16]["fraction"] == 0.25 and got["a" * 16]["epoch"] == 3 and got["a" * 16]["attempt"] == 2
        assert running_trials(store, {"a" * 16}, now=time.time() + 200) == {}  # a stale heartbeat is not running
    assert not (tmp_path / "s" / "checkpoints" / ("a" * 16) / RUNNING).exists()
    assert running_trials(store, {"a" * 16}) == {}


def sweep_file(tmp_path: Path) -> Path:
    return write_sweep(tmp_path / "s.yaml", ipc=(1, 2, 3), seeds=(0, 1, 2), epochs=5)


def row(t, total_seconds: float) -> dict:
    now = datetime.now(timezone.utc)
    return {
        "sweep": "tiny",
        "trial_id": t.trial_id,
        "selector": "random",
        "regime": "hl",
        "ipc": t.ipc,
        "seed": t.seed,
        "top1": 0.5,
        "total_seconds": total_seconds,
        "finished_at": now,
    }


def test_status_counts_match_the_store_including_running_trials(tmp_path, capsys):
    sweep = sweep_file(tmp_path)
    spec = load_spec(sweep)
    store = spec.store()
    t = expand(spec)  # 9 trials
    assert len(t) == 9
    store.write_row(row(t[0], 10.0))
    store.write_row(row(t[1], 22.0))
    # t[2], t[3]: running (a fresh heartbeat); t[4]: started, its worker died (heartbeat 10 minutes old)
    for i in (2, 3, 4):
        count_attempt(store.checkpoint_uri(t[i].trial_id))
    beats = [TrialHeartbeat(store, t[i].trial_id, "x", 1, every_s=60) for i in (2, 3)]
    for b in beats:
        b.__enter__()
    old = {"trial_id": t[4].trial_id, "attempt": 1, "updated_at": time.time() - 600, "fraction": 0.5}
    store.st.write_atomic(store.path("checkpoints", t[4].trial_id, RUNNING), json.dumps(old).encode())
    beats[0].progress(0.4, 2)
    beats[0]._beat()
    # failures: two final with one cause (ids differ), one retrying with another
    store.record_failure(t[5].trial_id, "n5", 3, f"DataError: stage subset:{'a' * 16} failed: no images", "tb")
    store.record_failure(t[6].trial_id, "n6", 3, f"DataError: stage subset:{'b' * 16} failed: no images", "tb")
    store.record_failure(t[7].trial_id, "n7", 1, "RuntimeError: CUDA out of memory", "tb", final=False)
    try:
        with DriverLock(store.st, store.name):
            st = status.collect(spec, store)
            assert dict(st.counts()) == {"done": 2, "started": 4, "failed": 2, "pending": 1}
            assert set(st.running) == {t[2].trial_id, t[3].trial_id}
            assert st.driver.alive and st.driver.pid == os.getpid()
            assert st.eta_s == pytest.approx(5 * 16.0 / 2)  # 5 trials left x 16 s mean / 2 running
            assert cli.main(["status", str(sweep)]) == 0
            out = capsys.readouterr().out
        assert "9 trials: 2 done, 4 started, 2 failed, 1 pending; 2 running now" in out
        assert f"driver: alive, {st.driver.host} pid {os.getpid()}" in out
        assert re.search(r" 40\.0% of its images \(epoch 2\), attempt 1", out), out
        assert "ETA 40s: 5 trial(s) left, 16s per trial, 2 running at once" in out
        assert "failures: 2 failed for good, 1 retrying; by cause:" in out
        assert "2 x DataError: stage subset:… failed: no images" in out
        assert "1 x RuntimeError: CUDA out of memory" in out and "attempt 1, retrying" in out
        assert "(running 2)" in out  # per axis too
    finally:
        for b in beats:
            b.__exit__(None, None, None)
    st = status.collect(spec, store)
    assert st.running == {} and not st.driver.alive and st.eta_s is None
    assert cli.main(["status", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "0 running now" in out and f"driver: none running; `ddsweep run {sweep}` runs the 7 trial(s) left" in out


def test_status_names_a_stale_lock(tmp_path, capsys):
    sweep = sweep_file(tmp_path)
    spec = load_spec(sweep)
    store = spec.store()
    lock = {"host": "elsewhere", "pid": 4242, "started_at": time.time() - 900, "nonce": "n1"}
    store.st.write_atomic(store.path("driver.lock"), json.dumps(lock).encode())
    store.st.write_atomic(store.path("driver.lock.n1.heartbeat"), json.dumps({"heartbeat": time.time() - 600}).encode())
    st = status.collect(spec, store)
    assert st.driver.held and not st.driver.alive and st.driver.host == "elsewhere"
    assert cli.main(["status", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "driver: none alive (the lock of elsewhere pid 4242 is stale: heartbeat 10m00s ago)" in out


@pytest.mark.slow
def test_run_in_a_terminal_shows_a_live_line_and_status_sees_the_running_trials(tmp_path, cli_env):
    """The real thing: `ddsweep run` in a pseudo-terminal; while it trains, `ddsweep status` (another process)
    counts its running trials from their heartbeats and its driver from the lock."""
    sweep = write_sweep(tmp_path / "s.yaml", ipc=(5, 10), seeds=(0, 1), epochs=1500)
    text = sweep.read_text().replace("resources: {cpus_per_trial: 1}", "resources: {cpus_per_trial: 0.5}")
    sweep.write_text(text)
    env = dict(cli_env, TERM="xterm", COLUMNS="200")
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [str(BIN / "ddsweep"), "run", str(sweep)],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    os.close(child)
    seen, buf = None, b""
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                with contextlib.suppress(OSError):
                    buf += os.read(main, 65536)
            if seen is None and b"running" in buf:
                out = subprocess.run(
                    [str(BIN / "ddsweep"), "status", str(sweep)], env=cli_env, capture_output=True, text=True
                )
                m = re.search(r"(\d+) running now", out.stdout)
                if m and int(m.group(1)) >= 1:
                    seen = out.stdout
        assert proc.wait(timeout=600) == 0, buf.decode(errors="replace")[-3000:]
        with contextlib.suppress(OSError):
            while select.select([main], [], [], 0.2)[0]:
                chunk = os.read(main, 65536)
                if not chunk:
                    break
                buf += chunk
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        os.close(main)
    text = buf.decode(errors="replace")
    assert seen is not None, text[-3000:]
    assert "driver: alive" in seen and "% of its images" in seen and "ETA " in seen
    assert "\r\x1b[K[ddsweep] " in text and " running, " in text and "ETA" in text  # the live line, in place
    assert "done 4/4" in text
    store = SweepStore(tmp_path / "store", "tiny")
    assert len(store.done_ids()) == 4 and store.checkpointed_ids() == set()  # heartbeats went with the checkpoints
