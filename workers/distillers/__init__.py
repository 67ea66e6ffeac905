"""Distillers: produce IPC synthetic images per class (uint8, never JPEG) instead of choosing real ones.

A distiller is a function (DistillContext) -> (images uint8 (n, C, H, W), labels int64 (n,)), declared
in workers.catalogue like a selector. The stage that calls it stores images.npy + labels.npy; the
trial then trains on them under any label regime exactly as it trains on a coreset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.config import Named


@dataclass
class DistillContext:
    train_x: np.ndarray  # uint8 (N, C, H, W): the train split (minival and test excluded)
    train_y: np.ndarray  # int64 (N,)
    num_classes: int
    ipc: int
    seed: int
    method: Named
    mean: np.ndarray  # float32 (C,): per-channel mean of train_x / 255 (the normalisation)
    std: np.ndarray  # float32 (C,)
    device: str
    teacher: Callable[[], Any] | None = None  # -> frozen eval-mode torch model (the observer)
    cad_scores: Callable[[], np.ndarray] | None = None  # -> (N,) CAD score per train image (ca2d)

    @property
    def opts(self) -> dict[str, Any]:
        return self.method.opts
