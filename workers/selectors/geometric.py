"""Selectors on teacher penultimate features (docs/methods.md §4.2, 4.3, 4.8), per class."""

from __future__ import annotations

import math

import numpy as np

from workers.scores import dynamics as dyn
from workers.selectors import SelectContext
from workers.selectors import algorithms as alg
from workers.selectors.scored import aum_scores


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
    """D2-Pruning (§4.8) as its reference runs it on CIFAR: drop the `hard_drop` fraction of the train split with
    the lowest AUM, then per class pass the difficulty (forgetting events, AUM hardness or EL2N) over the kNN graph
    of the remaining candidates' teacher features and pick greedily."""
    f = ctx.features()
    o = ctx.opts
    keep = np.ones(len(ctx.labels), dtype=bool)
    aum = aum_scores(ctx, "train_batches") if o["difficulty"] == "aum" or o["hard_drop"] > 0 else None
    if o["hard_drop"] > 0:
        # One cut over the whole split, like the reference (int(0.4 * N) lowest AUM); ties in a seeded order.
        n_drop = int(math.floor(o["hard_drop"] * len(keep) + 1e-9))
        keep[alg.top_k(aum, n_drop, False, ctx.rng("select.d2.drop"))] = False
    if o["difficulty"] == "el2n":
        s = ctx.dynamics("el2n")[0, -1, :].astype(np.float64)
    elif o["difficulty"] == "forgetting":
        s = dyn.forgetting(ctx.dynamics("correct")[0], never_learned_first=False)
    else:  # AUM as hardness: the largest kept AUM minus each sample's (>= 0 on the candidates; high = hard)
        s = aum[keep].max() - aum

    def pick(idx: np.ndarray, c: int) -> np.ndarray:
        cand = np.flatnonzero(keep[idx])
        if len(cand) < ctx.ipc:  # a class the cut emptied keeps its least hard dropped samples (highest AUM)
            dropped = np.flatnonzero(~keep[idx])
            back = alg.top_k(aum[idx][dropped], ctx.ipc - len(cand), True, ctx.rng("select.d2.refill", c))
            cand = np.sort(np.concatenate([cand, dropped[back]]))
        graph = dict(k=o["k"], gamma_f=o["gamma_f"], gamma_r=o["gamma_r"], two_way=o["graph"] == "two_way")
        return cand[alg.d2(f[idx][cand], s[idx][cand], ctx.ipc, rng=ctx.rng("select.d2", c), **graph)]

    return ctx.per_class(pick)
