"""End to end through the CLI with a real embedded Ray cluster and real Parquet rows (slow)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BIN, REPO, write_sweep

from orchestrator import results
from orchestrator.results import SweepStore
from workers.config import TrialConfig

pytestmark = pytest.mark.slow
DDSWEEP = str(BIN / "ddsweep")


def run_cli(args, env, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([DDSWEEP, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def snapshot(storage: Path, sweep: str) -> dict[str, tuple]:
    df = results.load(storage, sweep)
    folder = Path(SweepStore(storage, sweep).results_dir)
    stats = {p.stem: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("*.parquet")}
    return {r.trial_id: (r.started_at, r.top1, stats[r.trial_id]) for r in df.itertuples()}


def test_smoke_sweep_runs_end_to_end_and_a_rerun_changes_nothing(tmp_path, cli_env):
    out = run_cli(["run", "sweeps/smoke.yaml", "--storage", str(tmp_path)], cli_env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "done 144/144" in out.stdout
    df = results.load(tmp_path, "smoke")
    assert len(df) == 144 and df["trial_id"].is_unique
    assert set(df["ipc"]) == {1, 5, 10} and set(df["seed"]) == {0, 1} and set(df["regime"]) == {"hl", "sl", "sl_kd"}
    # sane accuracies: chance is 0.10 on digits
    real = df[df["selector"].isin(["random", "herding", "el2n_easy", "cad_prune", "rded", "ca2d"])]
    by_ipc = real.groupby("ipc")["top1"].mean()
    assert by_ipc[1] > 0.5 and by_ipc[5] > 0.8 and by_ipc[10] > 0.85, by_ipc
    assert (df.groupby("selector")["top1"].mean() > 0.25).all()  # even 40-iteration SRe2L/CDA beat chance
    assert (df["images_seen"] == 5 * 1338).all() and (df["full_epochs"] == 5.0).all()  # compute-matched
    # one subset per (selector, ipc, seed), shared by the three regimes
    assert df["subset_key"].nunique() == 8 * 3 * 2
    assert (df.groupby(["selector", "ipc", "seed"])["subset_key"].nunique() == 1).all()
    assert df.loc[df["regime"] == "hl", "teacher_arch"].isna().sum() == 18  # random/el2n/cad hl: no teacher
    # every distiller trains under all three regimes
    assert (
        df[df["selector"].isin(["rded", "ca2d", "sre2l", "cda"])].groupby("selector")["regime"].nunique() == 3
    ).all()
    sl = df[df["regime"] == "sl"]
    assert (sl["soft_label_bytes"] == sl["ipc"] * 10 * 10 * 4).all()  # n x C float32, one label per image
    # the id follows from the stored config: a row says exactly what produced it
    assert all(TrialConfig.from_json(json.loads(r.config_json)).trial_id == r.trial_id for r in df.itertuples())
    assert df["ray_version"].eq("2.60.0").all() and df["attempt"].eq(1).all()
    assert not (tmp_path / "smoke" / "checkpoints").exists() or not any((tmp_path / "smoke" / "checkpoints").iterdir())
    before = snapshot(tmp_path, "smoke")

    again = run_cli(["run", "sweeps/smoke.yaml", "--storage", str(tmp_path)], cli_env)
    assert again.returncode == 0 and "144 done, 0 pending" in again.stdout and "nothing to run" in again.stdout
    assert snapshot(tmp_path, "smoke") == before

    status = run_cli(["status", "sweeps/smoke.yaml", "--storage", str(tmp_path)], cli_env)
    assert "144 trials: 144 done, 0 started, 0 failed, 0 pending" in status.stdout
    report = run_cli(["report", "sweeps/smoke.yaml", "--storage", str(tmp_path)], cli_env)
    assert report.returncode == 0 and "random" in report.stdout
    assert (tmp_path / "smoke" / "report" / "accuracy.csv").exists()


def test_adding_a_seed_runs_only_the_new_trials(tmp_path, cli_env):
    sweep = write_sweep(tmp_path / "s.yaml", ipc=(2, 5), seeds=(0,), epochs=10)
    assert run_cli(["run", str(sweep)], cli_env).returncode == 0
    before = snapshot(tmp_path / "store", "tiny")
    assert len(before) == 2
    write_sweep(tmp_path / "s.yaml", ipc=(2, 5), seeds=(0, 1), epochs=10)
    plan = run_cli(["plan", str(sweep)], cli_env)
    assert "done 2, pending 2" in plan.stdout
    out = run_cli(["run", str(sweep)], cli_env)
    assert out.returncode == 0 and "4 trials, 2 done, 2 pending" in out.stdout
    after = snapshot(tmp_path / "store", "tiny")
    assert len(after) == 4 and {k: after[k] for k in before} == before
    assert set(results.load(tmp_path / "store", "tiny")["seed"]) == {0, 1}


def test_sigkill_mid_sweep_then_rerun_gives_one_row_per_trial(tmp_path, cli_env):
    sweep = write_sweep(tmp_path / "s.yaml", ipc=(5, 10, 20), seeds=(0, 1, 2), epochs=500)
    store = tmp_path / "store"
    proc = subprocess.Popen(
        [DDSWEEP, "run", str(sweep)],
        env=cli_env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not SweepStore(store, "tiny").done_ids():
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        assert SweepStore(store, "tiny").done_ids(), "no row appeared before the deadline"
        # a second driver for the same sweep refuses, naming the one that runs it
        second = run_cli(["run", str(sweep)], cli_env, timeout=120)
        assert second.returncode == 3 and f"pid {proc.pid}" in second.stderr, second.stderr[-2000:]
    finally:
        with contextlib.suppress(ProcessLookupError):  # (if it already ended, the check below says so)
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the embedded Ray processes it started
        proc.wait()
    first = snapshot(store, "tiny")
    assert 1 <= len(first) < 9, "the kill came too late to test anything"

    out = run_cli(["run", str(sweep)], cli_env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    df = results.load(store, "tiny")
    assert len(df) == 9 and df["trial_id"].is_unique
    assert len(list(Path(SweepStore(store, "tiny").results_dir).glob("*.parquet"))) == 9
    final = snapshot(store, "tiny")
    assert {k: final[k] for k in first} == first  # rows written before the kill are untouched


@pytest.mark.slow
def test_importing_the_orchestrator_never_imports_torch():
    code = (
        "import importlib, pkgutil, sys, orchestrator\n"
        "for m in pkgutil.walk_packages(orchestrator.__path__, 'orchestrator.'):\n"
        "    importlib.import_module(m.name)\n"
        "import orchestrator.cli, workers.registry, workers.config\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_a_failing_stage_fails_only_the_trials_that_need_it(tmp_path, cli_env):
    weights = tmp_path / "broken.pt"
    weights.write_bytes(b"not a state dict")  # exists, so validation passes; the teacher stage fails
    sweep = write_sweep(
        tmp_path / "s.yaml",
        name="stagefail",
        ipc=(2,),
        seeds=(0,),
        epochs=5,
        extra=f"teacher: {{arch: convnet, depth: 2, width: 16, weights: {weights}}}\n",
    )
    text = sweep.read_text().replace("selector: [random]", "selector: [random, herding]")
    sweep.write_text(text)
    out = run_cli(["run", str(sweep)], cli_env)
    assert out.returncode == 1, out.stdout[-3000:]
    assert "failed" in out.stdout and "not a readable state_dict" in out.stdout
    store = tmp_path / "store"
    df = results.load(store, "stagefail")
    assert list(df["selector"]) == ["random"]
    fails = SweepStore(store, "stagefail").failures()
    assert len(fails) == 1 and "herding" in next(iter(fails.values()))["trial_name"]
    assert "load_weights" in next(iter(fails.values()))["traceback"]  # the stage's traceback is kept
    status = run_cli(["status", str(sweep)], cli_env)
    assert "1 done, 0 started, 1 failed, 0 pending" in status.stdout and "not a readable state_dict" in status.stdout


def test_trials_start_while_other_stages_still_build(tmp_path, cli_env):
    """No barrier: random's trials need only their quick subsets and start while EL2N's long score runs
    still train (timestamps from the rows and the score runs' manifests)."""
    sweep = write_sweep(
        tmp_path / "s.yaml",
        name="nobarrier",
        ipc=(2,),
        seeds=(0, 1, 2, 3),
        epochs=20,
        extra="selectors: {el2n_easy: {runs: 2, epoch: 60}}\n",
    )
    text = sweep.read_text().replace("selector: [random]", "selector: [random, el2n_easy]")
    # half a CPU per task: on this 2-CPU machine the two score runs leave room for trials
    sweep.write_text(text.replace("resources: {cpus_per_trial: 1}", "resources: {cpus_per_trial: 0.5}"))
    out = run_cli(["run", str(sweep)], cli_env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    df = results.load(tmp_path / "store", "nobarrier")
    assert len(df) == 8
    first_random = df.loc[df["selector"] == "random", "started_at"].min().timestamp()
    runs = [json.loads(p.read_text()) for p in (tmp_path / "store" / "artifacts" / "dynamics").glob("*/manifest.json")]
    assert len(runs) == 2
    last_stage = max(m["built_at"] for m in runs)
    assert first_random < last_stage, (first_random, last_stage)
    # EL2N's two score runs are two tasks that ran at the same time, not a loop in one
    (s0, e0), (s1, e1) = sorted((m["built_at"] - m["build_seconds"], m["built_at"]) for m in runs)
    assert s1 < e0, f"score runs did not overlap: [{s0:.1f}, {e0:.1f}] then [{s1:.1f}, {e1:.1f}]"
    assert "stages 2/" in out.stdout or "stages " in out.stdout  # progress shows stages beside trials
