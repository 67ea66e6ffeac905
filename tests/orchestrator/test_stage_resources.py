"""Shared stages run as Ray tasks with the trial's resources: networks get the GPU, numpy selection does not."""

import json
import time

import pytest

from orchestrator.driver import make_plan
from orchestrator.scheduler import StageBuilds
from orchestrator.spec import parse_spec
from workers.storage import child_uri

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
    assert sorted(k.kind for k in plan.stages_missing) == ["features", "subset", "subset", "teacher"]
    # Ray only counts GPUs; one declared on this CPU machine is enough to see who gets it.
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        builds = StageBuilds(
            plan.stages_missing,
            child_uri(spec.storage, "artifacts"),
            cpus=spec.resources.cpus_per_trial,
            gpus=spec.resources.gpus_per_trial,
        )
        deadline = time.time() + 600
        while len(builds.built) + len(builds.failed) < len(plan.stages_missing) and time.time() < deadline:
            builds.poll()
            time.sleep(0.2)
    finally:
        ray.shutdown()
    assert builds.failed == {} and builds.built == set(plan.stages_missing)
    seen = {}
    for k in plan.stages_missing:
        m = json.loads((tmp_path / "artifacts" / k.kind / k.digest / "manifest.json").read_text())
        seen[(k.kind, k.cfg.get("selector", {}).get("name"))] = m["cuda_visible_devices"]
    assert seen[("teacher", None)] == "0" and seen[("features", None)] == "0"
    assert seen[("subset", "random")] != "0" and seen[("subset", "herding")] != "0"


def test_a_failed_data_stage_names_the_file_and_its_traceback_reaches_the_failure_records(tmp_path):
    """Issue #10.3: an unreadable image failed its stage with PIL's `OSError: Truncated File Read` (no file name)
    and the trials' failure records kept an empty traceback; now both name the file and the records keep the
    remote traceback."""
    import ray
    from imagetrees import make_tree
    from ray.tune.search import Searcher

    from orchestrator.scheduler import ready_trials_searcher

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
        builds = StageBuilds(plan.stages_missing, child_uri(spec.storage, "artifacts"), cpus=1, gpus=0)
        builds.wait()
    finally:
        ray.shutdown()
    failed = builds.failed
    shard = [k for k in failed if k.kind == "shard"]
    assert len(shard) == 1 and str(bad) in failed[shard[0]][0]
    assert {k.kind for k in failed} == {"shard", "cache", "subset"}  # the dependants fail with the root cause
    store = spec.store()
    searcher = ready_trials_searcher(plan.pending, builds, store)  # records the trials of failed stages
    assert searcher.suggest("t0") == Searcher.FINISHED  # and never launches them
    for t in plan.pending:
        record = store.failures()[t.trial_id]
        assert str(bad) in record["error"] and "set dataset.skip_bad_files: true" in record["error"]
        assert "Traceback" in record["traceback"] and "in build_shard" in record["traceback"]
        assert str(bad) in record["traceback"]
