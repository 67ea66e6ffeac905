"""Known-answer tests for workers.scores.dynamics (docs/methods.md §4.4–4.7, §4.9, §4.11).

Against brute-force references written here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from workers.scores import dynamics as dyn


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _random_probs(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 3.0) -> np.ndarray:
    return _softmax(scale * rng.standard_normal(shape))


# ------------------------------------------------------------- per-sample statistics (§4.4, §4.5, §4.7)
# workers.scores.recording.sample_stats is the one implementation of p_y, the margin, EL2N and GraNd:
# the score runs call it on every epoch. It runs in float32, hence the tolerances.


def stats(p: np.ndarray, y: np.ndarray, feats: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """sample_stats on probabilities p (logits = log p, so softmax(logits) = p)."""
    import torch

    from workers.scores.recording import sample_stats

    logits = torch.log(torch.as_tensor(np.asarray(p, dtype=np.float64)))
    f = torch.zeros(len(y), 1) if feats is None else torch.as_tensor(np.asarray(feats, dtype=np.float64))
    return {k: v.numpy().astype(np.float64) for k, v in sample_stats(logits, torch.as_tensor(y), f).items()}


def test_el2n_matches_loop_and_range():
    rng = np.random.default_rng(0)
    m, n, c = 3, 40, 7
    p = _random_probs(rng, (m, n, c))
    y = rng.integers(0, c, n)
    ref = np.zeros(n)
    for i in range(n):
        for r in range(m):
            e = np.zeros(c)
            e[y[i]] = 1.0
            ref[i] += math.sqrt(sum((p[r, i, j] - e[j]) ** 2 for j in range(c))) / m
    per_run = np.stack([stats(p[r], y)["el2n"] for r in range(m)])
    np.testing.assert_allclose(per_run.mean(axis=0), ref, rtol=1e-6, atol=1e-6)
    got = el2n_mean(per_run[:, None, :])  # the selectors' mean over runs of the float16-stored scores
    np.testing.assert_allclose(got, ref, atol=2e-3)
    assert (got >= 0).all() and (got <= math.sqrt(2) + 1e-3).all()
    # extremes: exactly right -> 0; all mass on a wrong class -> sqrt(2)
    np.testing.assert_allclose(stats(np.eye(c)[y], y)["el2n"], 0.0, atol=0)
    np.testing.assert_allclose(stats(np.eye(c)[(y + 1) % c], y)["el2n"], math.sqrt(2), rtol=1e-6)


def el2n_mean(runs_epochs_n: np.ndarray, epoch: int = 0) -> np.ndarray:
    """The selectors' EL2N: workers.selectors.scored.el2n_scores on stored (runs, epochs, N) arrays."""
    from workers.config import Named
    from workers.selectors import SelectContext
    from workers.selectors.scored import el2n_scores

    n = runs_epochs_n.shape[-1]
    ctx = SelectContext(
        labels=np.zeros(n, np.int64),
        num_classes=1,
        ipc=1,
        seed=0,
        selector=Named.make("el2n", {"epoch": epoch, "runs": len(runs_epochs_n)}),
        dynamics=lambda name: runs_epochs_n.astype(np.float16),
    )
    return el2n_scores(ctx)


def test_el2n_two_classes_closed_form_and_float16_storage():
    rng = np.random.default_rng(1)
    n = 50
    py = rng.uniform(0, 1, n)
    y = rng.integers(0, 2, n)
    p = np.empty((n, 2))
    p[np.arange(n), y] = py
    p[np.arange(n), 1 - y] = 1 - py
    got = stats(p, y)
    np.testing.assert_allclose(got["el2n"], math.sqrt(2) * (1 - py), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["prob_true"], py, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got["margin"], 2 * py - 1, rtol=1e-5, atol=1e-6)
    stored = el2n_mean(got["el2n"][None, None, :])  # stored as float16, averaged in float64
    assert stored.dtype == np.float64
    np.testing.assert_allclose(stored, math.sqrt(2) * (1 - py), atol=2e-3)


def test_el2n_flipped_labels_fill_top():
    # Toy: 10 Gaussian classes, 5% labels flipped; "models" = nearest-class-mean classifiers fitted on the noisy
    # labels at three temperatures (three runs). Flipped samples disagree with the model, so EL2N ranks them top.
    rng = np.random.default_rng(2)
    n, c, d = 2000, 10, 16
    true = rng.integers(0, c, n)
    means = 4.0 * rng.standard_normal((c, d))
    x = means[true] + rng.standard_normal((n, d))
    y = true.copy()
    flip = rng.choice(n, size=n // 20, replace=False)
    y[flip] = (true[flip] + rng.integers(1, c, len(flip))) % c
    mu = np.stack([x[y == k].mean(axis=0) for k in range(c)])
    d2 = ((x[:, None, :] - mu[None]) ** 2).sum(-1)
    runs = np.stack([stats(_softmax(-d2 / t), y)["el2n"] for t in (4.0, 8.0, 16.0)])
    score = el2n_mean(runs[:, None, :])
    top = np.argsort(-score)[: len(flip)]
    frac = np.isin(top, flip).mean()
    assert frac >= 0.9, frac


def _ce_loss(w: np.ndarray, b: np.ndarray, phi: np.ndarray, y: int) -> float:
    z = w @ phi + b
    z = z - z.max()
    return float(-(z[y] - math.log(np.exp(z).sum())))


def test_grand_closed_form_equals_finite_difference_gradient():
    rng = np.random.default_rng(3)
    n, c, d = 6, 4, 5
    w = rng.standard_normal((c, d))
    b = rng.standard_normal(c)
    phi = rng.standard_normal((n, d))
    y = rng.integers(0, c, n)
    probs = _softmax(phi @ w.T + b)
    got = stats(probs, y, phi)["grand"]
    h = 1e-6
    for i in range(n):
        gw = np.zeros_like(w)
        for a in range(c):
            for k in range(d):
                wp, wm = w.copy(), w.copy()
                wp[a, k] += h
                wm[a, k] -= h
                gw[a, k] = (_ce_loss(wp, b, phi[i], y[i]) - _ce_loss(wm, b, phi[i], y[i])) / (2 * h)
        gb = np.zeros_like(b)
        for a in range(c):
            bp, bm = b.copy(), b.copy()
            bp[a] += h
            bm[a] -= h
            gb[a] = (_ce_loss(w, bp, phi[i], y[i]) - _ce_loss(w, bm, phi[i], y[i])) / (2 * h)
        ref = math.sqrt((gw**2).sum() + (gb**2).sum())
        assert got[i] == pytest.approx(ref, rel=1e-5)


def test_grand_equals_per_sample_autograd_of_the_last_layer():
    """The closed form is the per-sample gradient norm of CE w.r.t. a real nn.Linear head (weight and bias)."""
    import torch

    from workers.scores.recording import sample_stats

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 5)
    phi = torch.randn(12, 8)
    y = torch.randint(0, 5, (12,))
    ref = []
    for i in range(12):
        head.zero_grad()
        torch.nn.functional.cross_entropy(head(phi[i : i + 1]), y[i : i + 1]).backward()
        ref.append(torch.sqrt(head.weight.grad.pow(2).sum() + head.bias.grad.pow(2).sum()).item())
    got = sample_stats(head(phi).detach(), y, phi)["grand"]
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5)


def test_grand_does_not_depend_on_batch_order_or_split():
    rng = np.random.default_rng(4)
    n, c, d = 30, 5, 8
    probs = _random_probs(rng, (n, c))
    feats = rng.standard_normal((n, d)).astype(np.float16)
    y = rng.integers(0, c, n)
    full = stats(probs, y, feats)["grand"]
    perm = rng.permutation(n)
    np.testing.assert_allclose(stats(probs[perm], y[perm], feats[perm])["grand"], full[perm], rtol=1e-6)
    halves = np.concatenate([stats(probs[:7], y[:7], feats[:7])["grand"], stats(probs[7:], y[7:], feats[7:])["grand"]])
    np.testing.assert_allclose(halves, full, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------- forgetting (§4.6)


def test_forgetting_cases():
    cases = np.array([[0, 1, 0, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 1, 0, 1], [1, 0, 0, 0, 0]], bool).T
    got = dyn.forgetting(cases)
    np.testing.assert_array_equal(got, [1, 0, 6, 2, 1])
    np.testing.assert_array_equal(dyn.forgetting(np.array([[1], [1], [1]], bool)), [0])
    never = dyn.forgetting(np.array([[0], [0], [0]], bool))
    assert never[0] == 4
    # never-learned ranks above any possible count
    rng = np.random.default_rng(5)
    corr = rng.random((9, 200)) < 0.5
    corr[:, :3] = False
    f = dyn.forgetting(corr)
    assert (f[:3] > f[3:].max()).all()
    # brute force count
    for i in range(3, 200):
        ref = sum(1 for k in range(8) if corr[k, i] and not corr[k + 1, i])
        assert f[i] == ref


# ---------------------------------------------------------------------------------------------------- AUM (§4.7)


def test_aum_brute_force():
    rng = np.random.default_rng(6)
    k, n, c = 4, 25, 6
    p = _random_probs(rng, (k, n, c))
    y = rng.integers(0, c, n)
    ref = np.zeros(n)
    for e in range(k):
        for i in range(n):
            ref[i] += p[e, i, y[i]] - max(p[e, i, j] for j in range(c) if j != y[i])
    margins = np.stack([stats(p[e], y)["margin"] for e in range(k)]).astype(np.float16)  # as stored
    np.testing.assert_allclose(dyn.aum(margins), ref, atol=4e-3)
    np.testing.assert_allclose(dyn.aum(margins), margins.astype(np.float64).sum(axis=0), rtol=1e-12)


# ---------------------------------------------------------------------------------------------------- dyn_unc (§4.9)


def window_std(p: np.ndarray, j: int) -> np.ndarray:
    """Brute force: U[k, i] = std(p[k:k+J, i], ddof=1), one window at a time in plain Python."""
    pf = np.asarray(p, dtype=np.float64)
    k_count, n = pf.shape[0] - j + 1, pf.shape[1]
    u = np.empty((k_count, n))
    for k in range(k_count):
        for i in range(n):
            w = pf[k : k + j, i]
            u[k, i] = math.sqrt(((w - w.mean()) ** 2).sum() / (j - 1))
    return u


def test_dyn_unc_is_the_mean_of_every_window_std():
    rng = np.random.default_rng(7)
    p = rng.random((9, 11)).astype(np.float16)
    np.testing.assert_allclose(dyn.dyn_unc(p, 4), window_std(p, 4).mean(axis=0), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        dyn.dyn_unc(p, 10)
    with pytest.raises(ValueError):
        dyn.dyn_unc(p, 1)


def test_dyn_unc_constant_and_late_moving():
    k = 8
    p = np.full((k, 3), 0.2)
    p[:, 1] = [0.2] * 6 + [0.5, 0.8]  # moves only in epochs 6, 7
    p[:, 2] = 0.7
    u = window_std(p, 3)  # windows start 0..5
    np.testing.assert_allclose(u[:, [0, 2]], 0.0, atol=1e-15)
    # windows 0..3 do not reach epoch 6: zero. window 4 = (0.2, 0.2, 0.5): devs (-.1, -.1, .2) -> sqrt(0.06/2)
    # window 5 = (0.2, 0.5, 0.8): std 0.3
    np.testing.assert_allclose(u[:4, 1], 0.0, atol=1e-15)
    assert u[4, 1] == pytest.approx(math.sqrt(0.03), abs=1e-12)
    assert u[5, 1] == pytest.approx(0.3, abs=1e-12)
    got = dyn.dyn_unc(p, J=3)
    np.testing.assert_array_equal(got[[0, 2]], 0.0)
    assert got[1] == pytest.approx((math.sqrt(0.03) + 0.3) / 6, abs=1e-12)
    np.testing.assert_allclose(got, u.mean(axis=0), rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------------- CAD (§4.11, §2.4)


def test_cad_hand_computed_windows_literal_and_shift():
    # K = 6, J = 3, W = 2: windows start 0..3. Literal: U[1:3] (epochs 1-3, 2-4). Shift: U[2:4] (epochs 2-4, 3-5).
    p = np.zeros((6, 3))
    p[:, 0] = [0, 0, 0, 0, 0, 0.6]  # moves only at the final epoch, which the literal reading never sees
    p[:, 1] = [0, 0, 0, 0.3, 0.3, 0.3]  # step at epoch 3
    p[:, 2] = [0.1, 0.4, 0.1, 0.4, 0.1, 0.4]
    lit = dyn.cad(p, J=3, W=2)
    sh = dyn.cad(p, J=3, W=2, shift=True)
    # sample 0: U = (0, 0, 0, std(0,0,.6) = sqrt(.12))
    assert lit[0] == 0.0
    assert sh[0] == pytest.approx(math.sqrt(0.12) / 2, abs=1e-12)
    # sample 1: U1 = std(0,0,.3) = sqrt(.03), U2 = std(0,.3,.3) = sqrt(.03), U3 = 0
    assert lit[1] == pytest.approx(math.sqrt(0.03), abs=1e-12)
    assert sh[1] == pytest.approx(math.sqrt(0.03) / 2, abs=1e-12)
    # sample 2: every window is (a, b, a) with |a - b| = .3: std = sqrt(2 * .01 + .04) / sqrt(2) = sqrt(.03)
    assert lit[2] == pytest.approx(math.sqrt(0.03), abs=1e-12)
    assert sh[2] == pytest.approx(math.sqrt(0.03), abs=1e-12)
    u = window_std(p, 3)
    np.testing.assert_allclose(lit, u[1:3].mean(axis=0))
    np.testing.assert_allclose(sh, u[2:4].mean(axis=0))


def test_cad_needs_k_at_least_j_plus_w():
    p = np.random.default_rng(8).random((7, 4)).astype(np.float16)
    dyn.cad(p, J=5, W=2)  # K == J + W is fine
    with pytest.raises(ValueError, match=r"K=7.*J=6.*W=2"):
        dyn.cad(p, J=6, W=2)
    with pytest.raises(ValueError):
        dyn.cad(p, J=3, W=0)


def test_cad_uses_true_class_probability_not_el2n():
    # docs/methods.md §4.11: C = 3, p_y fixed at 0.5, off-class mass alternating (0.5, 0) / (0.25, 0.25).
    k, j, w = 8, 4, 2
    probs = np.array([[0.5, 0.5, 0.0] if e % 2 == 0 else [0.5, 0.25, 0.25] for e in range(k)])[:, None, :]
    y = np.array([0])
    p_true = probs[:, np.arange(1), y]
    assert (dyn.cad(p_true, j, w) == 0).all()
    assert (dyn.cad(p_true, j, w, shift=True) == 0).all()
    el2n_traj = np.stack([stats(probs[e], y)["el2n"] for e in range(k)])  # sqrt(.5) vs sqrt(.375), alternating
    assert dyn.cad(el2n_traj, j, w)[0] > 0.04


def test_full_data_epochs_cifar100_and_rounding():
    """CAD's K = E_down * IPC * C / N as whole epochs, rounded half up (docs/methods.md §2.4)."""
    from workers.budget import full_data_epochs

    assert [full_data_epochs(300 * ipc * 100, 50000) for ipc in (10, 50, 100)] == [6, 30, 60]
    assert full_data_epochs(300 * 10 * 200, 100000) == 6  # TinyImageNet
    assert full_data_epochs(300 * 10 * 1000, 1281167) == 2
    assert full_data_epochs(5, 2) == 3  # 2.5 rounds half up (round() would give 2)
    assert full_data_epochs(7, 2) == 4 and full_data_epochs(3, 2) == 2 and full_data_epochs(1, 4) == 0
    assert isinstance(full_data_epochs(300 * 10 * 100, 50000), int)


def test_score_and_selection_kernels_never_import_torch():
    import ast
    import pathlib

    from workers.selectors import algorithms as alg

    for module in (dyn, alg):
        for node in ast.walk(ast.parse(pathlib.Path(module.__file__).read_text())):
            if isinstance(node, ast.Import):
                assert all(not a.name.startswith("torch") for a in node.names)
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("torch")


def test_cad_scoring_epochs_follow_the_trial_budget_and_ipc():
    """docs/methods.md §2.4: K = round(E_down * IPC * C / N) = the trial's full-dataset-equivalent epochs."""
    from dataclasses import replace

    from orchestrator.grid import expand
    from orchestrator.spec import parse_spec
    from workers.catalogue import cad_scoring_epochs
    from workers.config import BudgetConfig

    t = expand(
        parse_spec("""
name: k
dataset: {name: digits}
student: {arch: convnet, depth: 2}
budget: {epochs: 300}
grid: {selector: [cad_prune], regime: [hl], ipc: [10, 50], seed: [0]}
""")
    )
    assert [cad_scoring_epochs(x) for x in t] == [22, 112]  # 300 * IPC * 10 / 1338 = 22.4, 112.1
    assert cad_scoring_epochs(replace(t[0], budget=BudgetConfig("full_epochs", 7.0))) == 7
    assert cad_scoring_epochs(replace(t[1], budget=BudgetConfig("full_epochs", 7.0))) == 7


def test_cad_subset_is_the_same_for_every_regime_under_a_steps_budget():
    """A steps budget with per-regime batch sizes must not give each regime its own K (and subset)."""
    from orchestrator.grid import expand
    from orchestrator.spec import parse_spec
    from workers.budget import plan
    from workers.catalogue import cad_scoring_epochs
    from workers.graph import subset_key

    t = expand(
        parse_spec("""
name: k
dataset: {name: digits}
student: {arch: convnet, depth: 2}
budget: {steps: 400}
teacher: {arch: convnet, depth: 2, epochs: 2}
train: {batch_size: 64, sl: {batch_size: 16}, sl_kd: {batch_size: 128}}
grid: {selector: [cad_prune], regime: [hl, sl, sl_kd], ipc: [10], seed: [0]}
""")
    )
    assert [x.train.batch_size for x in t] == [64, 16, 128]
    hl_images = plan(t[0].budget, 100, 1338, 64).images_seen  # the hl trial's compute: 400 steps of <= 64
    assert hl_images != plan(t[1].budget, 100, 1338, 16).images_seen
    assert [cad_scoring_epochs(x) for x in t] == [round(hl_images / 1338)] * 3
    assert len({subset_key(x) for x in t}) == 1
