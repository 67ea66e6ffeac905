"""Data sets as splits: uint8 images (N, C, H, W), int64 labels, class names. No torch here.

A small data set (digits) holds its images in memory as numpy arrays; a cached one (imagefolder) holds them as
`workers.data.shards.ShardedImages`, read on demand from the cache in the artifact store (docs/design.md §4).
Both index the same way (`x[idx]` -> numpy uint8), so consumers stream either in batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.catalogue import DATASETS
from workers.config import DatasetConfig


class DataError(Exception):
    """A problem with the data a user pointed us at (missing path, class mismatch); the message says the fix."""


@dataclass(frozen=True)
class Splits:
    """train / minival / test. Sample ids are row indices into `train_x`; minival is held out of train.

    `input_side`: the model's input side when the stored images are larger (training views and evaluation cut
    it from them); None: the stored side."""

    train_x: Any  # np.ndarray or ShardedImages
    train_y: np.ndarray
    minival_x: Any
    minival_y: np.ndarray
    test_x: Any
    test_y: np.ndarray
    class_names: tuple[str, ...]
    input_side: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The stored train images' (C, H, W)."""
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The model's input (C, side, side)."""
        c, h, w = self.image_shape
        return (c, self.input_side, self.input_side) if self.input_side else (c, h, w)


def stratified_split(
    labels: np.ndarray, num_classes: int, test_fraction: float, minival_per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: shuffle with a fixed generator, take test first, then minival, the rest is train."""
    rng = np.random.default_rng(seed)
    train, minival, test = [], [], []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(test_fraction * len(idx)))
        if n_test + minival_per_class >= len(idx):
            raise DataError(
                f"class {c} has {len(idx)} images: too few for test_fraction={test_fraction} "
                f"and minival_per_class={minival_per_class}; lower them"
            )
        test.append(idx[:n_test])
        minival.append(idx[n_test : n_test + minival_per_class])
        train.append(idx[n_test + minival_per_class :])
    return tuple(np.sort(np.concatenate(part)) for part in (train, minival, test))  # type: ignore[return-value]


def load_splits(dataset: DatasetConfig | Mapping[str, Any], store=None) -> Splits:
    """The splits of a data set, from its config (or the config's JSON form, as stored in artifact keys).
    A cached data set reads (and if needed builds) its cache in `store`, a workers.artifacts.ArtifactStore."""
    if not isinstance(dataset, DatasetConfig):
        dataset = DatasetConfig.from_json(dataset)
    entry = DATASETS[dataset.name]
    if entry.cached:
        return entry.load()(root=dataset.root, store=store, **dataset.opts)
    return entry.load()(root=dataset.root, **dataset.opts)
