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
from workers.regimes import HardLabels
from workers.seeding import derive_seed
from workers.teacher import full_train_tensors, logits_and_features
from workers.train import Checkpointer, TrainHooks, train

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


def build_dynamics(key: ArtifactKey, store: ArtifactStore, out: Path) -> dict[str, Any]:
    cfg = key.cfg
    splits = load_splits(cfg["dataset"])
    device = models.pick_device()
    data, _ = full_train_tensors(splits, device)
    n, epochs = len(splits.train_y), cfg["epochs"]
    seed = derive_seed(cfg["run"], "dynamics", *([cfg["seed"]] if "seed" in cfg else []))
    arch = Named.make(cfg["arch"]["name"], cfg["arch"]["options"])
    model = models.build(arch.name, arch.opts, splits.num_classes, splits.image_shape, seed).to(device)
    recipe = TrainConfig(**cfg["recipe"], eval_points=1)

    rows = {k: np.zeros((epochs + 1, n), np.float16) for k in STATS}
    correct = np.zeros((epochs, n), bool)
    train_margin = np.zeros((epochs, n), np.float16) if "train_margin" in cfg.get("records", "") else None
    y = data.y

    def record(row: int, m) -> None:
        logits, feats = logits_and_features(m, data)
        for name, v in sample_stats(logits, y, feats).items():
            rows[name][row] = v.cpu().numpy()

    def on_batch(pos, logits, epoch):
        correct[epoch, pos.cpu().numpy()] = (logits.argmax(1) == y[pos]).cpu().numpy()
        if train_margin is not None:
            train_margin[epoch, pos.cpu().numpy()] = sample_stats(logits, y[pos], None)["margin"].cpu().numpy()

    record(0, model)
    if epochs > 0:
        p = plan(BudgetConfig("epochs", epochs), n, n, recipe.batch_size)
        schedule = plan(BudgetConfig("epochs", cfg.get("schedule_epochs", epochs)), n, n, recipe.batch_size)
        hooks = TrainHooks(on_batch=on_batch, on_epoch_end=lambda e, m: record(e + 1, m))
        train(model, HardLabels(recipe, seed), data, recipe, p, seed, {}, Checkpointer(None), hooks, schedule.steps)
    for name, arr in rows.items():
        np.save(out / f"{name}.npy", arr)
    np.save(out / "correct.npy", correct)
    if train_margin is not None:
        np.save(out / "train_margin.npy", train_margin)
    return {"class_names": list(splits.class_names), "epochs": epochs, "n": n}
