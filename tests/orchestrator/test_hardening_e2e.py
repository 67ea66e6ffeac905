"""Issue #10 through the real CLI and a real embedded Ray cluster (slow). Each failed on the old code."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BIN, REPO, write_sweep

from orchestrator import results

pytestmark = pytest.mark.slow
DDSWEEP = str(BIN / "ddsweep")
NOISE = (
    "Tuner.restore",
    "Failed to fetch metrics",
    "tensorboard",
    "Token authentication is enabled",
    "Configuration for experiment",
    "Traceback",
)


def test_an_unreachable_address_fails_fast_with_a_clear_message(tmp_path, cli_env):
    sweep = write_sweep(tmp_path / "s.yaml", ipc=(1,), seeds=(0,), epochs=2)
    t0 = time.time()
    p = subprocess.run(
        [DDSWEEP, "run", str(sweep), "--address", "127.0.0.1:1"],
        env=cli_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.time() - t0 < 30, "it must not wait for Ray's minutes of GCS retries"
    assert p.returncode == 5, p.stdout + p.stderr
    assert "cannot reach a Ray cluster at 127.0.0.1:1" in p.stderr and "Traceback" not in p.stderr


def test_a_sweep_prints_ddsweep_lines_not_ray_noise_and_ctrl_c_says_how_to_continue(tmp_path, cli_env):
    sweep = write_sweep(tmp_path / "s.yaml", ipc=(1, 2, 3, 4, 5, 6), seeds=(0, 1), epochs=300)
    proc = subprocess.Popen(
        [DDSWEEP, "run", str(sweep)], env=cli_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith("[ddsweep] done 1/"):
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    text = "".join(lines) + out
    assert "[ddsweep] done 1/" in text, text[-3000:]
    for noise in NOISE:
        assert noise not in text, (noise, text[-3000:])
    assert "interrupted" in text and f"ddsweep run {sweep}" in text  # the way to continue, not Tuner.restore
    assert proc.returncode != 0


def test_a_row_reproduces_on_its_recorded_thread_count(tmp_path, cli_env):
    sweep = write_sweep(tmp_path / "s.yaml", ipc=(3,), seeds=(0,), epochs=30, extra="resources: {cpus_per_trial: 2}\n")
    text = sweep.read_text().replace("resources: {cpus_per_trial: 1}\n", "")
    sweep.write_text(text)
    assert subprocess.run([DDSWEEP, "run", str(sweep)], env=cli_env, cwd=REPO).returncode == 0
    df = results.load(tmp_path / "store", "tiny")
    assert df.loc[0, "num_threads"] == 2
    row = next((tmp_path / "store" / "tiny" / "results").glob("*.parquet"))
    p = subprocess.run(
        [DDSWEEP, "reproduce", str(row)], env=cli_env, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    again = json.loads(p.stdout)
    assert again["same_as_row"] and again["num_threads"] == 2
    assert again["top1"] == df.loc[0, "top1"] and again["loss"] == df.loc[0, "loss"]
    # the bare trial entry point takes the thread count too
    cfg = tmp_path / "trial.json"
    cfg.write_text(df.loc[0, "config_json"])
    p = subprocess.run(
        [sys.executable, "-m", "workers.trial", str(cfg), "--storage", str(tmp_path / "store"), "--threads", "2"],
        env=cli_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0 and json.loads(p.stdout)["top1"] == df.loc[0, "top1"], p.stderr[-2000:]


def test_make_style_demo_output_is_only_ddsweep_lines(tmp_path, cli_env):
    sweep = write_sweep(tmp_path / "s.yaml", ipc=(1,), seeds=(0, 1), epochs=5)
    p = subprocess.run([DDSWEEP, "run", str(sweep)], env=cli_env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0
    text = p.stdout + p.stderr
    for noise in NOISE:
        assert noise not in text, (noise, text[-3000:])
    rep = subprocess.run([DDSWEEP, "report", str(sweep)], env=cli_env, cwd=REPO, capture_output=True, text=True)
    assert rep.returncode == 0 and "font cache" not in rep.stdout + rep.stderr
    assert Path(tmp_path / "store" / "tiny" / "report" / "accuracy.csv").is_file()
