"""Selectors that rank by a training-dynamics score (docs/methods.md §4.4-4.9); each documents the end it keeps.

Scores come from `dynamics` stages (full-data HL runs of the student architecture, see
workers/scores/recording.py); a higher score is always "harder" except AUM, where low is hard.
"""

from __future__ import annotations

import numpy as np

from workers.scores import dynamics as dyn
from workers.selectors import SelectContext
from workers.selectors import algorithms as alg


def el2n_scores(ctx: SelectContext) -> np.ndarray:
    """EL2N = mean over runs of ||p - e_y|| after `epoch` epochs, clean images (§4.4)."""
    return ctx.dynamics("el2n")[:, ctx.opts["epoch"], :].astype(np.float64).mean(axis=0)


def _top(ctx: SelectContext, scores: np.ndarray, highest: bool, purpose: str) -> np.ndarray:
    return ctx.per_class(lambda idx, c: alg.top_k(scores[idx], ctx.ipc, highest, ctx.rng(purpose, c)))


def el2n(ctx: SelectContext) -> np.ndarray:
    """Keeps the highest EL2N (hardest)."""
    return _top(ctx, el2n_scores(ctx), True, "select.el2n")


def el2n_easy(ctx: SelectContext) -> np.ndarray:
    """Keeps the lowest EL2N (easiest; the paper's Fig. 1 EL2N-easy)."""
    return _top(ctx, el2n_scores(ctx), False, "select.el2n")


def el2n_window(ctx: SelectContext) -> np.ndarray:
    """EL2N-Best window (§4.10): per class, sorted hardest first (ties in a seeded order), IPC consecutive from
    round(offset*(n_c-IPC))."""
    s = el2n_scores(ctx)
    return ctx.per_class(
        lambda idx, c: alg.window(s[idx], ctx.ipc, ctx.opts["offset"], ctx.rng("select.el2n_window", c))
    )


def grand(ctx: SelectContext) -> np.ndarray:
    """GraNd (§4.5): last-layer gradient norm at `epoch` (0 = initialisation), mean over runs; keeps the highest."""
    s = ctx.dynamics("grand")[:, ctx.opts["epoch"], :].astype(np.float64).mean(axis=0)
    return _top(ctx, s, True, "select.grand")


def _forgetting_scores(ctx: SelectContext) -> np.ndarray:
    return dyn.forgetting(ctx.dynamics("correct")[0])


def forgetting(ctx: SelectContext) -> np.ndarray:
    """Keeps the most forgotten (never-learned rank above all, §4.6); ties broken by a seeded permutation."""
    return _top(ctx, _forgetting_scores(ctx), True, "select.forgetting")


def forgetting_easy(ctx: SelectContext) -> np.ndarray:
    """Keeps the least forgotten (Table 1's Forgetting-Easy); many ties at 0, broken by a seeded permutation."""
    return _top(ctx, _forgetting_scores(ctx), False, "select.forgetting")


def aum_scores(ctx: SelectContext, source: str) -> np.ndarray:
    """AUM = sum over the K epochs of p_y - max other p (low = hard, §4.7): from the training mini-batch forward of
    each epoch (`train_batches`, CCS's and D2's code) or from the clean eval-mode pass after each epoch (`eval`)."""
    if source == "train_batches":
        return dyn.aum(ctx.dynamics("train_margin")[0])
    return dyn.aum(ctx.dynamics("margin")[0, 1:, :])


def ccs(ctx: SelectContext) -> np.ndarray:
    """CCS (§4.7) on AUM (low AUM = hard): drop the hardest `hard_drop`, stratify the rest into `strata`
    equal-width bins, allocate the budget, sample in bins."""
    aum = aum_scores(ctx, ctx.opts["aum_source"])
    o = ctx.opts
    return ctx.per_class(
        lambda idx, c: alg.ccs(
            aum[idx], ctx.ipc, ctx.rng("select.ccs", c), hard_drop=o["hard_drop"], strata=o["strata"], hard_high=False
        )
    )


def dyn_unc(ctx: SelectContext) -> np.ndarray:
    """Dynamic uncertainty (§4.9): mean over the J-epoch windows of std(p_y) (K - J of them, or K - J + 1 with
    `last_window`); keeps the highest."""
    p = ctx.dynamics("prob_true")[0, 1:, :]
    return _top(ctx, dyn.dyn_unc(p, ctx.opts["J"], ctx.opts["last_window"]), True, "select.dyn_unc")
