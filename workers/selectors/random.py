"""`random`: IPC images per class uniformly without replacement (docs/methods.md §4.1)."""

from __future__ import annotations

import numpy as np

from workers.selectors import SelectContext


def select(ctx: SelectContext) -> np.ndarray:
    picks = []
    for c in range(ctx.num_classes):
        idx = ctx.class_indices(c)
        # One generator per (seed, class): a class's draw never depends on other classes.
        rng = ctx.rng("select.random", c)
        picks.append(rng.choice(idx, size=ctx.ipc, replace=False))
    return np.sort(np.concatenate(picks))
