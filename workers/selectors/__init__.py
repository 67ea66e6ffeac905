"""Selectors: functions (SelectContext) -> sorted train indices, IPC per class. Declared in workers.catalogue."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.config import Named


class SelectionError(Exception):
    """A selection that cannot be made as asked (too few candidates in a class, ...)."""


@dataclass
class SelectContext:
    """What a selector may look at: train labels and, through loaders, shared artifacts. Never the test split."""

    labels: np.ndarray
    num_classes: int
    ipc: int
    seed: int
    selector: Named
    features: Callable[[], np.ndarray] | None = None  # teacher penultimate features, N x D
    dynamics: Callable[[str], np.ndarray] | None = None  # name -> runs x (epochs+1) x N (or runs x epochs x N)

    @property
    def opts(self) -> dict[str, Any]:
        return self.selector.opts

    def per_class(self, pick: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
        """Run pick(candidate train indices of class c, c) -> positions within them; return sorted indices."""
        out = []
        for c in range(self.num_classes):
            idx = self.class_indices(c)
            pos = np.asarray(pick(idx, c), dtype=np.int64)
            out.append(idx[pos])
        return np.sort(np.concatenate(out))

    def class_indices(self, c: int) -> np.ndarray:
        idx = np.flatnonzero(self.labels == c)
        if len(idx) < self.ipc:
            raise SelectionError(f"class {c} has {len(idx)} training images, fewer than ipc={self.ipc}")
        return idx

    def rng(self, purpose: str, *extra: int) -> np.random.Generator:
        return derived_rng(self.seed, purpose, *extra)


def derived_rng(seed: int, purpose: str, *extra: int) -> np.random.Generator:
    """A generator from (seed, purpose, extra...): docs/design.md §8, never global state or the clock."""
    import zlib

    return np.random.default_rng([seed, zlib.crc32(purpose.encode()), *extra])
