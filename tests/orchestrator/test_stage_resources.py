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
