"""Student training under a compute budget, then evaluation.

Read it top to bottom: build, loop, checkpoint, evaluate.
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers.budget import BudgetPlan, epoch_batches
from workers.config import OPTIMIZERS, TrainConfig
from workers.regimes import Regime
from workers.schedules import lr_factor
from workers.seeding import torch_generator
from workers.storage import Storage

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ data on the device
@dataclass
class Tensors:
    """Images as uint8 on the device (GPU-resident for small subsets), normalised per batch."""

    x: torch.Tensor
    y: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    ids: torch.Tensor | None = None  # the images' indices in the train split (None: synthetic images)

    def float_batch(self, idx: torch.Tensor) -> torch.Tensor:
        return (self.x[idx].float() / 255.0 - self.mean) / self.std

    @classmethod
    def of(cls, x_uint8, y, mean: torch.Tensor, std: torch.Tensor, ids=None) -> Tensors:
        """numpy uint8 images and int labels onto the device of `mean` (the train split's channel stats)."""
        return cls(
            torch.as_tensor(np.ascontiguousarray(x_uint8)).to(mean.device),
            torch.as_tensor(y).to(mean.device),
            mean,
            std,
            None if ids is None else torch.as_tensor(np.asarray(ids, dtype=np.int64)),
        )


def channel_stats(x_uint8, device) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(x_uint8, dtype=torch.float32) / 255.0
    mean = x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).view(1, -1, 1, 1)
    return mean.to(device), std.to(device)


# ------------------------------------------------------------------ optimiser
_OPTIMIZERS: dict[str, Callable[[nn.Module, TrainConfig], torch.optim.Optimizer]] = {
    "sgd": lambda m, c: torch.optim.SGD(m.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
    "adam": lambda m, c: torch.optim.Adam(m.parameters(), lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda m, c: torch.optim.AdamW(m.parameters(), lr=c.lr, weight_decay=c.weight_decay),
}
assert set(_OPTIMIZERS) == set(OPTIMIZERS), "workers.config.OPTIMIZERS and the builders here must agree"


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return _OPTIMIZERS[cfg.optimizer](model, cfg)


# ------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(model: nn.Module, data: Tensors, batch: int = 1024) -> dict[str, float]:
    was_training = model.training
    model.eval()
    n = len(data.y)
    k = min(5, int(data.y.max().item()) + 1) if n else 1
    correct1 = correct5 = 0
    loss = 0.0
    for s in range(0, n, batch):
        idx = torch.arange(s, min(n, s + batch), device=data.x.device)
        logits = model(data.float_batch(idx))
        y = data.y[idx]
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        topk = logits.topk(min(k, logits.shape[1]), dim=1).indices
        correct1 += (topk[:, 0] == y).sum().item()
        correct5 += (topk == y[:, None]).any(dim=1).sum().item()
    model.train(was_training)
    return {"top1": correct1 / n, "top5": correct5 / n, "loss": loss / n}


# ------------------------------------------------------------------ checkpoints
@dataclass
class Checkpointer:
    """Atomic epoch checkpoints in `folder` (a path or an object-store URI), at most every `interval_s` s."""

    folder: str | os.PathLike | None
    interval_s: float = 60.0
    last: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.st = Storage(self.folder) if self.folder else None
        self.file = self.st.path("state.pt") if self.st else None

    def load(self) -> dict | None:
        if self.st is None or not self.st.exists(self.file):
            return None
        try:
            return torch.load(io.BytesIO(self.st.read_bytes(self.file)), map_location="cpu", weights_only=True)
        except Exception as err:  # a torn or foreign file: start over rather than crash the trial
            log.warning("ignoring unreadable checkpoint %s: %s", self.file, err)
            return None

    def maybe_save(self, state: Callable[[], dict], force: bool = False) -> bool:
        if self.st is None or (not force and time.monotonic() - self.last < self.interval_s):
            return False
        buf = io.BytesIO()
        torch.save(state(), buf)
        self.st.write_atomic(self.file, buf.getvalue())
        self.last = time.monotonic()
        return True


# ------------------------------------------------------------------ the loop
@dataclass
class TrainHooks:
    """What a caller may observe during training; every hook is optional.

    `on_batch(positions, logits, epoch)`: after each step's forward, the mini-batch predictions (the
    score runs read them for forgetting). `on_epoch_end(epoch, model)`: after each epoch's last step.
    `progress(row)`: each evaluation row as it is made."""

    on_batch: Callable[[torch.Tensor, torch.Tensor, int], None] | None = None
    on_epoch_end: Callable[[int, nn.Module], None] | None = None
    progress: Callable[[dict], None] | None = None


def train(
    model: nn.Module,
    regime: Regime,
    train_data: Tensors,
    cfg: TrainConfig,
    plan: BudgetPlan,
    seed: int,
    evals: dict[str, Tensors],
    checkpointer: Checkpointer,
    hooks: TrainHooks | None = None,
    schedule_steps: int | None = None,
) -> dict:
    """Train `model` on `train_data` for exactly plan.images_seen images. Returns the history of evaluations.

    The learning-rate schedule spans the plan's steps, or `schedule_steps` (>= them) for a run stopped early
    in a longer schedule (EL2N's score runs, docs/methods.md §4.4)."""
    hooks = hooks or TrainHooks()
    device = train_data.x.device
    opt = make_optimizer(model, cfg)
    total = plan.steps if schedule_steps is None else schedule_steps
    if total < plan.steps:
        raise ValueError(f"schedule_steps = {total} is shorter than the run's {plan.steps} steps")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg.schedule, s, total))
    n = len(train_data.y)
    epochs = list(epoch_batches(n, cfg.batch_size, plan.images_seen))
    eval_epochs = {
        min(len(epochs) - 1, math.ceil(len(epochs) * k / cfg.eval_points) - 1) for k in range(1, cfg.eval_points + 1)
    }
    history: list[dict] = []
    start_epoch, images_seen, steps, train_seconds = 0, 0, 0, 0.0

    regime.prepare(train_data, len(epochs))
    resumed = checkpointer.load()
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        opt.load_state_dict(resumed["optimizer"])
        sched.load_state_dict(resumed["scheduler"])
        start_epoch, images_seen, steps = resumed["epoch"], resumed["images_seen"], resumed["steps"]
        history, train_seconds = resumed["history"], resumed["train_seconds"]
        log.info("resumed at epoch %d of %d", start_epoch, len(epochs))

    model.train()
    for epoch, sizes in epochs[start_epoch:]:
        t0 = time.perf_counter()
        # Order and augmentation come from (seed, purpose, epoch): a resumed run replays them exactly.
        order = torch.randperm(n, generator=torch_generator(seed, "order", epoch)).to(device)
        aug_gen = torch_generator(seed, "augment", epoch)
        pos = 0
        for size in sizes:
            idx = order[pos : pos + size]
            pos += size
            loss, logits = regime.loss(model, train_data, idx, epoch, aug_gen)
            if hooks.on_batch is not None:
                hooks.on_batch(idx, logits.detach(), epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            steps += 1
            images_seen += size
        train_seconds += time.perf_counter() - t0
        if hooks.on_epoch_end is not None:
            hooks.on_epoch_end(epoch, model)
        if epoch in eval_epochs:
            row = {"epoch": epoch + 1, "images_seen": images_seen, "train_loss": float(loss.item())}
            for split, data in evals.items():
                row.update({f"{split}_{k}": v for k, v in evaluate(model, data).items()})
            history.append(row)
            if hooks.progress is not None:
                hooks.progress(row)
        state = {
            "epoch": epoch + 1,
            "images_seen": images_seen,
            "steps": steps,
            "history": history,
            "train_seconds": train_seconds,
        }
        checkpointer.maybe_save(
            lambda state=state: {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                **state,
            },
            force=False,
        )
    assert images_seen == plan.images_seen and steps == plan.steps, (images_seen, steps, plan)
    return {
        "history": history,
        "images_seen": images_seen,
        "steps": steps,
        "train_seconds": train_seconds,
        "resumed_from_epoch": resumed["epoch"] if resumed is not None else 0,
    }
