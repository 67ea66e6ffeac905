"""Data sets as numpy splits: uint8 images (N, C, H, W), int64 labels, class names. No torch here."""

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
    """train / minival / test. Sample ids are row indices into `train_x`; minival is held out of train."""

    train_x: np.ndarray
    train_y: np.ndarray
    minival_x: np.ndarray
    minival_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]


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


def load_splits(dataset: DatasetConfig | Mapping[str, Any]) -> Splits:
    """The splits of a data set, from its config (or the config's JSON form, as stored in artifact keys)."""
    if not isinstance(dataset, DatasetConfig):
        dataset = DatasetConfig.from_json(dataset)
    return DATASETS[dataset.name].load()(root=dataset.root, **dataset.opts)
