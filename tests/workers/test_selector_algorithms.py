"""Known-answer tests for workers.selectors.algorithms (docs/methods.md §4.2–4.3, §4.7–4.8, §4.10).

Against brute-force references written here.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from workers.selectors import algorithms as alg


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _valid(sel: np.ndarray, n: int, ipc: int) -> None:
    assert sel.dtype.kind == "i"
    assert len(sel) == ipc
    assert (np.diff(sel) > 0).all(), "sorted and unique"
    assert ipc == 0 or (sel.min() >= 0 and sel.max() < n)


def _dense(x: np.ndarray) -> np.ndarray:
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


# ---------------------------------------------------------------------------------------------------- top_k


def test_top_k_brute_force_and_ties():
    rng = _rng(0)
    s = rng.permutation(50).astype(float)
    for highest in (True, False):
        sel = alg.top_k(s, 7, highest, _rng(1))
        _valid(sel, 50, 7)
        ref = sorted(range(50), key=lambda i: -s[i] if highest else s[i])[:7]
        assert set(sel) == set(ref)
    ties = np.zeros(40, dtype=np.float16)
    a = alg.top_k(ties, 5, True, _rng(3))
    b = alg.top_k(ties, 5, True, _rng(3))
    c = alg.top_k(ties, 5, True, _rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # ties only at the cut: the strictly better ones are always in
    s2 = np.array([5.0, 1, 1, 1, 1, 9])
    for seed in range(10):
        sel = alg.top_k(s2, 3, True, _rng(seed))
        assert {0, 5} <= set(sel)
    with pytest.raises(ValueError):
        alg.top_k(s, 51, True, _rng(0))


# ---------------------------------------------------------------------------------------------------- window (§4.10)


def test_window_offsets_and_contiguity():
    rng = _rng(5)
    n, ipc = 37, 6
    s = rng.standard_normal(n)
    desc = np.argsort(-s)  # distinct scores: no ties
    np.testing.assert_array_equal(alg.window(s, ipc, 0.0), alg.top_k(s, ipc, True, _rng(0)))
    np.testing.assert_array_equal(alg.window(s, ipc, 1.0), alg.top_k(s, ipc, False, _rng(0)))
    rank = np.empty(n, dtype=int)
    rank[desc] = np.arange(n)
    for beta in np.arange(0, 1.0001, 0.1):
        sel = alg.window(s, ipc, float(beta))
        _valid(sel, n, ipc)
        r = np.sort(rank[sel])
        start = int(math.floor(beta * (n - ipc) + 0.5))
        np.testing.assert_array_equal(r, np.arange(start, start + ipc))  # contiguous in sorted order
    with pytest.raises(ValueError):
        alg.window(s, ipc, 1.5)
    with pytest.raises(ValueError):
        alg.window(s[:3], ipc, 0.0)


# ---------------------------------------------------------------------------------------------------- herding (§4.2)


def _herding_brute(x: np.ndarray, ipc: int) -> list[int]:
    mu = x.mean(axis=0)
    chosen: list[int] = []
    for t in range(1, ipc + 1):
        best, best_v = -1, None
        for i in range(len(x)):
            if i in chosen:
                continue
            v = np.linalg.norm(t * mu - x[chosen].sum(axis=0) - x[i])
            if best_v is None or v < best_v:
                best, best_v = i, v
        chosen.append(best)
    return chosen


def test_herding_matches_brute_force_each_step():
    for seed in range(5):
        x = _rng(seed).standard_normal((20, 4))
        order = alg.herding_order(x, 8)
        np.testing.assert_array_equal(order, _herding_brute(x, 8))
        mu = x.mean(axis=0)
        assert order[0] == np.argmin(np.linalg.norm(x - mu, axis=1))  # first pick nearest the mean
        np.testing.assert_array_equal(alg.herding(x, 8), np.sort(order))
    # float16 input accepted
    x16 = _rng(9).standard_normal((20, 4)).astype(np.float16)
    np.testing.assert_array_equal(alg.herding_order(x16, 5), _herding_brute(x16.astype(np.float64), 5))


def test_herding_mean_error_beats_random_and_argmax():
    rng = _rng(10)
    centres = 3.0 * rng.standard_normal((3, 8))
    x = np.concatenate([c + rng.standard_normal((m, 8)) for c, m in zip(centres, (300, 200, 100))])
    mu = x.mean(axis=0)
    ipc = 10

    def err(sel):
        return np.linalg.norm(x[sel].mean(axis=0) - mu)

    e_herd = err(alg.herding(x, ipc))
    e_rand = np.mean([err(rng.choice(len(x), ipc, replace=False)) for _ in range(300)])
    # argmax variant (DeepCore's bug), vectorised here
    chosen: list[int] = []
    for t in range(1, ipc + 1):
        v = np.linalg.norm(t * mu - x[chosen].sum(axis=0) - x, axis=1)
        v[chosen] = -np.inf
        chosen.append(int(np.argmax(v)))
    e_argmax = err(chosen)
    assert e_herd < 0.2 * e_rand, (e_herd, e_rand)
    assert e_herd < 0.2 * e_argmax, (e_herd, e_argmax)


# ---------------------------------------------------------------------------------------------------- k-center (§4.3)


def test_kcenter_each_pick_is_argmax_of_min_distance():
    for seed in range(5):
        x = _rng(seed).standard_normal((60, 5))
        order = alg.kcenter_order(x, 12, _rng(100 + seed))
        d = _dense(x)
        for t in range(1, len(order)):
            mind = d[:, order[:t]].min(axis=1)
            mind[order[:t]] = -1
            assert order[t] == np.argmax(mind)
        np.testing.assert_array_equal(alg.kcenter(x, 12, _rng(100 + seed)), np.sort(order))
        med = alg.kcenter_order(x, 3, _rng(0), first="medoid")
        assert med[0] == np.argmin(d.sum(axis=1))


def test_kcenter_covering_radius_within_twice_optimum():
    for seed in range(60):
        r = _rng(seed)
        n = int(r.integers(5, 11))
        x = r.standard_normal((n, 2))
        d = _dense(x)
        for ipc in (2, 3):
            opt = min(d[:, list(c)].min(axis=1).max() for c in itertools.combinations(range(n), ipc))
            for first in ("random", "medoid"):
                sel = alg.kcenter(x, ipc, _rng(seed + 1000), first=first)
                _valid(sel, n, ipc)
                assert d[:, sel].min(axis=1).max() <= 2 * opt + 1e-12


def test_kcenter_duplicates_never_picked_twice():
    base = _rng(11).standard_normal((4, 3))
    x = np.repeat(base, 3, axis=0).astype(np.float16)  # 4 locations x 3 copies
    loc = np.repeat(np.arange(4), 3)
    for seed in range(20):
        order = alg.kcenter_order(x, 4, _rng(seed))
        assert len(set(loc[order])) == 4  # one per location while distinct locations remain
        full = alg.kcenter_order(x, 12, _rng(seed))  # all remaining at distance 0: still unique positions
        assert sorted(full) == list(range(12))
    same = np.ones((6, 2))
    _valid(alg.kcenter(same, 4, _rng(0)), 6, 4)


def test_kcenter_seeded():
    x = _rng(12).standard_normal((80, 4))
    a = alg.kcenter(x, 5, _rng(1))
    np.testing.assert_array_equal(a, alg.kcenter(x, 5, _rng(1)))
    assert any(not np.array_equal(a, alg.kcenter(x, 5, _rng(s))) for s in range(2, 6))
    with pytest.raises(ValueError):
        alg.kcenter(x, 5, _rng(1), first="bogus")


# ------------------------------------------------------------------------------------------- k-means medoids (§4.3)


def test_kmeans_medoid_picks_real_samples_nearest_centroids():
    rng = _rng(13)
    centres = 20.0 * rng.standard_normal((5, 6))
    blob = np.repeat(np.arange(5), 40)
    x = centres[blob] + rng.standard_normal((200, 6))
    for seed in range(5):
        sel = alg.kmeans_medoid(x, 5, _rng(seed))
        _valid(sel, 200, 5)
        assert sorted(blob[sel]) == [0, 1, 2, 3, 4]  # one per blob
        for i in sel:
            members = np.flatnonzero(blob == blob[i])
            mean = x[members].mean(axis=0)  # k-means converges to the blob mean on separated blobs
            assert i == members[np.argmin(np.linalg.norm(x[members] - mean, axis=1))]


def test_kmeans_medoid_distinct_when_centroids_share_a_sample():
    x = np.zeros((6, 3))
    x[5] = 1.0  # five copies of one point: several centroids coincide and share nearest samples
    for seed in range(10):
        sel = alg.kmeans_medoid(x, 4, _rng(seed))
        _valid(sel, 6, 4)
    same = np.ones((5, 2))
    np.testing.assert_array_equal(alg.kmeans_medoid(same, 5, _rng(0)), np.arange(5))


def test_kmeans_medoid_seeded():
    x = _rng(14).standard_normal((100, 3))
    a = alg.kmeans_medoid(x, 6, _rng(1))
    np.testing.assert_array_equal(a, alg.kmeans_medoid(x, 6, _rng(1)))
    assert any(not np.array_equal(a, alg.kmeans_medoid(x, 6, _rng(s))) for s in range(2, 6))


# ---------------------------------------------------------------------------------------------------- CCS (§4.7)


def _alloc_reference(sizes: list[int], budget: int) -> list[int]:
    """The docs/methods.md §4.7 procedure written out directly (ties visited by stratum index)."""
    left = sorted((s, i) for i, s in enumerate(sizes) if s > 0)
    out = [0] * len(sizes)
    while left:
        s, i = left.pop(0)
        out[i] = min(s, budget // (len(left) + 1))
        budget -= out[i]
    return out


def test_ccs_allocation_properties():
    rng = _rng(15)
    for _ in range(500):
        k = int(rng.integers(1, 12))
        sizes = [int(v) for v in rng.integers(0, 8, k)]
        budget = int(rng.integers(0, 40))
        a = alg.ccs_allocation(sizes, budget)
        assert a == _alloc_reference(sizes, budget)
        assert sum(a) == min(budget, sum(sizes))  # sums to the budget when the pool suffices
        assert all(0 <= ai <= si for ai, si in zip(a, sizes))  # no stratum over-drawn
        # balanced: every stratum not exhausted gets at least (largest allocation - 1)
        if any(a):
            assert all(ai >= max(a) - 1 for ai, si in zip(a, sizes) if ai < si)
        a2 = alg.ccs_allocation(sizes, budget, _rng(int(rng.integers(1 << 30))))
        assert sum(a2) == sum(a) and sorted(a2) == sorted(a)


def test_ccs_allocation_budget_below_strata_count_gives_largest_one_each():
    rng = _rng(16)
    for _ in range(200):
        k = 50
        sizes = np.zeros(k, dtype=int)
        nonempty = rng.choice(k, size=int(rng.integers(10, 50)), replace=False)
        sizes[nonempty] = rng.choice(np.arange(1, 200), size=len(nonempty), replace=False)  # distinct sizes
        ipc = int(rng.integers(1, len(nonempty) + 1))
        a = np.array(alg.ccs_allocation(sizes, ipc))
        largest = np.argsort(-sizes)[:ipc]
        expect = np.zeros(k, dtype=int)
        expect[largest] = 1
        np.testing.assert_array_equal(a, expect)
    # equal sizes at the boundary: without rng the higher-index (higher-score) stratum wins the tie
    assert alg.ccs_allocation([3, 3, 5, 0], 2) == [0, 1, 1, 0]


def test_ccs_hardest_never_chosen_and_strata():
    rng = _rng(17)
    n, ipc = 200, 20
    s = rng.standard_normal(n)
    for hard_high in (True, False):
        hardest = np.argsort(-s if hard_high else s)[: int(0.3 * n)]
        for seed in range(20):
            sel = alg.ccs(s, ipc, _rng(seed), hard_drop=0.3, hard_high=hard_high)
            _valid(sel, n, ipc)
            assert not np.isin(sel, hardest).any()
    # the cap: dropping floor(0.5 * 12) = 6 would leave fewer than ipc = 8; only 4 are dropped
    s12 = np.arange(12.0)
    sel = alg.ccs(s12, 8, _rng(0), hard_drop=0.5)
    np.testing.assert_array_equal(sel, np.arange(8))
    # 20 strata of sizes 1..20 (stratum b holds b + 1 samples): ipc 5 < 20 strata -> one from each of the 5 largest
    vals = np.concatenate([np.full(b + 1, b + 0.5) for b in range(20)])
    for seed in range(10):
        sel = alg.ccs(vals, 5, _rng(seed), hard_drop=0.0, strata=20)
        assert sorted(vals[sel]) == [15.5, 16.5, 17.5, 18.5, 19.5]
    # uniform within strata: each member of a stratum drawn about equally often
    counts = np.zeros(len(vals))
    for seed in range(400):
        counts[alg.ccs(vals, 5, _rng(seed), hard_drop=0.0, strata=20)] += 1
    top = vals == 19.5
    assert counts[top].min() > 0.5 * counts[top].mean()


def test_ccs_seeded_and_degenerate():
    s = _rng(18).standard_normal(300)
    a = alg.ccs(s, 10, _rng(1))
    np.testing.assert_array_equal(a, alg.ccs(s, 10, _rng(1)))
    assert not np.array_equal(a, alg.ccs(s, 10, _rng(2)))
    _valid(alg.ccs(np.zeros(30, dtype=np.float16), 10, _rng(0)), 30, 10)  # all-equal scores: one stratum
    _valid(alg.ccs(s[:10], 10, _rng(0)), 10, 10)
    with pytest.raises(ValueError):
        alg.ccs(s[:9], 10, _rng(0))


# ---------------------------------------------------------------------------------------------------- D² (§4.8)


def test_knn_graph_matches_brute_force_and_blocks():
    x = _rng(19).standard_normal((150, 6)).astype(np.float16)
    d = _dense(x.astype(np.float64))
    np.fill_diagonal(d, np.inf)
    idx, dist = alg.knn_graph(x, 5)
    assert idx.shape == dist.shape == (150, 5)
    for i in range(150):
        ref = sorted(range(150), key=lambda j: (d[i, j], j))[:5]
        np.testing.assert_array_equal(idx[i], ref)
        np.testing.assert_allclose(dist[i], d[i, ref], rtol=1e-12)
    idx2, dist2 = alg.knn_graph(x, 5, block_rows=7)
    np.testing.assert_array_equal(idx2, idx)
    np.testing.assert_array_equal(dist2, dist)
    i0, d0 = alg.knn_graph(x, 0)
    assert i0.shape == d0.shape == (150, 0)
    assert alg.knn_graph(x[:3], 5)[0].shape == (3, 2)  # k capped at n - 1


def _d2_brute(x, s, ipc, k, gf, gr):
    d = _dense(x)
    np.fill_diagonal(d, np.inf)
    nbr = [sorted(range(len(x)), key=lambda j: (d[i, j], j))[:k] for i in range(len(x))]
    sp = [s[i] + sum(math.exp(-gf * d[i, j]) * s[j] for j in nbr[i]) for i in range(len(x))]
    chosen = []
    for _ in range(ipc):
        i = max((v, -i) for i, v in enumerate(sp) if i not in chosen)
        i = -i[1]
        chosen.append(i)
        for j in nbr[i]:
            sp[j] -= math.exp(-gr * d[i, j]) * sp[i]
    return chosen


def test_d2_matches_brute_force():
    for seed in range(4):
        r = _rng(seed)
        x = r.standard_normal((40, 3))
        s = r.random(40)
        ref = _d2_brute(x, s, 10, 5, 1.0, 0.1)
        np.testing.assert_array_equal(alg.d2(x, s, 10), np.sort(ref))
        idx, dist = alg.knn_graph(x, 5)
        order, _ = alg.d2_reverse(alg.d2_forward(s, idx, dist, 1.0), idx, dist, 10, 0.1)
        np.testing.assert_array_equal(order, ref)


def test_d2_without_neighbours_is_top_k():
    r = _rng(20)
    x = r.standard_normal((50, 4))
    s = r.permutation(50).astype(float)
    top = alg.top_k(s, 8, True, _rng(0))
    np.testing.assert_array_equal(alg.d2(x, s, 8, k=0), top)
    np.testing.assert_array_equal(alg.d2(x, s, 8, gamma_f=1e9, gamma_r=1e9), top)


def test_d2_identical_top_points_second_drops_to_zero():
    r = _rng(21)
    x = np.concatenate([np.zeros((2, 3)), 100.0 + 10.0 * r.standard_normal((8, 3))])
    s = np.concatenate([[1.0, 1.0], 0.1 * r.random(8) + 0.01])
    idx, dist = alg.knn_graph(x, 1)
    assert idx[0, 0] == 1 and idx[1, 0] == 0 and dist[0, 0] == 0.0
    sp = alg.d2_forward(s, idx, dist, gamma_f=1.0)
    assert sp[0] == sp[1] == 2.0
    order, after = alg.d2_reverse(sp, idx, dist, 1, gamma_r=0.0)
    assert order[0] == 0 and after[1] == 0.0
    sel = alg.d2(x, s, 2, k=1, gamma_r=0.0)
    assert 0 in sel and 1 not in sel
    # default gamma_r: the duplicate is still suppressed (its score drops to 0 since d = 0)
    assert 1 not in alg.d2(x, s, 2, k=1)


def test_d2_rng_tie_break_seeded():
    x = _rng(22).standard_normal((30, 2))
    s = np.ones(30)
    a = alg.d2(x, s, 4, k=0, rng=_rng(1))
    np.testing.assert_array_equal(a, alg.d2(x, s, 4, k=0, rng=_rng(1)))
    assert not np.array_equal(a, alg.d2(x, s, 4, k=0, rng=_rng(2)))
    np.testing.assert_array_equal(alg.d2(x, s, 4, k=0), np.arange(4))


def d2_reference(x: np.ndarray, s: np.ndarray, ipc: int, k: int = 5, gamma: float = 0.1) -> list[int]:
    """adymaharana/d2pruning `core/data/sampling.py`, GraphDensitySampler with graph_mode 'sum' and
    graph_sampling_mode 'weighted', restated densely: kNN connectivity (self excluded); for every kNN edge (i, j)
    both connect[i, j] = exp(-d_ij)·max(s_j, 1e-7) and connect[j, i] = exp(-d_ij)·max(s_i, 1e-7); density_i =
    sum_j connect[i, j] + s_i. Then ipc times: the argmax (first on ties), its neighbours (connect[i] > 0) lose
    exp(-gamma·d)·density_i, and every pick is set to min(density) - 1."""
    n = len(x)
    d = _dense(x)
    off = d + np.diag(np.full(n, np.inf))
    connect = np.zeros((n, n))
    for i in range(n):
        for j in sorted(range(n), key=lambda j: (off[i, j], j))[:k]:
            connect[i, j] = math.exp(-d[i, j]) * max(s[j], 1e-7)
            connect[j, i] = math.exp(-d[i, j]) * max(s[i], 1e-7)
    density = connect.sum(axis=1) + s
    batch: list[int] = []
    while len(batch) < ipc:
        i = int(np.argmax(density))
        nbrs = np.flatnonzero(connect[i] > 0)
        density[nbrs] -= np.exp(-d[i, nbrs] * gamma) * density[i]
        batch.append(i)
        density[batch] = density.min() - 1
    return batch


def test_d2_two_way_matches_the_reference_graph_and_one_way_does_not():
    """docs/methods.md §4.8 (issue #14): the reference's graph joins both ends of every kNN edge and floors the
    neighbours' scores; scores at and below 0 (forgetting counts, shifted AUM) make the floor matter."""
    differs = 0
    for seed in range(6):
        r = _rng(100 + seed)
        x = r.standard_normal((60, 4)) * (0.5 + seed / 4)
        s = np.where(r.random(60) < 0.3, 0.0, r.integers(0, 6, 60).astype(float))  # forgetting-like counts
        s[:3] = -0.5  # below the floor
        ref = d2_reference(x, s, 12)
        got = alg.d2(x, s, 12, k=5, gamma_f=1.0, gamma_r=0.1, two_way=True)
        np.testing.assert_array_equal(got, np.sort(ref))
        differs += not np.array_equal(alg.d2(x, s, 12, k=5, gamma_f=1.0, gamma_r=0.1), got)
    assert differs >= 4


def test_two_way_graph_is_the_union_of_both_directions():
    x = _rng(23).standard_normal((25, 3))
    idx, dist = alg.knn_graph(x, 3)
    both, bdist = alg.two_way_graph(idx, dist)
    d = _dense(x)
    for i in range(25):
        ref = sorted(set(idx[i]) | {j for j in range(25) if i in idx[j]})
        row = both[i][both[i] >= 0]
        np.testing.assert_array_equal(row, ref)
        np.testing.assert_allclose(bdist[i][: len(row)], d[i, ref], rtol=1e-12)
        assert np.isinf(bdist[i][len(row) :]).all()
    assert (both >= 0).sum() > idx.size  # some edges are one-way in the kNN lists


def test_window_orders_ties_by_the_generator():
    s = np.array([3.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.0])
    assert alg.window(s, 2, 0.0, _rng(0))[0] == 0  # the strict maximum leads every order
    middles = {tuple(alg.window(s, 2, 0.4, _rng(seed))) for seed in range(10)}  # start 2: inside the tie
    assert len(middles) > 1 and all(set(m) <= {1, 2, 3, 4, 5} for m in middles)
    np.testing.assert_array_equal(alg.window(s, 2, 0.4, _rng(3)), alg.window(s, 2, 0.4, _rng(3)))
    np.testing.assert_array_equal(alg.window(s, 2, 0.4), [2, 3])  # without a generator: position order
