"""Selectors on teacher penultimate features (docs/methods.md §4.2, 4.3, 4.8), per class."""

from __future__ import annotations

import numpy as np

from workers.selectors import SelectContext
from workers.selectors import algorithms as alg


def herding(ctx: SelectContext) -> np.ndarray:
    """Welling herding, argmin convention: keeps prototypical points whose running mean tracks the class mean."""
    f = ctx.features()
    return ctx.per_class(lambda idx, c: alg.herding(f[idx], ctx.ipc))


def kcenter(ctx: SelectContext) -> np.ndarray:
    """Greedy farthest point: keeps maximum coverage (in practice outliers)."""
    f = ctx.features()
    return ctx.per_class(
        lambda idx, c: alg.kcenter(f[idx], ctx.ipc, ctx.rng("select.kcenter", c), first=ctx.opts["first"])
    )


def kmeans_medoid(ctx: SelectContext) -> np.ndarray:
    """Per class k-means with k = IPC, then the real sample nearest each centroid (reconstruction, §4.3)."""
    f = ctx.features()
    return ctx.per_class(
        lambda idx, c: alg.kmeans_medoid(f[idx], ctx.ipc, ctx.rng("select.kmeans", c), iters=ctx.opts["iters"])
    )


def d2(ctx: SelectContext) -> np.ndarray:
    """D2-Pruning per class: difficulty = EL2N at the end of one run, message passing on a kNN graph."""
    f = ctx.features()
    s = ctx.dynamics("el2n")[0, -1, :].astype(np.float64)
    o = ctx.opts
    return ctx.per_class(
        lambda idx, c: alg.d2(
            f[idx], s[idx], ctx.ipc, k=o["k"], gamma_f=o["gamma_f"], gamma_r=o["gamma_r"], rng=ctx.rng("select.d2", c)
        )
    )
