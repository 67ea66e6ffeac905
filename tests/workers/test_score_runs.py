"""Score runs as the methods' authors ran them (docs/methods.md §4, §4.4, §4.7, §4.9; issue #14).

Real score runs on digits through the stage mechanism: a run scored early in a long schedule is the prefix of
that long run; training mini-batch margins are the margins of the training forward; `score_seed` seeds runs by
the trial seed. Selector-level known answers for CCS's AUM source, dynamic uncertainty's windows and EL2N ties.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from orchestrator.grid import expand
from orchestrator.spec import SpecError, parse_spec
from workers import stages
from workers.artifacts import ArtifactStore
from workers.catalogue import SELECTORS
from workers.config import Named, TrialConfig, canonical_json
from workers.graph import selector_inputs, subset_key
from workers.selectors import SelectContext, scored

SPEC = """
name: runs
dataset: {{name: digits}}
student: {{arch: convnet, depth: 2, width: 8}}
budget: {{full_epochs: 2}}
grid: {{selector: [{selectors}], regime: [hl], ipc: [2], seed: [0, 1]}}
train: {{batch_size: 128, augment: crop}}
"""


def trials(*selectors: str) -> list[TrialConfig]:
    return expand(parse_spec(SPEC.format(selectors=", ".join(selectors))))


def runs_of(trial: TrialConfig):
    return [k for k in selector_inputs(trial) if k.kind == "dynamics"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ArtifactStore(tmp_path_factory.mktemp("runs") / "artifacts")


def arrays(store: ArtifactStore, key, name: str) -> np.ndarray:
    stages.build(key, store)
    return np.load(store.path(key) / f"{name}.npy")


# ------------------------------------------------------------------ EL2N/GraNd: scored early in a long schedule (§4.4)
def test_el2n_runs_span_the_long_schedule_and_keep_plain_keys_otherwise():
    default, old, grand = (
        t
        for t in trials(
            "{name: el2n, runs: 1}", "{name: el2n, runs: 1, schedule_epochs: epoch}", "{name: grand, runs: 1}"
        )
        if t.seed == 0
    )
    (run,) = runs_of(default)
    assert run.cfg["epochs"] == 20 and run.cfg["schedule_epochs"] == 200  # Paul et al.: epoch 20 of 200
    (plain,) = runs_of(old)
    assert "schedule_epochs" not in plain.cfg and plain.cfg["epochs"] == 20  # the key from before the option
    (at_init,) = runs_of(grand)
    assert "schedule_epochs" not in at_init.cfg and at_init.cfg["epochs"] == 0  # nothing trains: no schedule


def test_a_run_scored_early_is_the_prefix_of_the_long_run(store):
    """Paul et al. score checkpoints of a normal-length run: the 3-epoch run of a 6-epoch schedule must equal the
    first 3 epochs of the 6-epoch run (hl recipe: SGD, x0.1 at half), and differ from a 3-epoch schedule."""
    early, long_run, squeezed = (
        runs_of(t)[0]
        for t in trials(
            "{name: el2n, runs: 1, epoch: 3, schedule_epochs: 6}",
            "{name: forgetting, epochs: 6}",
            "{name: el2n, runs: 1, epoch: 3, schedule_epochs: epoch}",
        )
        if t.seed == 0
    )
    a, b, c = (arrays(store, k, "el2n") for k in (early, long_run, squeezed))
    assert a.shape == (4, 1338) and b.shape == (7, 1338)
    np.testing.assert_array_equal(a, b[:4])
    np.testing.assert_array_equal(c[:2], b[:2])  # both at the full rate until the squeezed schedule drops at 1.5
    assert np.abs(c[3].astype(np.float64) - b[3]).mean() > 1e-3


def test_a_schedule_shorter_than_the_scored_epoch_is_refused():
    with pytest.raises(SpecError, match="schedule_epochs = 5 is shorter than the scored epoch 20"):
        trials("{name: el2n_easy, schedule_epochs: 5}")
    with pytest.raises(SpecError, match="not a number of epochs"):
        trials("{name: el2n_easy, schedule_epochs: long}")


def test_a_row_from_before_an_option_runs_its_neutral_value_under_its_old_id():
    """An old row's config lacks schedule_epochs: it ran the squeezed schedule, so it reads back as `epoch`."""
    old = next(t for t in trials("{name: el2n, schedule_epochs: epoch}") if t.seed == 0)
    row = json.loads(canonical_json(old.to_json()))
    del row["selector"]["options"]["schedule_epochs"]
    back = TrialConfig.from_json(row)
    assert back.selector.opts["schedule_epochs"] == "epoch" and back.trial_id == old.trial_id
    assert subset_key(back) == subset_key(old)


# ------------------------------------------------------------------ CCS: AUM from the training mini-batches (§4.7)
def test_training_margins_are_the_margins_of_the_training_forward(store):
    """The run records p_y - max other p of each epoch's training forward (augmented, train mode); a replay of
    the same training run with a hook on the mini-batch logits gives the same numbers."""
    from workers import models
    from workers.budget import plan
    from workers.config import BudgetConfig, TrainConfig
    from workers.data import load_splits
    from workers.regimes import HardLabels
    from workers.seeding import derive_seed
    from workers.teacher import full_train_tensors
    from workers.train import Checkpointer, TrainHooks, train

    t = next(t for t in trials("{name: ccs, epochs: 3}") if t.seed == 0)
    (key,) = runs_of(t)
    assert key.cfg["records"] == "train_margin"
    got = arrays(store, key, "train_margin")
    assert got.shape == (3, 1338) and got.dtype == np.float16

    splits = load_splits(t.dataset)
    data, _ = full_train_tensors(splits, "cpu")
    seed = derive_seed(0, "dynamics")
    model = models.build("convnet", t.student.opts, 10, splits.image_shape, seed)
    recipe = TrainConfig(**key.cfg["recipe"], eval_points=1)
    ref = np.full((3, 1338), np.nan)

    def on_batch(pos, logits, epoch):
        p = torch.softmax(logits.double(), 1).numpy()
        y = splits.train_y[pos.numpy()]
        rows = np.arange(len(y))
        others = p.copy()
        others[rows, y] = -1
        ref[epoch, pos.numpy()] = p[rows, y] - others.max(1)

    n = len(splits.train_y)
    p = plan(BudgetConfig("epochs", 3), n, n, recipe.batch_size)
    train(model, HardLabels(recipe, seed), data, recipe, p, seed, {}, Checkpointer(None), TrainHooks(on_batch=on_batch))
    assert not np.isnan(ref).any()
    np.testing.assert_allclose(got.astype(np.float64), ref, atol=1e-3)
    eval_margins = arrays(store, key, "margin")[1:]
    assert np.abs(eval_margins.astype(np.float64) - ref).mean() > 0.01  # a different quantity


def ctx_with(selector: Named, labels: np.ndarray, seed: int = 0, ipc: int = 2, **arrays_) -> SelectContext:
    return SelectContext(
        labels=labels,
        num_classes=int(labels.max()) + 1,
        ipc=ipc,
        seed=seed,
        selector=selector,
        dynamics=lambda name: arrays_[name],
    )


def resolved(name: str, **opts) -> Named:
    out, problems = SELECTORS[name].resolve(opts, "test")
    assert not problems, problems
    return Named.make(name, out)


def test_ccs_takes_aum_from_the_source_it_is_told():
    """Eval margins and training margins rank the samples in opposite orders; CCS's hard drop follows the chosen
    source (hard_drop 0.5 of 8 per class drops the 4 lowest AUM; strata 1 then samples the rest)."""
    labels = np.repeat([0, 1], 8)
    up = np.tile(np.linspace(-0.8, 0.8, 8), 2)
    train_margin = np.stack([up, up]).astype(np.float16)  # 2 epochs; low index = hard
    margin = np.concatenate([np.zeros((1, 16)), -train_margin]).astype(np.float16)  # row 0 = init; reversed
    for source, hard in (("train_batches", np.arange(4)), ("eval", np.arange(4, 8))):
        sel = resolved("ccs", hard_drop=0.5, strata=1, aum_source=source)
        for seed in range(5):
            picks = scored.ccs(ctx_with(sel, labels, seed, train_margin=train_margin[None], margin=margin[None]))
            assert not set(picks % 8) & set(hard), (source, picks)


# ------------------------------------------------------------------ dynamic uncertainty: K - J windows (§4.9)
def reference_dyn_unc(p: np.ndarray, J: int) -> np.ndarray:  # noqa: N803
    """BAAI-DCAI's get_coreset.py, restated: a rolling buffer of the last J values; after epoch idx (0-based) of
    K, the std (ddof 1) of the buffer is kept when J - 1 <= idx < K - 1; the score is the mean of those."""
    k, n = p.shape
    buf = np.zeros((n, J))
    kept = []
    for idx in range(k):
        buf = np.concatenate([buf[:, 1:], p[idx][:, None]], axis=1)
        if J - 1 <= idx < k - 1:
            kept.append(buf.std(axis=1, ddof=1))
    return np.mean(kept, axis=0)


def test_dyn_unc_averages_the_windows_the_reference_averages():
    rng = np.random.default_rng(0)
    k, n, j = 9, 12, 4
    p = rng.random((k, n)).astype(np.float16)
    p[:, 0] = [0.1] * 8 + [0.9]  # moves only at the final epoch: only the last window sees it
    rows = np.concatenate([np.zeros((1, n)), p]).astype(np.float16)[None]  # row 0 = at init
    labels = np.zeros(n, np.int64)
    ref = reference_dyn_unc(p.astype(np.float64), j)
    assert ref[0] == 0.0
    from workers.scores import dynamics as dyn

    default = resolved("dyn_unc", epochs=k, J=j)
    np.testing.assert_allclose(dyn.dyn_unc(p, j, default.opts["last_window"]), ref, rtol=1e-12, atol=1e-15)
    picks = scored.dyn_unc(ctx_with(default, labels, ipc=3, prob_true=rows))
    np.testing.assert_array_equal(np.sort(np.argsort(-ref)[:3]), picks)
    assert 0 not in picks
    every = dyn.dyn_unc(p, j, last_window=True)  # ddsweep before issue #14: K - J + 1 windows
    assert every[0] > 0 and not np.allclose(every, ref)


def test_dyn_unc_without_a_window_is_refused():
    with pytest.raises(SpecError, match="leaves no window of J = 10 epochs"):
        trials("{name: dyn_unc, epochs: 10}")
    trials("{name: dyn_unc, epochs: 10, last_window: true}")  # K = J: the one window that ends at the last epoch


# ------------------------------------------------------------------ ties in a ranking follow the seeded generator (§4)
def test_el2n_window_orders_equal_scores_by_the_seed():
    """Float16 EL2N has ties; the window over them used to take the lowest positions for every seed."""
    labels = np.zeros(40, np.int64)
    el2n = np.zeros((1, 2, 40), np.float16)  # one run, rows: init and epoch 1
    el2n[0, 1, :10] = 0.5  # ten hard samples, thirty tied at 0
    sel = resolved("el2n_window", offset=1.0, epoch=1, runs=1)
    picks = [tuple(scored.el2n_window(ctx_with(sel, labels, seed, ipc=4, el2n=el2n))) for seed in range(4)]
    assert all(min(p) >= 10 for p in picks)  # the easiest window, inside the tie
    assert len(set(picks)) > 1  # a new draw per seed
    again = scored.el2n_window(ctx_with(sel, labels, 2, ipc=4, el2n=el2n))
    assert tuple(again) == picks[2]


# ------------------------------------------------------------------ score_seed (§4)
def test_score_seed_trial_gives_each_seed_its_own_runs_and_fixed_shares_them():
    fixed = [t for t in trials("{name: el2n, runs: 2}")]
    per_trial = [t for t in trials("{name: el2n, runs: 2, score_seed: trial}")]
    assert runs_of(fixed[0]) == runs_of(fixed[1])
    a, b = (runs_of(t) for t in per_trial)
    assert not set(a) & set(b) and [k.cfg["seed"] for k in a + b] == [0, 0, 1, 1]
    assert all("seed" not in k.cfg for k in runs_of(fixed[0]))  # fixed keeps the keys from before the option
    assert fixed[0].trial_id != per_trial[0].trial_id


def test_score_seed_trial_varies_the_selection_with_the_seed(store):
    s0, s1 = trials("{name: forgetting_easy, epochs: 3, score_seed: trial}")
    f0, f1 = trials("{name: forgetting, epochs: 3, score_seed: trial}")
    c0, c1 = (arrays(store, runs_of(t)[0], "correct") for t in (s0, s1))
    assert not np.array_equal(c0, c1)  # other init, order and views
    subsets = []
    for t in (f0, f1):
        stages.build(subset_key(t), store)
        subsets.append(np.load(store.path(subset_key(t)) / "indices.npy"))
    assert not np.array_equal(*subsets)
    assert math.isclose(len(subsets[0]), 20)


# ------------------------------------------------------------------ D2 as its reference runs it (§4.8)
def test_d2_drops_the_lowest_aum_of_the_split_and_scores_forgetting_as_counted():
    """hard_drop 0.25 of 24 samples drops the 6 lowest AUM over the whole split (here all in class 0, which keeps
    two); difficulty = forgetting counts with never-learned samples at 0, as the reference's score file."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 8)
    feats = rng.standard_normal((24, 3)).astype(np.float32)
    aum = np.linspace(0.0, 2.3, 24)
    aum[[1, 2, 3, 4, 5, 6]] = -1.0 - np.arange(6) / 10  # the six hardest: class 0
    train_margin = np.stack([aum / 2, aum / 2]).astype(np.float16)[None]
    correct = np.ones((1, 4, 24), bool)
    correct[0, 2, [9, 17]] = False  # one forgetting event each (classes 1 and 2)
    correct[0, :, 10] = False  # never learned: 0 events in the reference's count (K + 1 in `forgetting`)
    sel = resolved("d2", hard_drop=0.25, k=0)  # k = 0: the picks are the top scores, no messages
    ctx = SelectContext(
        labels=labels,
        num_classes=3,
        ipc=1,
        seed=0,
        selector=sel,
        features=lambda: feats,
        dynamics={"train_margin": train_margin, "correct": correct}.__getitem__,
    )
    from workers.selectors import geometric

    for seed in range(4):
        ctx.seed = seed
        picks = geometric.d2(ctx)
        assert picks[0] in {0, 7}  # one of the two class-0 samples the cut left (tied at 0 events)
        assert list(picks[1:]) == [9, 17]  # forgotten once beats never learned (0 events, not K + 1)
    with pytest.raises(KeyError):  # el2n difficulty without a hard drop reads neither AUM nor forgetting
        geometric.d2(
            SelectContext(
                labels=labels,
                num_classes=3,
                ipc=2,
                seed=0,
                selector=resolved("d2", hard_drop=0.0, difficulty="el2n"),
                features=lambda: feats,
                dynamics={}.__getitem__,
            )
        )


def test_d2_refills_a_class_the_cut_emptied_with_its_least_hard_samples():
    labels = np.repeat([0, 1], 6)
    feats = np.random.default_rng(1).standard_normal((12, 2))
    aum = np.concatenate([-np.arange(6, dtype=float) - 1, np.arange(6, dtype=float)])  # class 0 all hardest
    sel = resolved("d2", hard_drop=0.5, k=0, difficulty="aum")
    ctx = SelectContext(
        labels=labels,
        num_classes=2,
        ipc=2,
        seed=0,
        selector=sel,
        features=lambda: feats,
        dynamics={"train_margin": aum[None, None].astype(np.float16)}.__getitem__,
    )
    from workers.selectors import geometric

    picks = geometric.d2(ctx)
    assert set(picks[picks < 6]) == {0, 1}  # the class keeps its two highest-AUM samples
    assert set(picks[picks >= 6]) == {6, 7}  # AUM hardness: lowest AUM of the kept = highest difficulty
