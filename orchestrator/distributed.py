"""Data-parallel builds of the long stages (score runs, teacher training) and `full` trials on Ray Train
(docs/design.md §7).

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


def _use_own_gpu() -> None:
    """Make this worker's GPU the current CUDA device: workers sharing a node may see all of its GPUs, and
    "cuda" (workers.models.pick_device) means the current one."""
    import torch

    if torch.cuda.is_available():
        from ray.train.torch import get_device

        torch.cuda.set_device(get_device())


def _rank_loop(config: dict) -> None:
    from workers import stages
    from workers.artifacts import ArtifactStore
    from workers.distributed import Dist

    _use_own_gpu()
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


def _trial_rank_loop(config: dict) -> None:
    import json

    from workers.config import TrialConfig
    from workers.distributed import Dist
    from workers.storage import Storage
    from workers.trial import TrialContext, run_trial

    _use_own_gpu()
    ctx = TrialContext(
        artifacts_root=config["artifacts_root"],
        checkpoint_dir=config["checkpoint_dir"],
        num_threads=config["num_threads"],
        checkpoint_interval_s=config["checkpoint_interval_s"],
        device_fraction=config["device_fraction"],
        dist=Dist.current(),
    )
    metrics = run_trial(TrialConfig.from_json(json.loads(config["trial_json"])), ctx)
    if metrics is not None:  # rank 0 (or a group of one)
        st = Storage(config["checkpoint_dir"])
        st.write_atomic(st.path(METRICS), json.dumps(metrics, default=str).encode())


METRICS = "metrics.json"  # what rank 0 of a data-parallel trial leaves beside its checkpoint for the trainable


def run_trial_data_parallel(
    trial_id: str,
    trial_json: str,
    artifacts_root: str,
    checkpoint_dir: str,
    workers: int,
    cpus: float,
    gpus: float,
    num_threads: int,
    checkpoint_interval_s: float,
    device_fraction: float,
    max_failures: int = 2,
) -> dict:
    """Train one trial with `workers` DDP ranks (each with `cpus` and `gpus`) and return rank 0's metrics, as
    workers.trial.run_trial does. The ranks resume from the trial's checkpoint folder after a lost worker
    (Ray Train restarts the group) or a retried trial."""
    import json

    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from workers.storage import Storage

    st = Storage(checkpoint_dir)
    st.delete(st.path(METRICS))  # an earlier attempt's
    per_worker = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    config = {
        "trial_json": trial_json,
        "artifacts_root": artifacts_root,
        "checkpoint_dir": checkpoint_dir,
        "num_threads": num_threads,
        "checkpoint_interval_s": checkpoint_interval_s,
        "device_fraction": device_fraction,
    }
    TorchTrainer(
        _trial_rank_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=per_worker),
        run_config=RunConfig(
            name=f"trial-{trial_id}-{uuid.uuid4().hex[:6]}",
            storage_path=child_uri(artifacts_root, ".ray_train"),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    ).fit()
    return json.loads(st.read_bytes(st.path(METRICS)))
