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

from workers.accel import autocast, prepare, resolve_precision
from workers.budget import BudgetPlan, epoch_batches
from workers.config import OPTIMIZERS, TrainConfig
from workers.data.shards import ShardedImages
from workers.distributed import Dist
from workers.regimes import Regime, center_crop
from workers.schedules import lr_factor
from workers.seeding import torch_generator
from workers.storage import Storage

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ data on the device (or streamed to it)
# A streamed batch holds at most this many bytes as float32 (and at most 1024 images): evaluation, teacher logits
# and features, score-run records. $DDSWEEP_BATCH_BYTES overrides it (e.g. to bound memory in a test).
STREAM_BATCH_BYTES = int(os.environ.get("DDSWEEP_BATCH_BYTES", 256 << 20))
PLACEMENTS = ("auto", "device", "host", "stream")


def stream_batch(image_shape, cap: int = 1024) -> int:
    """Images per streamed batch for (C, H, W) images: `cap`, fewer when their float32 copy would pass
    STREAM_BATCH_BYTES."""
    per = 4 * int(np.prod(image_shape))
    return max(1, min(cap, STREAM_BATCH_BYTES // per))


@dataclass
class Tensors:
    """uint8 images and labels for training or evaluation, normalised per batch on the compute device.

    `x` is a uint8 tensor on the device (GPU-resident: small subsets), a uint8 tensor in host memory (pinned
    when the device is a GPU) copied per batch, or a `ShardedImages` read per batch from the cache (the full
    train split of a large data set). Every placement gives the same batches, so the same numbers.
    `y`, `mean`, `std` live on the compute device. `side`: the model's input side when the stored images are
    larger (workers.regimes cuts views of that side; evaluation takes the centre crop)."""

    x: torch.Tensor | ShardedImages
    y: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    ids: torch.Tensor | None = None  # the images' indices in the train split (None: synthetic images)
    side: int | None = None

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def input_side(self) -> int:
        return self.side or int(self.x.shape[-1])

    def positions(self, start: int, stop: int) -> torch.Tensor:
        """Positions start..stop-1 where indexing `x` is cheapest (its own device; the CPU for shards)."""
        where = self.x.device if isinstance(self.x, torch.Tensor) else "cpu"
        return torch.arange(start, stop, device=where)

    def uint8_batch(self, idx: torch.Tensor) -> torch.Tensor:
        """The uint8 images at positions idx, on the compute device."""
        if isinstance(self.x, torch.Tensor):
            if self.x.device == self.device or self.device.type != "cuda":
                out = self.x[idx if self.x.device == idx.device else idx.to(self.x.device)]
            else:  # the host path: gather into pinned memory, so the copy below is asynchronous
                out = torch.empty((len(idx), *self.x.shape[1:]), dtype=self.x.dtype, pin_memory=True)
                torch.index_select(self.x, 0, idx.cpu(), out=out)
        else:
            out = torch.from_numpy(self.x[idx.cpu().numpy()])
            if self.device.type == "cuda":
                out = out.pin_memory()
        return out if out.device == self.device else out.to(self.device, non_blocking=True)

    def float_batch(self, idx: torch.Tensor) -> torch.Tensor:
        return (self.uint8_batch(idx).float() / 255.0 - self.mean) / self.std

    def clean_batch(self, idx: torch.Tensor) -> torch.Tensor:
        """The un-augmented model input: the normalised images, centre-cropped to the input side."""
        return center_crop(self.float_batch(idx), self.input_side)

    def labels(self, idx: torch.Tensor) -> torch.Tensor:
        return self.y[idx.to(self.y.device)]

    @classmethod
    def of(
        cls, x_uint8, y, mean: torch.Tensor, std: torch.Tensor, ids=None, side=None, placement: str = "auto"
    ) -> Tensors:
        """uint8 images and int labels for the device of `mean` (the train split's channel stats). `placement`:
        device, host (pinned on a GPU box), stream (sharded images stay on disk), or auto (`choose_placement`)."""
        device = mean.device
        if placement == "auto":
            placement = choose_placement(_nbytes(x_uint8), device)
        if isinstance(x_uint8, ShardedImages) and placement == "stream":
            x = x_uint8
        else:
            where = device if placement == "device" else torch.device("cpu")
            x = _materialise(x_uint8, where, pin=placement == "host" and device.type == "cuda")
        return cls(
            x,
            torch.as_tensor(y).to(device),
            mean,
            std,
            None if ids is None else torch.as_tensor(np.asarray(ids, dtype=np.int64)),
            side,
        )


# The share of free device memory a training subset may take as uint8 (and of available host memory, for a
# subset that does not fit on the device); the trial's TrialContext.device_fraction overrides it.
DEVICE_FRACTION = 0.5


def _nbytes(x) -> int:
    return int(x.nbytes) if hasattr(x, "nbytes") else int(np.asarray(x).nbytes)


def _available_host_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def choose_placement(nbytes: int, device, fraction: float | None = None) -> str:
    """device when the images fit `fraction` of the free device memory, else host when they fit that fraction of
    the available host memory, else stream. On a CPU the device is host memory."""
    fraction = DEVICE_FRACTION if fraction is None else fraction
    device = torch.device(device)
    host = _available_host_bytes()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes <= fraction * free:
            return "device"
        return "host" if nbytes <= fraction * host else "stream"
    return "device" if nbytes <= fraction * host else "stream"


def _materialise(x, where: torch.device, pin: bool) -> torch.Tensor:
    """A uint8 tensor of all of `x` on `where`; sharded images are read in batches straight into it."""
    if not isinstance(x, ShardedImages):
        t = torch.as_tensor(np.ascontiguousarray(x))
        if pin:
            return t.pin_memory()
        return t.to(where)
    out = torch.empty(tuple(x.shape), dtype=torch.uint8, device=where, pin_memory=pin)
    for start, rows in x.batches(max(1, (64 << 20) // max(1, int(np.prod(x.shape[1:]))))):
        out[start : start + len(rows)] = torch.from_numpy(rows).to(where)
    return out


def channel_stats(x_uint8, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of x / 255 (std clamped at 1e-3), shaped (1, C, 1, 1) on `device`. Images in
    memory: one float32 pass, as always; sharded images: exact integer sums recorded by the cache build."""
    if isinstance(x_uint8, ShardedImages):
        m, s = x_uint8.channel_stats()
        mean = torch.as_tensor(m, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.as_tensor(s, dtype=torch.float32).clamp_min(1e-3).view(1, -1, 1, 1)
        return mean.to(device), std.to(device)
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
def evaluate(model: nn.Module, data: Tensors, batch: int | None = None, precision: str = "fp32") -> dict[str, float]:
    """top-1, top-5 and mean cross-entropy on the centre-cropped images, streamed in batches (under bf16
    autocast when the trial trains in bf16; the loss is summed in float32)."""
    was_training = model.training
    model.eval()
    n = len(data.y)
    batch = batch or stream_batch(data.x.shape[1:])
    k = min(5, int(data.y.max().item()) + 1) if n else 1
    correct1 = correct5 = 0
    loss = 0.0
    for s in range(0, n, batch):
        idx = data.positions(s, min(n, s + batch))
        with autocast(precision, data.device):
            logits = model(data.clean_batch(idx))
        logits = logits.float()
        y = data.labels(idx)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        topk = logits.topk(min(k, logits.shape[1]), dim=1).indices
        correct1 += (topk[:, 0] == y).sum().item()
        correct5 += (topk == y[:, None]).any(dim=1).sum().item()
    model.train(was_training)
    return {"top1": correct1 / n, "top5": correct5 / n, "loss": loss / n}


# ------------------------------------------------------------------ checkpoints
# Seconds between the epoch checkpoints of a long shared stage (score runs, teacher training; a score run's rows
# so far are in them); 0 = after every epoch.
STAGE_CHECKPOINT_S = float(os.environ.get("DDSWEEP_STAGE_CHECKPOINT_S", "300"))


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
    `progress(row)`: each evaluation row as it is made. `state()` / `restore(d)`: what the caller records,
    saved in the loop's checkpoints and given back on resume (a score run's rows so far)."""

    on_batch: Callable[[torch.Tensor, torch.Tensor, int], None] | None = None
    on_epoch_end: Callable[[int, nn.Module], None] | None = None
    progress: Callable[[dict], None] | None = None
    state: Callable[[], dict] | None = None
    restore: Callable[[dict], None] | None = None


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
    *,
    dist: Dist | None = None,
) -> dict:
    """Train `model` on `train_data` for exactly plan.images_seen images. Returns the history of evaluations.

    The learning-rate schedule spans the plan's steps, or `schedule_steps` (>= them) for a run stopped early
    in a longer schedule (EL2N's score runs, docs/methods.md §4.4). With `dist` (a process group of world > 1,
    workers.distributed) every rank runs this with the same arguments and trains its share of each global
    batch under DDP; hooks see the rank's own samples, rank 0 alone writes checkpoints and every rank resumes
    from them."""
    hooks = hooks or TrainHooks()
    device = train_data.device
    precision = resolve_precision(cfg.precision, device)
    # the module to call; `model` owns the state (DDP wraps before torch.compile, as DDP asks)
    forward = prepare(model, device, cfg.channels_last, cfg.compile and dist is None)
    if dist is not None:
        forward = dist.wrap(forward, device)
        forward = torch.compile(forward) if cfg.compile else forward
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
        if hooks.restore is not None:
            hooks.restore(resumed.get("extra", {}))
        log.info("resumed at epoch %d of %d", start_epoch, len(epochs))

    model.train()
    for epoch, sizes in epochs[start_epoch:]:
        t0 = time.perf_counter()
        # Order and augmentation come from (seed, purpose, epoch): a resumed run replays them exactly.
        order = torch.randperm(n, generator=torch_generator(seed, "order", epoch)).to(device)
        aug_gen = torch_generator(seed, "augment", epoch, *([] if dist is None else [dist.rank]))
        pos = 0
        for size in sizes:
            idx, weight = order[pos : pos + size], 1.0
            pos += size
            if dist is not None:
                idx, weight = dist.share(idx)
            with autocast(precision, device):
                loss, logits = regime.loss(forward, train_data, idx, epoch, aug_gen)
            if hooks.on_batch is not None and weight > 0:
                hooks.on_batch(idx, logits.detach(), epoch)
            opt.zero_grad(set_to_none=True)
            (loss if dist is None else loss * weight).backward()
            opt.step()
            sched.step()
            steps += 1
            images_seen += size
        train_seconds += time.perf_counter() - t0
        if hooks.on_epoch_end is not None:
            hooks.on_epoch_end(epoch, model)
        if epoch in eval_epochs:
            row = {"epoch": epoch + 1, "images_seen": images_seen, "train_loss": float(loss.item())}
            if dist is not None:  # one model to evaluate: rank 0's BatchNorm statistics everywhere
                dist.broadcast_state(model)
            if dist is None or dist.leader:  # the leader evaluates the whole splits; the others wait for it
                for split, data in evals.items():
                    row.update({f"{split}_{k}": v for k, v in evaluate(model, data, precision=precision).items()})
                if hooks.progress is not None:
                    hooks.progress(row)
            if dist is not None:
                dist.barrier()
            history.append(row)
        state = {
            "epoch": epoch + 1,
            "images_seen": images_seen,
            "steps": steps,
            "history": history,
            "train_seconds": train_seconds,
        }
        if dist is None or dist.leader:
            checkpointer.maybe_save(
                lambda state=state: {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    **state,
                    **({"extra": hooks.state()} if hooks.state is not None else {}),
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
        "precision": precision,
    }
