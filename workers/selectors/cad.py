"""`cad_prune` (paper §5, Eq. 1-2; docs/methods.md §4.11): keep the highest compute-aware difficulty per class."""

from __future__ import annotations

import numpy as np

from workers.catalogue import cad_window
from workers.scores import dynamics as dyn
from workers.selectors import SelectContext
from workers.selectors import algorithms as alg


def cad_scores(prob_true_rows: np.ndarray, opts: dict) -> np.ndarray:
    """CAD from a dynamics run's p_y rows (row 0 = init, row e = after epoch e): P[e] = row e + 1."""
    P = prob_true_rows[1:]  # P[e], e = 0..K-1: after each of the K epochs
    J, W = cad_window(opts, len(P))
    return dyn.cad(P, J, W, shift=opts["shift"])


def cad_prune(ctx: SelectContext) -> np.ndarray:
    """Per class, top-IPC by highest CAD (andriotis/ca2d's assumption of the direction, docs/methods.md §4.11)."""
    s = cad_scores(ctx.dynamics("prob_true")[0], ctx.opts)
    return ctx.per_class(lambda idx, c: alg.top_k(s[idx], ctx.ipc, True, ctx.rng("select.cad", c)))
