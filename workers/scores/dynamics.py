"""Per-sample difficulty scores from stored training dynamics (METHODS.md §4.4–4.7, §4.9, §4.11).

EL2N, GraNd (last layer), forgetting, AUM, Dynamic Uncertainty and CAD.

Numpy only (no torch). Inputs may be float16 (the cached score arrays, METHODS.md §4); all arithmetic runs in
float64 on row chunks so an ImageNet-sized (N, C) array is never copied whole at higher precision.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

# Elements (rows * classes) converted to float64 at once; bounds temporary memory at ~32 MiB per array.
_CHUNK_ELEMS = 1 << 22


def _row_chunks(n: int, width: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMS // max(1, width))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _as_runs(probs: np.ndarray, name: str = "probs") -> np.ndarray:
    """(N, C) -> (1, N, C); (M, N, C) unchanged."""
    probs = np.asarray(probs)
    if probs.ndim == 2:
        return probs[None]
    if probs.ndim != 3:
        raise ValueError(f"{name} must be (N, C) or (M, N, C), got shape {probs.shape}")
    return probs


def _check_labels(labels: np.ndarray, n: int, c: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"labels must lie in [0, {c}), got range [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64, copy=False)


def _error_norm_one_run(p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """||p_i - e_{y_i}||_2 for one run; p (N, C) any float dtype."""
    n, _ = p.shape
    out = np.empty(n, dtype=np.float64)
    for sl in _row_chunks(n, p.shape[1]):
        q = p[sl].astype(np.float64)
        q[np.arange(q.shape[0]), labels[sl]] -= 1.0
        out[sl] = np.sqrt(np.einsum("ij,ij->i", q, q))
    return out


def el2n(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """EL2N (METHODS.md §4.4): mean over runs of ||softmax - e_y||_2.

    probs: (M, N, C) softmax outputs of M runs, or (N, C) for one run. labels: (N,). Returns (N,) float64 in
    [0, sqrt(2)] when every row of probs sums to 1.
    """
    runs = _as_runs(probs)
    labels = _check_labels(labels, runs.shape[1], runs.shape[2])
    total = np.zeros(runs.shape[1], dtype=np.float64)
    for m in range(runs.shape[0]):
        total += _error_norm_one_run(runs[m], labels)
    return total / runs.shape[0]


def grand_last_layer(probs: np.ndarray, labels: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """GraNd restricted to a linear last layer with bias (METHODS.md §4.5), averaged over runs.

    For logits z = W·phi + b and cross-entropy, dL/dz = p - e_y, dL/dW = (p - e_y) phi^T, dL/db = p - e_y, so the
    per-sample gradient norm is ||p - e_y||_2 * sqrt(||phi||^2 + 1). Computed per sample, so it does not depend on
    batch size or order (DeepCore's mean-reduced batch gradients do; METHODS.md §4.5).

    probs: (M, N, C) or (N, C); feats: (M, N, D) or (N, D), the penultimate features fed to the head in each run.
    """
    runs = _as_runs(probs)
    fruns = _as_runs(feats, "feats")
    m, n, c = runs.shape
    if fruns.shape[:2] != (m, n):
        raise ValueError(f"feats shape {np.shape(feats)} does not match probs shape {np.shape(probs)}")
    labels = _check_labels(labels, n, c)
    total = np.zeros(n, dtype=np.float64)
    for r in range(m):
        err = _error_norm_one_run(runs[r], labels)
        sq = np.empty(n, dtype=np.float64)
        for sl in _row_chunks(n, fruns.shape[2]):
            f = fruns[r, sl].astype(np.float64)
            sq[sl] = np.einsum("ij,ij->i", f, f)
        total += err * np.sqrt(sq + 1.0)
    return total / m


def forgetting(correct: np.ndarray) -> np.ndarray:
    """Forgetting events (METHODS.md §4.6): correct->incorrect transitions between consecutive presentations.

    correct: (K, N) bool, row k = whether sample i was classified correctly at its k-th presentation. Returns (N,)
    float64; samples never correct at any presentation get K + 1, above any possible count (at most K // 2).
    """
    correct = np.asarray(correct)
    if correct.ndim != 2:
        raise ValueError(f"correct must be (K, N), got shape {correct.shape}")
    correct = correct.astype(bool)
    k = correct.shape[0]
    events = np.count_nonzero(correct[:-1] & ~correct[1:], axis=0).astype(np.float64)
    never = ~correct.any(axis=0)
    events[never] = k + 1
    return events


def aum(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUM as CCS computes it (METHODS.md §4.7): sum over epochs of p_y - max_{c != y} p_c, on probabilities.

    probs: (K, N, C) (or (N, C) for one epoch). Low AUM = hard. Needs C >= 2.
    """
    runs = _as_runs(probs)
    kk, n, c = runs.shape
    if c < 2:
        raise ValueError("aum needs at least 2 classes")
    labels = _check_labels(labels, n, c)
    total = np.zeros(n, dtype=np.float64)
    for e in range(kk):
        for sl in _row_chunks(n, c):
            q = runs[e, sl].astype(np.float64)
            rows = np.arange(q.shape[0])
            py = q[rows, labels[sl]].copy()
            q[rows, labels[sl]] = -np.inf
            total[sl] += py - q.max(axis=1)
    return total


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
    """U_k = std(p[k:k+J], ddof=1) in float64 (METHODS.md §4.11 Eq. 1).

    Values are shifted by p[k] before the two-pass std: mathematically identical, exact 0 on constant
    trajectories, and less cancellation.
    """
    win = p[k : k + j].astype(np.float64)
    win -= win[0]
    return win.std(axis=0, ddof=1)


def window_std(prob_true: np.ndarray, J: int) -> np.ndarray:  # noqa: N803 (paper notation)
    """All sliding-window stds (METHODS.md §4.9, §4.11 Eq. 1): (K, N) -> U (K-J+1, N), U[k] = std(P[k:k+J], ddof=1)."""
    p = _check_traj(prob_true, J)
    kk, n = p.shape
    out = np.empty((kk - J + 1, n), dtype=np.float64)
    for k in range(kk - J + 1):
        out[k] = _window_std_at(p, k, J)
    return out


def dyn_unc(prob_true: np.ndarray, J: int = 10) -> np.ndarray:  # noqa: N803
    """Dynamic Uncertainty (METHODS.md §4.9): mean of U_k over ALL K-J+1 windows (each window starts at its own k,
    not at epoch 0 as in the TDDS code). Keeps highest. Does not store U."""
    p = _check_traj(prob_true, J)
    kk, n = p.shape
    total = np.zeros(n, dtype=np.float64)
    for k in range(kk - J + 1):
        total += _window_std_at(p, k, J)
    return total / (kk - J + 1)


def cad(prob_true: np.ndarray, J: int, W: int, shift: bool = False) -> np.ndarray:  # noqa: N803
    """CAD score (METHODS.md §4.11 Eq. 1–2) from P[e, i] = p_y(x_i) after epoch e, shape (K, N).

    Literal reading (default): CAD = (1/W) * sum_{k=K-J-W}^{K-J-1} U_k, i.e. mean(U[K-J-W : K-J]); the last window
    (start K-J) and so epoch K-1 are unused, as in andriotis/ca2d. shift=True (reconstruction, METHODS.md §4.11):
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


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def cad_epochs(e_down: int, ipc: int, num_classes: int, n_train: int) -> int:
    """Scoring-run length K = round(E_down·IPC·C / N) (METHODS.md §2.4: K·N = E_down·IPC·C).

    Rounds half up (METHODS.md only says "round"; Python's round() would round half to even). CIFAR-100 with
    E_down = 300 gives 6 / 30 / 60 at IPC 10 / 50 / 100.
    """
    if n_train <= 0:
        raise ValueError(f"n_train must be positive, got {n_train}")
    return _round_half_up(e_down * ipc * num_classes / n_train)
