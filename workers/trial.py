"""run_trial(config, ctx) -> metrics: one trial from data to evaluation, without Ray.

    python -m workers.trial trial.json [--storage DIR] [--threads N]

runs one trial from a TrialConfig JSON (the `config_json` column of a results row) and prints
its metrics as JSON: for debugging, profiling, or a GPU box without a cluster. On the CPU the
result depends on the torch thread count: give the row's `num_threads` (or use `ddsweep
reproduce ROW.parquet`, which does).
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workers import models, stages
from workers.artifacts import ArtifactStore
from workers.budget import plan as budget_plan
from workers.catalogue import REGIMES
from workers.config import TrialConfig
from workers.data import load_splits
from workers.data.shards import ShardedImages
from workers.distributed import Dist
from workers.graph import kd_labels_key, requires, subset_key, teacher_key
from workers.naming import trial_name
from workers.storage import Storage, child_uri
from workers.teacher import load_teacher
from workers.train import PLACEMENTS, Checkpointer, Tensors, TrainHooks, channel_stats, choose_placement, train

log = logging.getLogger(__name__)


@dataclass
class TrialContext:
    """Where a trial reads and writes: the shared artifact store and its own checkpoint folder."""

    artifacts_root: str | Path  # a folder or an object-store URI
    checkpoint_dir: str | Path | None = None  # likewise
    report: Callable[[dict], None] | None = None
    device: str | None = None
    checkpoint_interval_s: float = 60.0
    num_threads: int | None = None
    on_progress: Callable[[float, int], None] | None = None  # (fraction of the images seen, epochs done)
    # Where the training images live: auto = on the device when they fit device_fraction of its free memory,
    # else in (pinned) host memory when they fit that fraction of it, else streamed from the cache per batch.
    # Every placement trains on the same batches (the same numbers); device/host/stream force one.
    placement: str = "auto"
    device_fraction: float = 0.5
    # A data-parallel trial (workers.distributed): every rank calls run_trial with its Dist; rank 0 alone
    # evaluates, checkpoints and returns the metrics (the others return None).
    dist: Dist | None = None

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement {self.placement!r}: choose one of {', '.join(PLACEMENTS)}")


def run_trial(config: TrialConfig, ctx: TrialContext) -> dict[str, Any] | None:
    t_start = time.time()
    if ctx.num_threads:
        torch.set_num_threads(ctx.num_threads)
    device = models.pick_device(ctx.device)
    store = ArtifactStore(ctx.artifacts_root)
    dist = ctx.dist

    # Shared stages: normally built by the driver already; built here when run without one.
    t0 = time.perf_counter()
    if dist is None or dist.leader:
        for key in requires(config):
            stages.build(key, store)
    if dist is not None:
        dist.barrier()
    skey = subset_key(config)
    splits = load_splits(config.dataset, store)
    sub_x, sub_y, sub_ids = stages.load_training_set(skey, store, splits)
    select_seconds = time.perf_counter() - t0

    store.check_classes(skey, splits.class_names)
    mean, std = channel_stats(splits.train_x, device)

    side = splits.input_side
    placement = ctx.placement
    if placement == "auto":
        placement = choose_placement(int(sub_x.nbytes), device, ctx.device_fraction)
    train_data = Tensors.of(sub_x, sub_y, mean, std, ids=sub_ids, side=side, placement=placement)
    evals = {  # a cached data set streams its evaluation splits from the cache, a batch at a time
        name: Tensors.of(x, y, mean, std, side=side, placement="stream" if isinstance(x, ShardedImages) else "auto")
        for name, x, y in (("test", splits.test_x, splits.test_y), ("minival", splits.minival_x, splits.minival_y))
    }

    plan = budget_plan(
        config.budget,
        n_subset=config.ipc * splits.num_classes,
        n_full=len(splits.train_y),
        batch=config.train.batch_size,
        n_data=len(sub_y),
    )
    model = models.build(
        config.student.name, config.student.opts, splits.num_classes, splits.input_shape, config.seed
    ).to(device)
    teacher = None
    if config.teacher is not None:
        teacher = load_teacher(teacher_key(config.dataset, config.teacher), store, device)
    extra = {}
    kkey = kd_labels_key(config)
    if kkey is not None:  # stored SL+KD labels: read from their artifact one epoch at a time
        from workers.kd_labels import StoredLabels

        extra["labels"] = StoredLabels.of(kkey, store)
    regime = REGIMES[config.regime].load()(config.train, config.seed, teacher, **extra)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    result = train(
        model,
        regime,
        train_data,
        config.train,
        plan,
        config.seed,
        evals,
        Checkpointer(ctx.checkpoint_dir, ctx.checkpoint_interval_s),
        TrainHooks(progress=ctx.report, on_epoch_end=_progress_hook(ctx, len(sub_y), plan.images_seen)),
        dist=dist,
    )
    if dist is not None and not dist.leader:
        return None
    final = result["history"][-1]
    return {
        "subset_key": skey.digest,
        "dataset": config.dataset.name,
        "student_arch": config.student.name,
        "teacher_arch": config.teacher.arch.name if config.teacher else None,
        **plan.to_json(),
        "top1": final["test_top1"],
        "top5": final["test_top5"],
        "loss": final["test_loss"],
        "best_top1": max(h["test_top1"] for h in result["history"]),
        "minival_top1": final["minival_top1"],
        "select_seconds": select_seconds,
        "train_seconds": result["train_seconds"],
        "total_seconds": time.time() - t_start,
        "gpu_name": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "device": device,
        "precision": result["precision"],
        "peak_gpu_mem_bytes": int(torch.cuda.max_memory_allocated()) if device.startswith("cuda") else None,
        "soft_label_bytes": int(regime.soft_label_bytes),
        "resumed_from_epoch": int(result["resumed_from_epoch"]),
        "data_placement": placement,
        "host": socket.gethostname(),
        "num_threads": torch.get_num_threads(),
        "workers": 1 if dist is None else dist.world,
        "torch_version": torch.__version__,
        "history": result["history"],
    }


def _progress_hook(ctx: TrialContext, n_data: int, images: int):
    """After each epoch: the share of the trial's images seen so far (every epoch but the last is n_data)."""
    if ctx.on_progress is None:
        return None
    return lambda epoch, model: ctx.on_progress(min(1.0, (epoch + 1) * n_data / images), epoch + 1)


def clear_checkpoint(ctx: TrialContext) -> None:
    if ctx.checkpoint_dir is not None:
        st = Storage(ctx.checkpoint_dir)
        st.delete_dir(st.base)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workers.trial", description=__doc__.splitlines()[0])
    p.add_argument("trial_json", help="a TrialConfig as JSON (e.g. a results row's config_json)")
    p.add_argument("--storage", default="./ddsweep-runs", help="artifacts go under STORAGE/artifacts")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads; on the CPU results depend on it: give the row's num_threads",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = TrialConfig.from_json(json.loads(Path(args.trial_json).read_text()))
    ctx = TrialContext(
        artifacts_root=child_uri(args.storage, "artifacts"),
        device=args.device,
        report=lambda row: log.info("progress %s", json.dumps(row)),
        num_threads=args.threads,
    )
    metrics = run_trial(cfg, ctx)
    metrics.pop("history")
    json.dump({"trial_id": cfg.trial_id, "trial_name": trial_name(cfg), **metrics}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
