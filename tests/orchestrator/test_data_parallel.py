"""Score runs data-parallel on Ray Train (gloo, 2 CPU workers): every sample recorded in every epoch, the same
scores as one worker up to float summation order, and a worker killed mid-run resumed from the checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import numpy as np
import pytest

from orchestrator.distributed import build_data_parallel
from workers import stages
from workers.artifacts import ArtifactStore
from workers.config import DatasetConfig, Named, TrainConfig, _frozen_options
from workers.graph import dynamics_key

pytestmark = pytest.mark.slow

DIGITS = DatasetConfig(
    "digits", None, _frozen_options({"image_size": 8, "minival_per_class": 10, "test_fraction": 0.2})
)
ARCH = Named.make("convnet", {"depth": 2, "width": 16, "norm": "instance"})
# no augmentation: one worker and two then take the same gradient steps, up to float summation order
RECIPE = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=64, augment="none")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture
def ray_cluster(monkeypatch):
    import ray

    monkeypatch.setenv("DDSWEEP_STAGE_CHECKPOINT_S", "0")  # a checkpoint after every epoch (inherited by workers)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _load(store: ArtifactStore, key) -> dict[str, np.ndarray]:
    folder = store.path(key)
    return {p.stem: np.load(p) for p in folder.glob("*.npy")}


def test_two_workers_record_every_sample_and_match_one_worker(tmp_path, ray_cluster):
    key = dynamics_key(DIGITS, ARCH, RECIPE, 6, 0)
    one, two = ArtifactStore(tmp_path / "one"), ArtifactStore(tmp_path / "two")
    stages.build(key, one)
    build_data_parallel(key, str(tmp_path / "two"), workers=2, cpus=1, gpus=0)
    m1, m2 = one.manifest(key), two.manifest(key)
    assert (m1["workers"], m2["workers"]) == (1, 2)
    a, b = _load(one, key), _load(two, key)
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    n = m1["n"]
    assert a["prob_true"].shape == (7, n) and b["correct"].shape == (6, n)
    assert np.all(b["prob_true"] > 0)  # every sample has its record in every row (rows start at zero)
    assert np.all(b["correct"].sum(1) > 0.5 * n)  # mini-batch records from both ranks
    el2n_r = np.corrcoef(a["el2n"][3].astype(float), b["el2n"][3].astype(float))[0, 1]
    forgetting_r = _spearman(a["correct"].sum(0), b["correct"].sum(0))
    diff = np.abs(a["prob_true"].astype(float) - b["prob_true"].astype(float)).max()
    print(
        f"1 vs 2 workers: EL2N r={el2n_r:.5f} (epoch 3), correct-count Spearman {forgetting_r:.4f}, max |dp|={diff:.4f}"
    )
    assert el2n_r > 0.99 and forgetting_r > 0.95
    assert not (tmp_path / "two" / ".checkpoints" / "dynamics" / key.digest).exists()  # dropped once published


def _ray_train_workers() -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "RayTrainWorker" in line and "grep" not in line]


def test_a_worker_killed_mid_run_resumes_from_the_checkpoint(tmp_path, ray_cluster):
    key = dynamics_key(DIGITS, ARCH, RECIPE, 30, 1)
    ref = ArtifactStore(tmp_path / "ref")
    build_data_parallel(key, str(tmp_path / "ref"), workers=2, cpus=1, gpus=0)  # never interrupted
    root = tmp_path / "killed"
    state = root / ".checkpoints" / "dynamics" / key.digest / "state.pt"
    errors: list[BaseException] = []
    t = threading.Thread(
        target=lambda: _catch(errors, build_data_parallel, key, str(root), workers=2, cpus=1, gpus=0), daemon=True
    )
    t.start()
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and t.is_alive():
        time.sleep(0.05)
    assert state.exists(), "no epoch checkpoint was written"
    victims = _ray_train_workers()
    assert victims, "no Ray Train worker process found"
    os.kill(victims[-1], 9)
    t.join(600)
    assert not errors, errors
    manifest = json.loads((root / "dynamics" / key.digest / "manifest.json").read_text())
    assert manifest["resumed_from_epoch"] > 0 and manifest["workers"] == 2
    print(f"killed worker {victims[-1]}; the group resumed at epoch {manifest['resumed_from_epoch']} of 30")
    got, want = _load(ArtifactStore(root), key), _load(ref, key)
    for name in want:  # the resumed run replays the uninterrupted one
        np.testing.assert_allclose(got[name].astype(float), want[name].astype(float), atol=2e-3, err_msg=name)


def _catch(errors, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except BaseException as err:  # noqa: BLE001 (reported by the test)
        errors.append(err)


def test_a_sweep_with_stage_workers_builds_its_score_runs_data_parallel(tmp_path, cli_env):
    from conftest import write_sweep
    from test_e2e import run_cli

    from orchestrator import results

    sweep = write_sweep(
        tmp_path / "dp.yaml",
        name="dp",
        ipc=(5,),
        seeds=(0,),
        epochs=5,
        extra="selectors: {el2n_easy: {runs: 2, epoch: 3}}\n",
    )
    text = sweep.read_text().replace("selector: [random]", "selector: [el2n_easy, forgetting_easy]")
    sweep.write_text(
        text.replace("resources: {cpus_per_trial: 1}", "resources: {cpus_per_trial: 0.5, stage_workers: 2}")
    )
    out = run_cli(["run", str(sweep)], cli_env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert len(results.load(tmp_path / "store", "dp")) == 2
    runs = [json.loads(p.read_text()) for p in (tmp_path / "store" / "artifacts" / "dynamics").glob("*/manifest.json")]
    assert len(runs) == 3 and all(m["workers"] == 2 for m in runs)  # 2 EL2N runs + the forgetting run


def test_a_full_trial_with_stage_workers_trains_on_ddp_ranks_and_matches_one_process(tmp_path, cli_env):
    """`full` trains on the whole split, so stage_workers spreads it over DDP ranks (a Ray Train group launched
    from its Tune trial); subset trials stay on one worker. Without augmentation (each rank draws its own
    views) and without BatchNorm (ConvNet's instance norm), 2 ranks train the model one process trains, up to
    float summation order: measured 0.9610 top-1 both."""
    from conftest import write_sweep
    from test_e2e import run_cli

    from orchestrator import results
    from workers.config import TrialConfig
    from workers.trial import TrialContext, run_trial

    sweep = write_sweep(tmp_path / "full.yaml", name="full", ipc=(5,), seeds=(0,), epochs=60)
    text = sweep.read_text().replace("selector: [random]", "selector: [full, random]")
    text = text.replace("batch_size: 32}", "batch_size: 32, augment: none}")  # the ranks' views would differ
    sweep.write_text(
        text.replace("resources: {cpus_per_trial: 1}", "resources: {cpus_per_trial: 0.5, stage_workers: 2}")
    )
    out = run_cli(["run", str(sweep)], cli_env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    df = results.load(tmp_path / "store", "full").set_index("selector")
    assert df.loc["full", "workers"] == 2 and df.loc["random", "workers"] == 1
    assert df.loc["full", "images_seen"] == 60 * 5 * 10  # the budget of IPC 5, seen across both ranks
    history = json.loads(df.loc["full", "history_json"])  # 3,000 images of 1,338: evaluated after each epoch
    assert [h["epoch"] for h in history] == [1, 2, 3] and all("test_top1" in h for h in history)  # from rank 0
    assert not list((tmp_path / "store" / "full" / "checkpoints").glob("*/*"))  # cleared after the row

    cfg = TrialConfig.from_json(json.loads(df.loc["full", "config_json"]))
    one = run_trial(cfg, TrialContext(artifacts_root=tmp_path / "store" / "artifacts", num_threads=1))
    print(f"full trial top1: 2 ranks {df.loc['full', 'top1']:.4f}, one process {one['top1']:.4f}")
    assert one["workers"] == 1 and abs(one["top1"] - df.loc["full", "top1"]) < 0.005
