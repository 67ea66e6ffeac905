"""Stored SL+KD labels on disk (docs/methods.md §9): the `kd_epoch` and `kd_labels` stages and their reader.

A `kd_epoch` artifact holds one epoch's teacher logits of every view of a subset (workers.regimes.KDViews, keyed
by (seed, epoch, train-split id), never by batch position): `logits.npy` (n x C fp16), or with top-k
`values.npy` (n x k fp16) and `classes.npy` (n x k int16). Each epoch is its own stage, so generation spreads
over GPUs and resumes per epoch. A `kd_labels` artifact names the epochs of a trial's plan and their bytes.
Training reads one epoch at a time (`StoredLabels`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers import models
from workers.artifacts import ArtifactStore
from workers.config import ArtifactKey, canonical_json
from workers.data import load_splits
from workers.data.shards import NpyWriter
from workers.graph import kd_epoch_keys
from workers.regimes import KDViews, view_logits
from workers.stages import load_training_set
from workers.teacher import load_teacher
from workers.train import Tensors, channel_stats, choose_placement

_CONTEXT: dict[str, tuple] = {}  # the last (labels config -> teacher, data, classes) of this process


def _context(labels: dict, store: ArtifactStore) -> tuple[torch.nn.Module, Tensors, list[str]]:
    """The teacher and the subset on the device, shared by the epochs of one label set built in this process."""
    memo = f"{store.st.uri}|{canonical_json(labels)}"
    if memo not in _CONTEXT:
        _CONTEXT.clear()  # one label set at a time: its subset may be large
        device = models.pick_device()
        skey, tkey = ArtifactKey.make("subset", labels["subset"]), ArtifactKey.make("teacher", labels["teacher"])
        splits = load_splits(labels["subset"]["dataset"], store)
        store.check_classes(skey, splits.class_names)
        x, y, ids = load_training_set(skey, store, splits)
        mean, std = channel_stats(splits.train_x, device)
        data = Tensors.of(
            x, y, mean, std, ids=ids, side=splits.input_side, placement=choose_placement(int(x.nbytes), device)
        )
        _CONTEXT[memo] = (load_teacher(tkey, store, device), data, list(splits.class_names))
    return _CONTEXT[memo]


def write_epoch(out: Path, teacher: torch.nn.Module, views: KDViews, data, epoch: int, topk: int) -> int:
    """Write one epoch's labels into folder `out` (streamed, a chunk of views at a time); returns their bytes."""
    n = len(data.y)
    writers: list[NpyWriter] = []
    for part in view_logits(teacher, views, data, epoch, topk):
        if not writers:
            names = ("logits",) if len(part) == 1 else ("values", "classes")
            writers = [NpyWriter(out / f"{nm}.npy", (n, t.shape[1]), t.numpy().dtype) for nm, t in zip(names, part)]
        for w, t in zip(writers, part):
            w.write(t.numpy())
    for w in writers:
        w.close()
    return sum(int(np.prod(w.shape)) * w.dtype.itemsize for w in writers)


def build_kd_epoch(key: ArtifactKey, store: ArtifactStore, out: Path) -> dict[str, Any]:
    labels, epoch = key.cfg["labels"], int(key.cfg["epoch"])
    teacher, data, classes = _context(labels, store)
    views = KDViews(len(data.y), data.input_side, labels["seed"], labels["min_scale"], data.device, ids=data.ids)
    nbytes = write_epoch(out, teacher, views, data, epoch, labels["topk"])
    return {"class_names": classes, "epoch": epoch, "n": len(data.y), "topk": labels["topk"], "bytes": nbytes}


def build_kd_labels(key: ArtifactKey, store: ArtifactStore, out: Path) -> dict[str, Any]:
    """The set: its epochs (built first, as its dependencies) and their total bytes."""
    manifests = [store.manifest(k) for k in kd_epoch_keys(key)]
    classes = manifests[0]["class_names"]
    if any(m["class_names"] != classes for m in manifests):
        raise ValueError(f"the epochs of {key} were built for different classes")
    return {
        "class_names": classes,
        "epochs": len(manifests),
        "n": manifests[0]["n"],
        "topk": manifests[0]["topk"],
        "bytes": int(sum(m["bytes"] for m in manifests)),
    }


class StoredLabels:
    """Reads stored SL+KD labels one epoch at a time: `epoch(e)` -> (fp16 logits,) or (fp16 values, int16 ids) as
    CPU tensors from the folder `folder(e)`; only the last epoch read is held. `of(key, store)` reads a
    `kd_labels` artifact, checking each epoch's files against their manifest when first read (a corrupted one is
    rebuilt)."""

    def __init__(self, folder: Callable[[int], Path], epochs: int, n: int, nbytes: int) -> None:
        self.folder, self.epochs, self.n, self.bytes = folder, int(epochs), int(n), int(nbytes)
        self._epoch: int | None = None
        self._tensors: tuple[torch.Tensor, ...] = ()

    @classmethod
    def of(cls, key: ArtifactKey, store: ArtifactStore) -> StoredLabels:
        m = store.manifest(key)
        if m is None:
            raise FileNotFoundError(f"stored SL+KD labels {key} are not built (workers.stages.build builds them)")
        keys = kd_epoch_keys(key)

        def folder(e: int) -> Path:
            if not store.ready(keys[e]):
                store.build(keys[e], lambda tmp: build_kd_epoch(keys[e], store, tmp))
            return store.path(keys[e])

        return cls(folder, m["epochs"], m["n"], m["bytes"])

    def epoch(self, e: int) -> tuple[torch.Tensor, ...]:
        if self._epoch != e:
            self._tensors = ()  # release the previous epoch before reading the next
            folder = Path(self.folder(e))
            names = ("logits",) if (folder / "logits.npy").exists() else ("values", "classes")
            self._tensors = tuple(torch.from_numpy(np.load(folder / f"{nm}.npy")) for nm in names)
            self._epoch = e
        return self._tensors
