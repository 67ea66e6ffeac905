"""Builders for shared stages (DESIGN.md §5 step 2). Each takes (key, store, tmp_dir) and writes files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from workers.artifacts import ArtifactStore
from workers.config import ArtifactKey, DatasetConfig, Named, _frozen_options
from workers.registry import DATASETS, SELECTORS, stage_deps
from workers.selectors import SelectContext


def load_splits(ds: dict[str, Any]):
    cfg = DatasetConfig(name=ds["name"], root=ds.get("root"), options=_frozen_options(ds.get("options")))
    return DATASETS[cfg.name].load()(root=cfg.root, **cfg.opts)


def build_subset(key: ArtifactKey, store: ArtifactStore, out: Path) -> dict[str, Any]:
    cfg = key.cfg
    splits = load_splits(cfg["dataset"])
    sel = Named.make(cfg["selector"]["name"], cfg["selector"]["options"])
    inputs = stage_deps(key)
    features = [k for k in inputs if k.kind == "features"]
    runs = [k for k in inputs if k.kind == "dynamics"]
    for k in inputs:
        check_classes(k, store, splits.class_names)

    def dynamics(name: str) -> np.ndarray:
        return np.stack([np.load(store.path(k) / f"{name}.npy") for k in runs])

    ctx = SelectContext(labels=splits.train_y, num_classes=splits.num_classes, ipc=cfg["ipc"],
                        seed=cfg["seed"], selector=sel,
                        features=(lambda: np.load(store.path(features[0]) / "features.npy").astype(np.float32))
                        if features else None,
                        dynamics=dynamics if runs else None)
    idx = np.asarray(SELECTORS[sel.name].load()(ctx), dtype=np.int64)
    if SELECTORS[sel.name].meta.get("balanced", True):
        check_balanced(idx, splits.train_y, splits.num_classes, cfg["ipc"], sel.name)
    np.save(out / "indices.npy", idx)
    return {"class_names": list(splits.class_names), "n": int(len(idx))}


def check_classes(key: ArtifactKey, store: ArtifactStore, class_names) -> None:
    """Every artifact records its class list; using one built for another class order is an error (METHODS §3)."""
    got = (store.manifest(key) or {}).get("class_names")
    if got != list(class_names):
        raise RuntimeError(f"artifact {key} was built for classes {got}, the data set has {list(class_names)}")


def check_balanced(idx: np.ndarray, labels: np.ndarray, num_classes: int, ipc: int, who: str) -> None:
    """The selector contract (METHODS.md §4): sorted, unique, exactly IPC per class."""
    if len(np.unique(idx)) != len(idx) or np.any(np.diff(idx) < 0):
        raise AssertionError(f"selector {who} returned unsorted or duplicate indices")
    counts = np.bincount(labels[idx], minlength=num_classes)
    if np.any(counts != ipc):
        raise AssertionError(f"selector {who} returned per-class counts {counts.tolist()}, expected {ipc} each")


def build(key: ArtifactKey, store: ArtifactStore) -> Path:
    """Build one stage (its dependencies first, if missing) and publish it. Idempotent."""
    from workers.registry import STAGES

    for dep in stage_deps(key):
        build(dep, store)
    if store.exists(key):
        return store.path(key)
    fn = STAGES[key.kind].load()
    return store.build(key, lambda tmp: fn(key, store, tmp))


def load_subset(key: ArtifactKey, store: ArtifactStore) -> np.ndarray:
    return np.load(store.path(key) / "indices.npy")
