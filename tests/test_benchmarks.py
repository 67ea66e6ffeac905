"""The benchmark scripts that have no other caller stay runnable: a tiny CPU run of their whole code path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_benchmark_runs_its_code_path_on_a_cpu_and_exits_cleanly_without_cuda():
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    bare = subprocess.run([sys.executable, "benchmarks/gpu.py"], cwd=REPO, env=env, capture_output=True, text=True)
    assert bare.returncode == 0 and "CUDA is not available here" in bare.stdout, bare.stdout + bare.stderr
    args = ["--device", "cpu", "--images", "16", "--side", "32", "--classes", "4", "--batch", "8", "--epochs", "1"]
    out = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith(" ")]
    assert len(rows) == 8 + 4  # 2 placements x 4 cases, 4 teacher cases
    assert all(float(r[-2]) > 0 for r in rows)  # images/s measured
