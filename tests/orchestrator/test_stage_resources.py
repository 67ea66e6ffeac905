"""Shared stages run as Tune trials with the trial's resources: networks get the GPU, numpy selection does not;
a stage that fails names its cause and its traceback reaches the failure records of the trials that need it."""

import json

import pytest

from orchestrator import driver
from orchestrator.driver import make_plan
from orchestrator.spec import parse_spec
from workers.artifacts import ArtifactStore

pytestmark = pytest.mark.slow


def test_network_stages_get_the_trial_gpu_and_selection_stages_do_not(tmp_path):
    import ray

    spec = parse_spec(f"""
name: res
storage: {tmp_path}
dataset: {{name: digits}}
student: {{arch: convnet, depth: 2, width: 8}}
teacher: {{arch: convnet, depth: 2, width: 16, epochs: 8, min_top1_factor: 2}}
budget: {{full_epochs: 1}}
grid: {{selector: [random, herding], regime: [sl], ipc: [1], seed: [0]}}
resources: {{cpus_per_trial: 1, gpus_per_trial: 1}}
""")
    plan = make_plan(spec)
    assert sorted(k.kind for k in plan.stages_missing) == ["features", "features_part", "subset", "subset", "teacher"]
    # Ray only counts GPUs; one declared on this CPU machine is enough to see who gets it.
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        assert driver.run(spec) == 0  # the sweep's own path: stages and trials scheduled by one Tune run
    finally:
        ray.shutdown()
    assert ArtifactStore(str(tmp_path / "artifacts")).missing(plan.stages_missing) == []
    seen = {}
    for k in plan.stages_missing:
        m = json.loads((tmp_path / "artifacts" / k.kind / k.digest / "manifest.json").read_text())
        seen[(k.kind, k.cfg.get("selector", {}).get("name"))] = m["cuda_visible_devices"]
    assert seen[("teacher", None)] == "0" and seen[("features_part", None)] == "0"
    assert seen[("features", None)] != "0"  # the merge of the parts is file copying
    assert seen[("subset", "random")] != "0" and seen[("subset", "herding")] != "0"


def test_a_failed_data_stage_names_the_file_and_its_traceback_reaches_the_failure_records(tmp_path):
    """Issue #10.3: an unreadable image failed its stage with PIL's `OSError: Truncated File Read` (no file name)
    and the trials' failure records kept an empty traceback; now both name the file and the records keep the
    remote traceback."""
    import ray
    from imagetrees import make_tree

    root = make_tree(tmp_path / "data", per_class=6, val=2, size=(64, 48), ext=".JPEG")
    bad = root / "train" / "n03" / "n03_4.JPEG"
    bad.write_bytes(bad.read_bytes()[:300])
    spec = parse_spec(f"""
name: bad
storage: {tmp_path}
dataset: {{name: imagefolder, root: {root}, image_size: 16, minival_per_class: 1, shard_size: 4}}
student: {{arch: convnet, depth: 2, width: 8}}
budget: {{epochs: 1}}
grid: {{selector: [random], regime: [hl], ipc: [1, 2], seed: [0]}}
""")
    plan = make_plan(spec)
    assert {k.kind for k in plan.stages_missing} == {"shard", "cache", "subset"}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert driver.run(spec) == 1
    finally:
        ray.shutdown()
    store = spec.store()
    assert store.done_ids() == set() and len(store.failures()) == len(plan.pending)  # never launched
    for t in plan.pending:
        record = store.failures()[t.trial_id]
        assert str(bad) in record["error"] and "set dataset.skip_bad_files: true" in record["error"]
        assert "Traceback" in record["traceback"] and "in build_shard" in record["traceback"]
        assert str(bad) in record["traceback"]


GPU_WAIT = """
name: gpuwait
storage: {storage}
dataset: {{name: digits}}
student: {{arch: convnet, depth: 2, width: 8}}
teacher: {{arch: convnet, depth: 2, width: 8, epochs: 2, min_top1_factor: 1}}
grid:
  selector: [full, herding]
  regime: [hl, sl_kd]
  ipc: [10]
  seed: [0]
  budget: {{full_epochs: [1, 40]}}
exclude:
  - {{selector: full, regime: sl_kd}}
  - {{selector: herding, regime: hl}}
  - {{selector: full, budget: 1}}
  - {{selector: herding, budget: 40}}
train: {{kd_backend: stored}}
resources: {{cpus_per_trial: 1, gpus_per_trial: 1}}
"""

RUN_ON_ONE_GPU = """
import sys
import ray
from orchestrator import driver
from orchestrator.spec import load_spec

ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
sys.exit(driver.run(load_spec(sys.argv[1])))
"""


def test_a_gpu_stage_that_becomes_ready_while_a_trial_holds_the_only_gpu_still_runs(tmp_path, cli_env):
    """One GPU (declared; Ray only counts it): the `full` trial trains on it while herding's CPU-only chain
    (features merge, selection) finishes, and herding's stored SL+KD label epochs (GPU stages) become ready only
    then. When stages were Ray tasks beside Tune, the finished trial's actor stayed cached holding the GPU while
    Tune waited for the searcher, and the label stages waited forever (seen: stuck at 'stages 5/20' until
    killed). Inside Tune the cached actor runs them."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import REPO

    sweep = tmp_path / "gpuwait.yaml"
    sweep.write_text(GPU_WAIT.format(storage=tmp_path / "store"))
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_ON_ONE_GPU, str(sweep)],
        env={**cli_env, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # on a hang, the driver and its Ray processes go together
    )
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"the sweep hung on one GPU: {out[-3000:]}") from None
    assert proc.returncode == 0, out[-3000:]
    assert "finished: 2/2 trials have a row" in out
