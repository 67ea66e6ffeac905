"""The compute budget in its three units (docs/methods.md §2). No torch.

A trial walks epochs over its subset; each epoch is a fresh permutation cut into batches of
`batch` (the last one smaller). Training stops once the budget's images are seen: the last
batch is cut short so that images_seen is exact. `steps` mode runs exactly that many batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from workers.config import BudgetConfig


@dataclass(frozen=True)
class BudgetPlan:
    images_seen: int
    steps: int
    subset_epochs: float
    full_epochs: float
    n_subset: int
    n_full: int

    def to_json(self) -> dict:
        return {
            "images_seen": self.images_seen,
            "steps": self.steps,
            "subset_epochs": self.subset_epochs,
            "full_epochs": self.full_epochs,
        }


def target_images(budget: BudgetConfig, n_subset: int, n_full: int, batch: int) -> int:
    if budget.unit == "epochs":
        return max(1, int(round(budget.value * n_subset)))
    if budget.unit == "full_epochs":
        return max(1, int(round(budget.value * n_full)))
    if budget.unit == "steps":
        steps = int(budget.value)
        per_epoch = math.ceil(n_subset / batch)
        full, rest = divmod(steps, per_epoch)
        return full * n_subset + min(rest * batch, n_subset)
    raise ValueError(f"unknown budget unit {budget.unit!r}")


def epoch_batches(n_subset: int, batch: int, images: int) -> Iterator[tuple[int, list[int]]]:
    """Yield (epoch, [batch sizes]) until `images` are covered; the final batch is truncated."""
    left, epoch = images, 0
    while left > 0:
        sizes = []
        for start in range(0, n_subset, batch):
            if left <= 0:
                break
            size = min(batch, n_subset - start, left)
            sizes.append(size)
            left -= size
        yield epoch, sizes
        epoch += 1


def plan(budget: BudgetConfig, n_subset: int, n_full: int, batch: int, n_data: int | None = None) -> BudgetPlan:
    """`n_subset` sets the budget (IPC x C); `n_data` is what is actually trained on, when it differs
    (the `full` selector trains on all N images with the budget of the IPC it is paired with)."""
    n_data = n_data or n_subset
    images = target_images(budget, n_subset, n_full, batch)
    if budget.unit == "steps":
        images = target_images(budget, n_data, n_full, batch)
    per_epoch = math.ceil(n_data / batch)
    full, rest = divmod(images, n_data)
    steps = full * per_epoch + math.ceil(rest / batch)
    return BudgetPlan(images, steps, images / n_data, images / n_full, n_data, n_full)


def full_data_epochs(images_seen: int, n_full: int) -> int:
    """Images seen as whole full-data epochs, rounded half up (2.5 -> 3; Python's round() would give 2):
    the length of a scoring run that gets a trial's compute (CAD-Prune's K, docs/methods.md §2.4)."""
    if n_full <= 0:
        raise ValueError(f"n_full must be positive, got {n_full}")
    return (2 * images_seen + n_full) // (2 * n_full)
