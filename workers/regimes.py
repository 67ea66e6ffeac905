"""Label regimes (METHODS.md §1): the same images, different supervision. A regime owns the loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Regime:
    """loss(student, x, ids, y): x is the augmented batch, ids its train-sample ids, y its hard labels."""

    name = "base"
    soft_label_bytes = 0

    def loss(self, student: nn.Module, x: torch.Tensor, ids: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class HardLabels(Regime):
    """`hl`: cross-entropy against one-hot labels; no teacher anywhere (METHODS.md §1.1)."""

    name = "hl"

    def loss(self, student, x, ids, y):
        return F.cross_entropy(student(x), y)


def hl(**_: object) -> Regime:
    return HardLabels()
