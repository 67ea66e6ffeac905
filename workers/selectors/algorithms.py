"""Per-class selection kernels (docs/methods.md §4.2–4.3, §4.7–4.8, §4.10).

Top-k, EL2N window, herding, k-center, k-means medoids, CCS and D²-Pruning.

Each kernel sees the candidates of ONE class (scores (n,) and/or features (n, D)) and returns positions into those
arrays: sorted ascending, unique, exactly `ipc` long; fewer than `ipc` candidates is a ValueError (the selector
wrapping a kernel maps positions back to train indices and names the class). Randomness only from a numpy
Generator passed in (docs/design.md §8); never global RNG or the clock. Numpy only, no torch.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

_EMPTY = np.zeros(0, dtype=np.int64)


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _check_ipc(n: int, ipc: int) -> None:
    if ipc < 0:
        raise ValueError(f"ipc must be >= 0, got {ipc}")
    if n < ipc:
        raise ValueError(f"{n} candidates, fewer than ipc={ipc}")


def _scores(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return s


def _feats(feats: np.ndarray) -> np.ndarray:
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"feats must be (n, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("feats contain NaN or inf")
    return x


def _sqdist_to(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Exact squared distances from every row of x to one point c (differences, no expansion: duplicates give 0)."""
    diff = x - c
    return np.einsum("ij,ij->i", diff, diff)


def _sqdist_block(a: np.ndarray, b: np.ndarray, a_sq: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Squared distances between rows of a and b by expansion, clipped at 0."""
    d = a_sq[:, None] - 2.0 * (a @ b.T) + b_sq[None, :]
    np.maximum(d, 0.0, out=d)
    return d


def _rank(s: np.ndarray, highest: bool, rng: np.random.Generator) -> np.ndarray:
    """Positions ordered best first (highest or lowest score), ties broken by a random permutation from rng."""
    perm = rng.permutation(len(s))
    key = -s[perm] if highest else s[perm]
    return perm[np.argsort(key, kind="stable")]


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _done(picks: np.ndarray | list[int], ipc: int) -> np.ndarray:
    out = np.sort(np.asarray(picks, dtype=np.int64))
    assert len(out) == ipc and (len(out) < 2 or (np.diff(out) > 0).all()), "kernel produced a bad selection"
    return out


# ---------------------------------------------------------------------------------------------------------------
# score-based: top-k (el2n, grand, forgetting, dyn_unc, cad_prune keep one end) and the EL2N window (§4.10)


def top_k(scores: np.ndarray, ipc: int, highest: bool, rng: np.random.Generator) -> np.ndarray:
    """The ipc highest (or lowest) scores; ties broken by a permutation drawn from rng (docs/methods.md §4 contract)."""
    s = _scores(scores)
    _check_ipc(len(s), ipc)
    return _done(_rank(s, highest, rng)[:ipc], ipc)


def window(scores: np.ndarray, ipc: int, offset: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """EL2N window (docs/methods.md §4.10): sort by score descending (hardest first), take ipc consecutive from start
    round(offset·(n − ipc)). offset 0 = hardest, 1 = easiest. Equal scores are ordered by a permutation drawn from
    rng (the §4 contract), or by position when rng is None.

    round() here rounds half up (the method only says "round").
    """
    s = _scores(scores)
    n = len(s)
    _check_ipc(n, ipc)
    if not 0.0 <= offset <= 1.0:
        raise ValueError(f"offset must be in [0, 1], got {offset}")
    order = np.argsort(-s, kind="stable") if rng is None else _rank(s, True, rng)
    start = min(_round_half_up(offset * (n - ipc)), n - ipc)
    return _done(order[start : start + ipc], ipc)


# ---------------------------------------------------------------------------------------------------------------
# herding (§4.2)


def herding_order(feats: np.ndarray, ipc: int) -> np.ndarray:
    """Welling herding, ARGMIN convention (docs/methods.md §4.2): positions in pick order.

    x_t = argmin over unselected x of ||t·mu − sum_{s<t} phi(x_s) − phi(x)||_2, so the running mean tracks mu.
    (DeepCore's argmax is a bug, docs/methods.md §4.2.) Ties go to the lowest position. Deterministic.
    """
    x = _feats(feats)
    n = len(x)
    _check_ipc(n, ipc)
    mu = x.mean(axis=0)
    sq = np.einsum("ij,ij->i", x, x)
    acc = np.zeros(x.shape[1], dtype=np.float64)
    taken = np.zeros(n, dtype=bool)
    order = np.empty(ipc, dtype=np.int64)
    for t in range(1, ipc + 1):
        target = t * mu - acc
        # ||target − phi||² = ||target||² − 2·target·phi + ||phi||²; the first term is constant over candidates.
        obj = sq - 2.0 * (x @ target)
        obj[taken] = np.inf
        i = int(np.argmin(obj))
        order[t - 1] = i
        taken[i] = True
        acc += x[i]
    return order


def herding(feats: np.ndarray, ipc: int) -> np.ndarray:
    """Herding selection (docs/methods.md §4.2), sorted positions."""
    return _done(herding_order(feats, ipc), ipc)


# ---------------------------------------------------------------------------------------------------------------
# k-center greedy and k-means medoids (§4.3)


def _medoid(x: np.ndarray, block_rows: int = 1024) -> int:
    """Position minimising the sum of Euclidean distances to all others (blocked; lowest position on ties)."""
    n = len(x)
    sq = np.einsum("ij,ij->i", x, x)
    tot = np.empty(n, dtype=np.float64)
    for s in range(0, n, block_rows):
        e = min(n, s + block_rows)
        tot[s:e] = np.sqrt(_sqdist_block(x[s:e], x, sq[s:e], sq)).sum(axis=1)
    return int(np.argmin(tot))


def kcenter_order(
    feats: np.ndarray, ipc: int, rng: np.random.Generator, first: Literal["random", "medoid"] = "random"
) -> np.ndarray:
    """Greedy farthest-point k-center (Sener & Savarese; docs/methods.md §4.3), positions in pick order.

    First centre: a position drawn from rng, or the class medoid. Then repeatedly add argmax of d, d_i = min
    distance to the chosen centres, updated as d <- min(d, ||phi − phi_new||): O(n) memory (no budget × n matrix).
    Chosen positions are masked, so an exact duplicate of a chosen point (d = 0) is only taken once every
    remaining point is at distance 0, and never the same position twice. Ties in d are broken by a permutation
    drawn from rng. Distances are exact differences (not the expansion), so duplicates sit at exactly 0.
    """
    x = _feats(feats)
    n = len(x)
    _check_ipc(n, ipc)
    if ipc == 0:
        return _EMPTY.copy()
    if first == "random":
        c0 = int(rng.integers(n))
    elif first == "medoid":
        c0 = _medoid(x)
    else:
        raise ValueError(f"first must be 'random' or 'medoid', got {first!r}")
    tie = rng.permutation(n)  # tie order: argmax over d[tie] returns the earliest in this permutation
    order = np.empty(ipc, dtype=np.int64)
    order[0] = c0
    d = _sqdist_to(x, x[c0])  # squared distances: same argmax as distances
    d[c0] = -np.inf
    for t in range(1, ipc):
        i = int(tie[np.argmax(d[tie])])
        order[t] = i
        np.minimum(d, _sqdist_to(x, x[i]), out=d)
        d[i] = -np.inf
    return order


def kcenter(
    feats: np.ndarray, ipc: int, rng: np.random.Generator, first: Literal["random", "medoid"] = "random"
) -> np.ndarray:
    """k-center greedy selection (docs/methods.md §4.3), sorted positions."""
    return _done(kcenter_order(feats, ipc, rng, first), ipc)


def kmeans_medoid(feats: np.ndarray, ipc: int, rng: np.random.Generator, iters: int = 50) -> np.ndarray:
    """k-means medoids (docs/methods.md §4.3, marked (reconstruction) there): per class k-means with k = ipc
    (k-means++ init from rng, at most `iters` Lloyd steps, stopping when assignments stop changing), then the real
    sample nearest each centroid.

    No sample is used twice: centroids are served in increasing distance to their nearest sample, each taking its
    nearest not-yet-used sample (so a centroid whose nearest sample is taken gets the next nearest unused). An empty
    cluster keeps its previous centroid. If all remaining k-means++ weights are 0 (duplicates), the next seed is
    drawn uniformly among unused positions.
    """
    x = _feats(feats)
    n = len(x)
    _check_ipc(n, ipc)
    if ipc == 0:
        return _EMPTY.copy()
    k = ipc
    # k-means++ seeding
    seeds = np.empty(k, dtype=np.int64)
    used = np.zeros(n, dtype=bool)
    seeds[0] = int(rng.integers(n))
    used[seeds[0]] = True
    d2 = _sqdist_to(x, x[seeds[0]])
    for t in range(1, k):
        w = np.where(used, 0.0, d2)
        tot = w.sum()
        if tot > 0:
            i = int(rng.choice(n, p=w / tot))
        else:
            i = int(rng.choice(np.flatnonzero(~used)))
        seeds[t] = i
        used[i] = True
        np.minimum(d2, _sqdist_to(x, x[i]), out=d2)
    cent = x[seeds].copy()
    # Lloyd iterations
    x_sq = np.einsum("ij,ij->i", x, x)
    assign = None
    for _ in range(iters):
        c_sq = np.einsum("ij,ij->i", cent, cent)
        new = np.empty(n, dtype=np.int64)
        for s in range(0, n, 4096):
            e = min(n, s + 4096)
            new[s:e] = np.argmin(_sqdist_block(x[s:e], cent, x_sq[s:e], c_sq), axis=1)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        counts = np.bincount(assign, minlength=k)
        onehot = np.zeros((k, n), dtype=np.float64)
        onehot[assign, np.arange(n)] = 1.0
        sums = onehot @ x
        nz = counts > 0
        cent[nz] = sums[nz] / counts[nz, None]
    # nearest unused real sample per centroid
    dist = np.stack([_sqdist_to(x, c) for c in cent])  # (k, n), exact
    serve = np.argsort(dist.min(axis=1), kind="stable")
    taken = np.zeros(n, dtype=bool)
    picks = np.empty(k, dtype=np.int64)
    for c in serve:
        row = np.where(taken, np.inf, dist[c])
        i = int(np.argmin(row))
        picks[c] = i
        taken[i] = True
    return _done(picks, ipc)


# ---------------------------------------------------------------------------------------------------------------
# CCS (§4.7)


def ccs_allocation(bin_sizes: np.ndarray | list[int], budget: int, rng: np.random.Generator | None = None) -> list[int]:
    """CCS budget split over strata (docs/methods.md §4.7 step 3).

    Visit the non-empty strata in increasing size; each gets min(size, floor(remaining budget / remaining strata)).
    The total is min(budget, sum of sizes) and no stratum gets more than its size. When budget < #non-empty
    strata, floor() gives 0 until exactly `budget` strata remain, so precisely the `budget` largest strata get one
    each. Tie rule (reconstruction; the paper gives none): among strata of equal size, the visiting order is the
    stratum index (lower score range first, so the higher-score stratum of a tie is favoured) when rng is None,
    else a permutation drawn from rng. Empty strata get 0 (visiting them first, as the CCS code does, is the same).
    """
    sizes = np.asarray(bin_sizes, dtype=np.int64)
    if sizes.ndim != 1 or (sizes < 0).any():
        raise ValueError(f"bin_sizes must be a 1-D list of non-negative counts, got {bin_sizes!r}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    nonempty = np.flatnonzero(sizes > 0)
    tie = np.arange(len(nonempty)) if rng is None else rng.permutation(len(nonempty))
    visit = nonempty[np.lexsort((tie, sizes[nonempty]))]
    alloc = [0] * len(sizes)
    rest = int(budget)
    for r, b in enumerate(visit):
        take = min(int(sizes[b]), rest // (len(visit) - r))
        alloc[int(b)] = take
        rest -= take
    return alloc


def ccs(
    scores: np.ndarray,
    ipc: int,
    rng: np.random.Generator,
    hard_drop: float = 0.3,
    strata: int = 50,
    hard_high: bool = True,
) -> np.ndarray:
    """Coverage-centric coreset selection (Zheng et al.; docs/methods.md §4.7), per class with budget ipc.

    (1) Drop the hardest floor(hard_drop·n) candidates (highest score if hard_high, e.g. EL2N/forgetting; lowest if
    not, e.g. AUM), capped so at least ipc remain; ties at the cut broken by rng. (2) Split the remaining score
    range [min, max] into `strata` equal-width bins (a score on an inner edge goes to the upper bin, the max to the
    last bin; all-equal scores form one bin). (3) ccs_allocation. (4) Sample uniformly without replacement inside
    each bin with rng. hard_drop default 0.3 is a config default (β at IPC scale is unknown, docs/methods.md §4.7).
    """
    s = _scores(scores)
    n = len(s)
    _check_ipc(n, ipc)
    if not 0.0 <= hard_drop < 1.0:
        raise ValueError(f"hard_drop must be in [0, 1), got {hard_drop}")
    if strata < 1:
        raise ValueError(f"strata must be >= 1, got {strata}")
    if ipc == 0:
        return _EMPTY.copy()
    # 1e-9 guards floor() against float error (0.29 * 100 = 28.999999999999996).
    n_drop = min(int(math.floor(hard_drop * n + 1e-9)), n - ipc)
    keep = np.sort(_rank(s, hard_high, rng)[n_drop:])
    ks = s[keep]
    lo, hi = float(ks.min()), float(ks.max())
    if hi > lo:
        bins = np.floor((ks - lo) / (hi - lo) * strata).astype(np.int64)
        np.clip(bins, 0, strata - 1, out=bins)
    else:
        bins = np.zeros(len(ks), dtype=np.int64)
    sizes = np.bincount(bins, minlength=strata)
    alloc = ccs_allocation(sizes, ipc, rng)
    picks = [rng.choice(keep[bins == b], size=a, replace=False) for b, a in enumerate(alloc) if a > 0]
    return _done(np.concatenate(picks), ipc)


# ---------------------------------------------------------------------------------------------------------------
# D²-Pruning (§4.8)


def knn_graph(feats: np.ndarray, k: int, block_rows: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Sparse k-NN graph by Euclidean distance, self excluded (docs/methods.md §4.8).

    Returns (indices (n, k), distances (n, k)).

    Rows are processed in blocks of `block_rows`, so at most block_rows × n distances exist at once (no dense
    n × n matrix). Candidates come from the expanded squared distance; the k kept distances are then recomputed
    exactly from differences (exact duplicates sit at 0). Each row is sorted by (distance, index). k is capped at
    n − 1 (a class with fewer than k + 1 samples); k = 0 gives (n, 0) arrays.
    """
    x = _feats(feats)
    n = len(x)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    kk = min(k, max(n - 1, 0))
    idx = np.empty((n, kk), dtype=np.int64)
    dist = np.empty((n, kk), dtype=np.float64)
    if kk == 0:
        return idx, dist
    sq = np.einsum("ij,ij->i", x, x)
    for s in range(0, n, block_rows):
        e = min(n, s + block_rows)
        rows = np.arange(e - s)
        d = _sqdist_block(x[s:e], x, sq[s:e], sq)
        d[rows, s + rows] = np.inf
        cand = np.argpartition(d, kk - 1, axis=1)[:, :kk]
        diff = x[cand] - x[s:e, None, :]
        exact = np.sqrt(np.einsum("bkd,bkd->bk", diff, diff))
        o = np.lexsort((cand, exact), axis=1)
        idx[s:e] = np.take_along_axis(cand, o, axis=1)
        dist[s:e] = np.take_along_axis(exact, o, axis=1)
    return idx, dist


def two_way_graph(idx: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The kNN graph made undirected (docs/methods.md §4.8): j is a neighbour of i when j is in kNN(i) or i is in
    kNN(j), as D²'s compute_graph_density writes both connect[i, j] and connect[j, i] for every kNN edge.

    Returns (indices, distances) of shape (n, max degree), each row sorted by neighbour index and padded with
    index −1 and distance inf (rows differ in degree)."""
    n, k = idx.shape
    if k == 0:
        return idx.copy(), dist.copy()
    rows = np.repeat(np.arange(n), k)
    r = np.concatenate([rows, idx.ravel()])
    c = np.concatenate([idx.ravel(), rows])
    d = np.concatenate([dist.ravel(), dist.ravel()])
    order = np.lexsort((c, r))
    r, c, d = r[order], c[order], d[order]
    first = np.ones(len(r), dtype=bool)
    first[1:] = (r[1:] != r[:-1]) | (c[1:] != c[:-1])  # an edge listed from both ends is kept once
    r, c, d = r[first], c[first], d[first]
    degree = np.bincount(r, minlength=n)
    slot = np.arange(len(r)) - np.repeat(np.cumsum(degree) - degree, degree)
    out_idx = np.full((n, int(degree.max())), -1, dtype=np.int64)
    out_dist = np.full((n, int(degree.max())), np.inf)
    out_idx[r, slot] = c
    out_dist[r, slot] = d
    return out_idx, out_dist


D2_FLOOR = 1e-7  # D²'s compute_graph_density: a neighbour contributes exp(−d)·max(s_j, 1e-7)


def d2_forward(
    scores: np.ndarray, idx: np.ndarray, dist: np.ndarray, gamma_f: float = 1.0, floor: float | None = None
) -> np.ndarray:
    """D² forward message passing ('sum', docs/methods.md §4.8).

    s'_i = s_i + sum_{j in N(i)} exp(−gamma_f·d_ij)·s_j, with s_j replaced by max(s_j, floor) when a floor is given
    (the sample's own s_i is not floored). N(i): the row of idx, entries −1 are padding."""
    s = _scores(scores)
    if idx.size == 0:
        return s.copy()
    valid = idx >= 0
    nb = s[np.where(valid, idx, 0)]
    if floor is not None:
        nb = np.maximum(nb, floor)
    return s + np.where(valid, np.exp(-gamma_f * np.where(valid, dist, 0.0)) * nb, 0.0).sum(axis=1)


def d2_reverse(
    s_prime: np.ndarray,
    idx: np.ndarray,
    dist: np.ndarray,
    ipc: int,
    gamma_r: float = 0.1,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """D² greedy reverse message passing (docs/methods.md §4.8): ipc times, i* = argmax s' over unselected, then for
    j in N(i*) (the row of idx, −1 = padding): s'_j -= exp(−gamma_r·d_{i*j})·s'_{i*}. Returns (positions in pick
    order, s' after the last pick). Ties in argmax: lowest position, or a permutation from rng when given.
    """
    s = np.array(s_prime, dtype=np.float64)
    n = len(s)
    _check_ipc(n, ipc)
    w = np.exp(-gamma_r * np.where(idx >= 0, dist, 0.0)) if idx.size else None
    tie = np.arange(n) if rng is None else rng.permutation(n)
    avail = np.ones(n, dtype=bool)
    order = np.empty(ipc, dtype=np.int64)
    for t in range(ipc):
        masked = np.where(avail, s, -np.inf)[tie]
        i = int(tie[np.argmax(masked)])
        order[t] = i
        avail[i] = False
        if w is not None:
            valid = idx[i] >= 0
            s[idx[i][valid]] -= w[i][valid] * s[i]
    return order, s


def d2(
    feats: np.ndarray,
    scores: np.ndarray,
    ipc: int,
    k: int = 5,
    gamma_f: float = 1.0,
    gamma_r: float = 0.1,
    rng: np.random.Generator | None = None,
    two_way: bool = False,
) -> np.ndarray:
    """D²-Pruning on one class's candidates (docs/methods.md §4.8): kNN graph, forward 'sum' pass with gamma_f
    (code: 1.0), greedy reverse pass with gamma_r (README: 0.1). two_way: the graph of D²'s compute_graph_density
    (both directions of every kNN edge, neighbour scores floored at 1e-7); else each sample's own kNN list, no
    floor. Sorted positions."""
    x = _feats(feats)
    s = _scores(scores)
    if len(x) != len(s):
        raise ValueError(f"feats has {len(x)} rows but scores has {len(s)}")
    _check_ipc(len(s), ipc)
    idx, dist = knn_graph(x, k)
    if two_way:
        idx, dist = two_way_graph(idx, dist)
    s_prime = d2_forward(s, idx, dist, gamma_f, D2_FLOOR if two_way else None)
    order, _ = d2_reverse(s_prime, idx, dist, ipc, gamma_r, rng)
    return _done(order, ipc)
