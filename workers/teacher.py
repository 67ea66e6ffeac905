"""Teachers (docs/methods.md §3): trained on the full train split or loaded from a local weights file.

A teacher is a shared artifact keyed by (data set, teacher config). At build time its minival
top-1 is measured and the build fails below `min_top1_factor` x chance (a wrong class order or a
wrong file costs 10-40 points, LINs-lab/RDED issues #3-#10). It is always used frozen, eval mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workers import models
from workers.artifacts import ArtifactStore
from workers.budget import plan
from workers.config import ArtifactKey, BudgetConfig, TeacherConfig, TrainConfig
from workers.data import DataError, load_splits
from workers.regimes import HardLabels
from workers.train import Checkpointer, Tensors, channel_stats, evaluate, train


def full_train_tensors(splits, device):
    mean, std = channel_stats(splits.train_x, device)
    return Tensors.of(splits.train_x, splits.train_y, mean, std), Tensors.of(
        splits.minival_x, splits.minival_y, mean, std
    )


def build_teacher(key: ArtifactKey, store: ArtifactStore, out: Path) -> dict[str, Any]:
    cfg = key.cfg
    tcfg = TeacherConfig.from_json(cfg["teacher"])
    splits = load_splits(cfg["dataset"])
    device = models.pick_device()
    model = models.build(tcfg.arch.name, tcfg.arch.opts, splits.num_classes, splits.image_shape, tcfg.seed).to(device)
    train_data, minival = full_train_tensors(splits, device)
    if tcfg.weights:
        load_weights(model, tcfg.weights, splits.num_classes)
    else:
        recipe = TrainConfig(
            optimizer=tcfg.optimizer,
            lr=tcfg.lr,
            weight_decay=tcfg.weight_decay,
            batch_size=tcfg.batch_size,
            augment=tcfg.augment,
            schedule="cosine",
            eval_points=1,
        )
        p = plan(BudgetConfig("epochs", tcfg.epochs), len(splits.train_y), len(splits.train_y), tcfg.batch_size)
        train(model, HardLabels(recipe, tcfg.seed), train_data, recipe, p, tcfg.seed, {}, Checkpointer(None))
    acc = evaluate(model, minival)["top1"]
    floor = tcfg.min_top1_factor / splits.num_classes
    if acc < floor:
        raise DataError(
            f"teacher {tcfg.arch.name} reaches {acc:.3f} top-1 on minival, below the floor {floor:.3f} "
            f"({tcfg.min_top1_factor}x chance): check the weights file, its class order, or train longer"
        )
    torch.save(model.state_dict(), out / "weights.pt")
    return {"class_names": list(splits.class_names), "minival_top1": acc}


def load_weights(model: nn.Module, path: str, num_classes: int) -> None:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"teacher.weights: {path!r} does not exist; give a local state_dict file (.pt/.pth)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickled whole model, a corrupt file, ...: weights_only refuses them
        raise DataError(
            f"teacher.weights: {path!r} is not a readable state_dict (torch.load with weights_only=True "
            f"failed: {str(err).splitlines()[0]}); save it with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DataError(f"teacher.weights: {path!r} holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        linear = [v.shape[0] for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2][-1:]
        if linear and linear[0] != num_classes:
            why = f"its last layer has {linear[0]} outputs, the data set has {num_classes} classes"
        else:
            why = "its parameter names or shapes do not match the teacher's arch and options"
        raise DataError(
            f"teacher.weights: {path!r} does not fit the teacher ({why}): {str(err).splitlines()[0]}"
        ) from None


def load_teacher(key: ArtifactKey, store: ArtifactStore, device: str) -> nn.Module:
    """The built teacher artifact `key`, frozen in eval mode on `device`; its class order is checked."""
    cfg = key.cfg
    tcfg = TeacherConfig.from_json(cfg["teacher"])
    splits = load_splits(cfg["dataset"])
    store.check_classes(key, splits.class_names)
    model = models.build(tcfg.arch.name, tcfg.arch.opts, splits.num_classes, splits.image_shape, tcfg.seed)
    model.load_state_dict(torch.load(store.path(key) / "weights.pt", map_location="cpu", weights_only=True))
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model has no linear head to take penultimate features from")
    return linears[-1]


@torch.no_grad()
def logits_and_features(model: nn.Module, data, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean (un-augmented) forward in eval mode: logits and the input of the last linear layer."""
    feats: list[torch.Tensor] = []
    handle = last_linear(model).register_forward_hook(lambda m, inp, out: feats.append(inp[0].flatten(1)))
    was = model.training
    model.eval()
    try:
        logits = []
        for s in range(0, len(data.y), chunk):
            pos = torch.arange(s, min(len(data.y), s + chunk), device=data.x.device)
            logits.append(model(data.float_batch(pos)))
    finally:
        handle.remove()
        model.train(was)
    return torch.cat(logits), torch.cat(feats)


def build_features(key: ArtifactKey, store: ArtifactStore, out: Path) -> dict[str, Any]:
    """Penultimate teacher features of every train image (float16, N x D): herding, k-center, D2."""
    tkey = ArtifactKey.make("teacher", key.cfg["teacher"])
    device = models.pick_device()
    teacher = load_teacher(tkey, store, device)
    splits = load_splits(tkey.cfg["dataset"])
    data, _ = full_train_tensors(splits, device)
    _, feats = logits_and_features(teacher, data)
    np.save(out / "features.npy", feats.cpu().numpy().astype(np.float16))
    return {"class_names": list(splits.class_names), "shape": list(feats.shape)}
