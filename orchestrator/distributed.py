"""Data-parallel builds of the long stages (score runs, teacher training) on Ray Train (docs/design.md §7).

With `resources.stage_workers: N > 1`, a stage kind declared `data_parallel` is built by a
`ray.train.torch.TorchTrainer` of N workers (each with the trial's CPUs and GPUs; gloo on CPUs, NCCL on
GPUs) instead of one task. Every rank runs `workers.stages.build_rank`: the same builder, its share of
each step (workers.distributed), rank 0 publishing the artifact. A lost worker makes Ray Train restart
the group (FailureConfig), which resumes from the stage's epoch checkpoint on the shared storage.
"""

from __future__ import annotations

import uuid

from workers.config import ArtifactKey
from workers.storage import child_uri


def _rank_loop(config: dict) -> None:
    from workers import stages
    from workers.artifacts import ArtifactStore
    from workers.distributed import Dist

    dist = Dist.current()
    if dist is None:  # a group of one: the plain build
        stages.build(ArtifactKey(config["kind"], config["config_json"]), ArtifactStore(config["root"]))
        return
    stages.build_rank(ArtifactKey(config["kind"], config["config_json"]), ArtifactStore(config["root"]), dist)


def build_data_parallel(
    key: ArtifactKey, artifacts_root: str, workers: int, cpus: float, gpus: float, max_failures: int = 2
) -> None:
    """Build `key` with `workers` data-parallel ranks; returns when it is published (raises when the group failed
    more than `max_failures` times)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    per_worker = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    trainer = TorchTrainer(
        _rank_loop,
        train_loop_config={"kind": key.kind, "config_json": key.config_json, "root": artifacts_root},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=per_worker),
        run_config=RunConfig(
            name=f"{key.kind}-{key.digest[:16]}-{uuid.uuid4().hex[:6]}",
            storage_path=child_uri(artifacts_root, ".ray_train"),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    trainer.fit()
