"""Shared stages: build one (its dependencies first), and the `subset` builder (a selection or a distiller).

Every builder takes (key, store, tmp_dir), writes its files into tmp_dir and returns extra manifest
fields; the store publishes the folder atomically (docs/design.md §4). This module itself is numpy only,
so a process that builds `shard` and `cache` stages or selects from stored scores never loads torch;
the distiller path imports the teacher code when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from workers.artifacts import ArtifactStore
from workers.catalogue import SELECTORS, STAGES
from workers.config import ArtifactKey, Named
from workers.data import load_splits
from workers.data.shards import ShardedImages
from workers.distillers import DistillContext
from workers.graph import stage_deps
from workers.selectors import SelectContext
from workers.selectors.cad import cad_scores


def build_subset(key: ArtifactKey, store: ArtifactStore, out: Path) -> dict[str, Any]:
    cfg = key.cfg
    splits = load_splits(cfg["dataset"], store)
    sel = Named.make(cfg["selector"]["name"], cfg["selector"]["options"])
    inputs = stage_deps(key)
    features = [k for k in inputs if k.kind == "features"]
    runs = [k for k in inputs if k.kind == "dynamics"]
    for k in inputs:
        store.check_classes(k, splits.class_names)

    def dynamics(name: str) -> np.ndarray:
        return np.stack([np.load(store.path(k) / f"{name}.npy") for k in runs])

    ctx = SelectContext(
        labels=splits.train_y,
        num_classes=splits.num_classes,
        ipc=cfg["ipc"],
        seed=cfg["seed"],
        selector=sel,
        features=(lambda: np.load(store.path(features[0]) / "features.npy").astype(np.float32)) if features else None,
        dynamics=dynamics if runs else None,
    )
    entry = SELECTORS[sel.name]
    if entry.distiller:
        return _distill(key, store, out, splits, sel, inputs)
    idx = np.asarray(entry.load()(ctx), dtype=np.int64)
    if entry.balanced:
        check_balanced(idx, splits.train_y, splits.num_classes, cfg["ipc"], sel.name)
    np.save(out / "indices.npy", idx)
    return {"class_names": list(splits.class_names), "n": int(len(idx))}


def _distill(key: ArtifactKey, store: ArtifactStore, out: Path, splits, sel: Named, inputs) -> dict[str, Any]:
    """Synthetic training images: images.npy (uint8) + labels.npy, exactly IPC per class, at the model's input
    side (a distiller reads the centre crops of images cached larger)."""
    from workers.models import pick_device
    from workers.teacher import load_teacher

    cfg = key.cfg
    device = pick_device()
    tkey = next(k for k in inputs if k.kind == "teacher")
    runs = [k for k in inputs if k.kind == "dynamics"]
    train_x = splits.train_x
    if isinstance(train_x, ShardedImages):
        mean, std = (v.astype(np.float32) for v in train_x.channel_stats())
        train_x = train_x.cropped(splits.input_shape[-1])
    else:
        x = train_x.astype(np.float32) / 255.0
        mean, std = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))
    ctx = DistillContext(
        train_x=train_x,
        train_y=splits.train_y,
        num_classes=splits.num_classes,
        ipc=cfg["ipc"],
        seed=cfg["seed"],
        method=sel,
        mean=mean,
        std=np.maximum(std, 1e-3),
        device=device,
        teacher=lambda: load_teacher(tkey, store, device),
        cad_scores=(lambda: cad_scores(np.load(store.path(runs[0]) / "prob_true.npy"), sel.opts)) if runs else None,
    )
    images, labels = SELECTORS[sel.name].load()(ctx)
    images, labels = np.asarray(images), np.asarray(labels, dtype=np.int64)
    if images.dtype != np.uint8 or images.shape[1:] != tuple(splits.input_shape):
        raise AssertionError(
            f"distiller {sel.name} returned {images.dtype} {images.shape}, expected uint8 "
            f"(n, {', '.join(map(str, splits.input_shape))})"
        )
    counts = np.bincount(labels, minlength=splits.num_classes)
    if len(images) != len(labels) or np.any(counts != cfg["ipc"]):
        raise AssertionError(f"distiller {sel.name} returned per-class counts {counts.tolist()}, expected {cfg['ipc']}")
    np.save(out / "images.npy", images)
    np.save(out / "labels.npy", labels)
    return {"class_names": list(splits.class_names), "n": int(len(labels)), "synthetic": True}


def check_balanced(idx: np.ndarray, labels: np.ndarray, num_classes: int, ipc: int, who: str) -> None:
    """The selector contract (docs/methods.md §4): sorted, unique, exactly IPC per class."""
    if len(np.unique(idx)) != len(idx) or np.any(np.diff(idx) < 0):
        raise AssertionError(f"selector {who} returned unsorted or duplicate indices")
    counts = np.bincount(labels[idx], minlength=num_classes)
    if np.any(counts != ipc):
        raise AssertionError(f"selector {who} returned per-class counts {counts.tolist()}, expected {ipc} each")


def build(key: ArtifactKey, store: ArtifactStore) -> Path:
    """Build one stage (its dependencies first, if missing) and publish it. Idempotent.

    An artifact that exists is checked against its manifest (once per process) and rebuilt when a
    file is missing or its checksum differs, so a trial never reads a corrupted artifact. Its
    dependencies are only visited when it has to be built (a subset's score runs are not re-read).
    """
    if store.ready(key):
        return store.path(key)
    for dep in stage_deps(key):
        build(dep, store)
    return store.build(key, lambda tmp: STAGES[key.kind].load()(key, store, tmp))


def load_training_set(key: ArtifactKey, store: ArtifactStore, splits) -> tuple[Any, np.ndarray, np.ndarray | None]:
    """(images, labels, train indices or None for synthetic images) of a subset artifact. Real images of a
    cached data set come as a lazy view of the shards (nothing read yet: the trial decides where they go)."""
    folder = store.path(key)
    if (folder / "images.npy").exists():
        return np.load(folder / "images.npy"), np.load(folder / "labels.npy"), None
    idx = np.load(folder / "indices.npy")
    if isinstance(splits.train_x, ShardedImages):
        return splits.train_x.take(idx), splits.train_y[idx], idx
    return splits.train_x[idx], splits.train_y[idx], idx
