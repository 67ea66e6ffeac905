"""Multi-node Ray on one machine (slow): preemption of a worker node, and a loop of driver kills.

`ray.cluster_utils.Cluster` gives a head and worker nodes in this process (nodes are added and
removed from the main thread, docs/ray.md §4); the driver runs as a `ddsweep run --address` subprocess.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, REPO, write_sweep

from orchestrator import results
from orchestrator.results import SweepStore

pytestmark = pytest.mark.slow
DDSWEEP = str(BIN / "ddsweep")


def checkpoints(store, sweep) -> list:
    folder = Path(SweepStore(store, sweep).path()) / "checkpoints"
    return list(folder.glob("*/state.pt")) if folder.is_dir() else []


def wait_for(pred, timeout: float, proc=None, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"driver exited ({proc.returncode}) before {what}: {proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def cluster(ray_home, monkeypatch):
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("HOME", str(ray_home))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    c = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 1}, "include_dashboard": False}
    )
    yield c
    c.shutdown()


def test_losing_a_worker_node_mid_trial_retries_from_its_checkpoint(tmp_path, cluster, cli_env):
    node_b = cluster.add_node(num_cpus=1, resources={"node_b": 1})
    cluster.wait_for_nodes()
    sweep = write_sweep(tmp_path / "s.yaml", name="preempt", ipc=(10,), seeds=(0, 1, 2), epochs=500)
    store = tmp_path / "store"
    env = dict(cli_env, RAY_AUTH_MODE="disabled")
    proc = subprocess.Popen(
        [DDSWEEP, "run", str(sweep), "--address", cluster.address, "--checkpoint-interval", "0"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Two trials hold checkpoints: one runs on the head, the other on node_b (one CPU each).
        wait_for(lambda: len(checkpoints(store, "preempt")) >= 2, 240, proc, "two running trials")
        cluster.remove_node(node_b, allow_graceful=False)  # a spot preemption: no goodbye
        cluster.add_node(num_cpus=1, resources={"node_c": 1})  # the replacement node
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    df = results.load(store, "preempt")
    assert len(df) == 3 and df["trial_id"].is_unique
    retried = df[df["attempt"] >= 2]
    assert len(retried) >= 1, out[-3000:]
    assert (retried["resumed_from_epoch"] > 0).all(), "the retried trial started over instead of resuming"
    assert (df["images_seen"] == 500 * 100).all()


def test_repeated_driver_kills_at_random_points_end_with_the_full_grid(tmp_path, cli_env):
    sweep = write_sweep(tmp_path / "s.yaml", name="chaos", ipc=(2, 5, 10), seeds=(0, 1, 2), epochs=300)
    store = tmp_path / "store"
    rng = random.Random(1234)  # the kill points are random but reproducible
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(
            [DDSWEEP, "run", str(sweep), "--checkpoint-interval", "0"],
            env=cli_env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        time.sleep(rng.uniform(4, 16))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        before = {p.name: p.stat().st_ino for p in Path(SweepStore(store, "chaos").results_dir).glob("*.parquet")}
        df = results.load(store, "chaos")
        assert df["trial_id"].is_unique and len(df) == len(before)
    assert kills >= 2
    final = subprocess.run(
        [DDSWEEP, "run", str(sweep)], env=cli_env, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert final.returncode == 0, final.stdout[-3000:]
    df = results.load(store, "chaos")
    from orchestrator.grid import expand
    from orchestrator.spec import load_spec

    grid = {t.trial_id for t in expand(load_spec(sweep))}
    assert set(df["trial_id"]) == grid and len(df) == len(grid) == 9
    files = [f for f in Path(SweepStore(store, "chaos").results_dir).iterdir() if f.name != results.CACHE]
    assert len(files) == 9 and not any(f.name.startswith(".") for f in files)  # no temporaries left by the kills
    assert (df["images_seen"] == df["ipc"] * 10 * 300).all()
