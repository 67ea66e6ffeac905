"""Difficulty scores over epochs, from the stored training dynamics (docs/methods.md §4.6, §4.7, §4.9, §4.11).

Forgetting events, AUM, dynamic uncertainty and CAD. The per-epoch statistics they start from (p_y,
the margin, EL2N, GraNd) are computed once, by workers.scores.recording.sample_stats. Numpy only
(no torch); inputs may be float16 (the cached score arrays) and arithmetic runs in float64.
"""

from __future__ import annotations

import numpy as np


def forgetting(correct: np.ndarray, never_learned_first: bool = True) -> np.ndarray:
    """Forgetting events (docs/methods.md §4.6): correct->incorrect transitions between consecutive presentations.

    correct: (K, N) bool, row k = whether sample i was classified correctly at its k-th presentation. Returns (N,)
    float64; samples never correct at any presentation get K + 1, above any possible count (at most K // 2), unless
    `never_learned_first` is False: then they keep their count, 0, as CCS's and D2's score files have it
    (docs/methods.md §4.8).
    """
    correct = np.asarray(correct)
    if correct.ndim != 2:
        raise ValueError(f"correct must be (K, N), got shape {correct.shape}")
    correct = correct.astype(bool)
    k = correct.shape[0]
    events = np.count_nonzero(correct[:-1] & ~correct[1:], axis=0).astype(np.float64)
    if never_learned_first:
        events[~correct.any(axis=0)] = k + 1
    return events


def aum(margins: np.ndarray) -> np.ndarray:
    """AUM as CCS computes it (docs/methods.md §4.7): the sum over epochs of the margin p_y - max_{c != y} p_c
    on probabilities (the margins come from workers.scores.recording.sample_stats). margins: (K, N). Low = hard."""
    m = np.asarray(margins)
    if m.ndim != 2:
        raise ValueError(f"margins must be (K, N), got shape {m.shape}")
    return m.astype(np.float64).sum(axis=0)


def _check_traj(prob_true: np.ndarray, j: int) -> np.ndarray:
    p = np.asarray(prob_true)
    if p.ndim != 2:
        raise ValueError(f"prob_true must be (K, N), got shape {p.shape}")
    if j < 2:
        raise ValueError(f"window length J must be >= 2 (std uses ddof=1), got J={j}")
    if p.shape[0] < j:
        raise ValueError(f"need K >= J epochs, got K={p.shape[0]}, J={j}")
    return p


def _window_std_at(p: np.ndarray, k: int, j: int) -> np.ndarray:
    """U_k = std(p[k:k+J], ddof=1) in float64 (docs/methods.md §4.11 Eq. 1).

    Values are shifted by p[k] before the two-pass std: mathematically identical, exact 0 on constant
    trajectories, and less cancellation.
    """
    win = p[k : k + j].astype(np.float64)
    win -= win[0]
    return win.std(axis=0, ddof=1)


def dyn_unc(prob_true: np.ndarray, J: int = 10, last_window: bool = True) -> np.ndarray:  # noqa: N803
    """Dynamic Uncertainty (docs/methods.md §4.9): mean of U_k over the windows k = 0 .. K-J (all K-J+1), or
    k = 0 .. K-J-1 (K-J windows: the one ending at the final epoch left out, as BAAI-DCAI's get_coreset.py)
    with last_window=False. Each window starts at its own k (not at epoch 0 as in the TDDS code). Keeps
    highest. Does not store U."""
    p = _check_traj(prob_true, J)
    kk, n = p.shape
    windows = kk - J + (1 if last_window else 0)
    if windows < 1:
        raise ValueError(f"no window of J={J} epochs before the last of K={kk} (last_window=False needs K > J)")
    total = np.zeros(n, dtype=np.float64)
    for k in range(windows):
        total += _window_std_at(p, k, J)
    return total / windows


def cad(prob_true: np.ndarray, J: int, W: int, shift: bool = False) -> np.ndarray:  # noqa: N803
    """CAD score (docs/methods.md §4.11 Eq. 1–2) from P[e, i] = p_y(x_i) after epoch e, shape (K, N).

    Literal reading (default): CAD = (1/W) * sum_{k=K-J-W}^{K-J-1} U_k, i.e. mean(U[K-J-W : K-J]); the last window
    (start K-J) and so epoch K-1 are unused, as in andriotis/ca2d. shift=True (reconstruction, docs/methods.md §4.11):
    mean(U[K-J-W+1 : K-J+1]), the W windows ending at the final epoch. Requires K >= J + W.
    """
    p = np.asarray(prob_true)
    if p.ndim != 2:
        raise ValueError(f"prob_true must be (K, N), got shape {p.shape}")
    kk = p.shape[0]
    if W < 1:
        raise ValueError(f"CAD needs W >= 1, got W={W}")
    if kk < J + W:
        raise ValueError(f"CAD needs K >= J + W epochs, got K={kk}, J={J}, W={W}")
    p = _check_traj(p, J)
    first = kk - J - W + (1 if shift else 0)
    total = np.zeros(p.shape[1], dtype=np.float64)
    for k in range(first, first + W):
        total += _window_std_at(p, k, J)
    return total / W
