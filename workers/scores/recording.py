"""The `dynamics` stage: one full-data HL training run that records per-sample training dynamics.

Stored as (epochs + 1) x N float16 arrays (row 0 = at initialisation, row e = after epoch e), on
clean images in eval mode: `prob_true` (p_y), `margin` (p_y - max other p, for AUM), `el2n`
(||p - e_y||), `grand` (the last-layer gradient-norm closed form); and `correct` (epochs x N
bool): whether the training mini-batch forward classified the sample (forgetting, as
DeepCore/CCS). Never per-batch logs, never pickles (docs/methods.md §4).

A run's key may add (workers.graph.dynamics_key): `schedule_epochs` (the learning-rate schedule spans
that many epochs and the run stops after `epochs`), `records: "train_margin"` (also `train_margin`,
epochs x N float16: the margin of the training mini-batch forward, CCS's AUM), `seed` (the trial seed
the run is seeded with besides its index).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from workers import models
from workers.artifacts import ArtifactStore
from workers.budget import plan
from workers.config import ArtifactKey, BudgetConfig, Named, TrainConfig
from workers.data import load_splits
from workers.distributed import Dist
from workers.regimes import HardLabels
from workers.seeding import derive_seed
from workers.teacher import full_train_tensors, iter_logits_and_features
from workers.train import STAGE_CHECKPOINT_S, Checkpointer, TrainHooks, train

STATS = ("prob_true", "margin", "el2n", "grand")


def sample_stats(logits: torch.Tensor, labels: torch.Tensor, feats: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Per-sample statistics of one forward pass, in float32 (the one implementation of these formulas):

    - `prob_true` p_y = softmax(z)_y;
    - `margin` p_y - max_{c != y} p_c (summed over epochs it is CCS's AUM, docs/methods.md §4.7);
    - `el2n` ||softmax(z) - e_y||_2 (Paul et al., docs/methods.md §4.4);
    - `grand` the per-sample gradient norm of the cross-entropy w.r.t. a linear last layer with bias,
      ||p - e_y||_2 * sqrt(||phi||^2 + 1) for features phi (docs/methods.md §4.5): per sample, so it
      does not depend on the batch size or order; left out when `feats` is None.
    """
    p = F.softmax(logits.float(), dim=1)
    onehot = F.one_hot(labels, p.shape[1]).float()
    p_true = p.gather(1, labels[:, None]).squeeze(1)
    other = p.masked_fill(onehot.bool(), -1.0).max(dim=1).values
    el2n = (p - onehot).norm(dim=1)
    out = {"prob_true": p_true, "margin": p_true - other, "el2n": el2n}
    if feats is not None:
        out["grand"] = el2n * torch.sqrt(feats.float().pow(2).sum(1) + 1.0)
    return out


def build_dynamics(
    key: ArtifactKey, store: ArtifactStore, out: Path, *, dist: Dist | None = None, checkpoint: str | None = None
) -> dict[str, Any]:
    """One score run. With `dist` (data-parallel on Ray Train, orchestrator/distributed.py) every rank trains its
    share of each step and records its own samples; the rows are summed over ranks after each epoch, with a
    count that checks every sample was seen exactly once per epoch. `checkpoint`: a folder for epoch checkpoints
    (the model, the optimiser and the rows so far) that a restarted run resumes from."""
    cfg = key.cfg
    splits = load_splits(cfg["dataset"], store)
    device = models.pick_device()
    data, _ = full_train_tensors(splits, device)
    n, epochs = len(splits.train_y), cfg["epochs"]
    seed = derive_seed(cfg["run"], "dynamics", *([cfg["seed"]] if "seed" in cfg else []))
    arch = Named.make(cfg["arch"]["name"], cfg["arch"]["options"])
    model = models.build(arch.name, arch.opts, splits.num_classes, splits.input_shape, seed).to(device)
    recipe = TrainConfig(**cfg["recipe"], eval_points=1)

    rows = {k: np.zeros((epochs + 1, n), np.float16) for k in STATS}
    correct = np.zeros((epochs, n), bool)
    train_margin = np.zeros((epochs, n), np.float16) if "train_margin" in cfg.get("records", "") else None

    seen = np.zeros(n, np.int64)  # this epoch's count per sample (checked when data-parallel)

    def record(row: int, m) -> None:  # a clean pass over the train split (the rank's block), streamed in batches
        start, stop = (0, n) if dist is None else dist.block(n)
        if dist is not None:
            dist.broadcast_state(m)
        for s, logits, feats in iter_logits_and_features(m, data, start=start, stop=stop):
            labels = data.labels(torch.arange(s, s + len(logits)))
            for name, v in sample_stats(logits, labels, feats).items():
                rows[name][row, s : s + len(v)] = v.cpu().numpy()
        if dist is not None:
            for name in rows:
                rows[name][row] = dist.sum_(rows[name][row])

    def on_batch(pos, logits, epoch):
        where = pos.cpu().numpy()
        labels = data.labels(pos)
        correct[epoch, where] = (logits.argmax(1) == labels).cpu().numpy()
        if train_margin is not None:  # the training forward's margin (CCS's and D2's AUM, docs/methods.md §4.7)
            train_margin[epoch, where] = sample_stats(logits, labels, None)["margin"].cpu().numpy()
        seen[where] += 1

    def on_epoch_end(epoch: int, m) -> None:
        if dist is not None:
            correct[epoch] = dist.sum_(correct[epoch].astype(np.int64)) > 0
            if train_margin is not None:
                train_margin[epoch] = dist.sum_(train_margin[epoch])
            counts = dist.sum_(seen)
            if np.any(counts != 1):
                bad = np.flatnonzero(counts != 1)
                raise AssertionError(f"epoch {epoch}: {len(bad)} samples seen {counts[bad[:3]].tolist()}... times")
        seen[:] = 0
        record(epoch + 1, m)

    def state() -> dict:
        d = {"rows": {k: torch.from_numpy(v) for k, v in rows.items()}, "correct": torch.from_numpy(correct)}
        if train_margin is not None:
            d["train_margin"] = torch.from_numpy(train_margin)
        return d

    def restore(d: dict) -> None:
        for k, v in d["rows"].items():
            rows[k][...] = v.numpy()
        correct[...] = d["correct"].numpy()
        if train_margin is not None:
            train_margin[...] = d["train_margin"].numpy()

    record(0, model)
    result = {"resumed_from_epoch": 0}
    if epochs > 0:
        p = plan(BudgetConfig("epochs", epochs), n, n, recipe.batch_size)
        schedule = plan(BudgetConfig("epochs", cfg.get("schedule_epochs", epochs)), n, n, recipe.batch_size)
        hooks = TrainHooks(on_batch=on_batch, on_epoch_end=on_epoch_end, state=state, restore=restore)
        ck = Checkpointer(checkpoint, interval_s=STAGE_CHECKPOINT_S)
        result = train(model, HardLabels(recipe, seed), data, recipe, p, seed, {}, ck, hooks, schedule.steps, dist=dist)
    for name, arr in rows.items():
        np.save(out / f"{name}.npy", arr)
    np.save(out / "correct.npy", correct)
    if train_margin is not None:
        np.save(out / "train_margin.npy", train_margin)
    return {
        "class_names": list(splits.class_names),
        "epochs": epochs,
        "n": n,
        "workers": 1 if dist is None else dist.world,
        "resumed_from_epoch": result["resumed_from_epoch"],
    }
