"""Every registered selector through the real stage mechanism on digits (docs/methods.md §4 contract).

The shared inputs (teacher, teacher features, training-dynamics runs) are built once per module by
`workers.stages.build` into a temporary artifact store; each parametrised case then builds its subset stage.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from orchestrator.grid import expand
from orchestrator.spec import parse_spec
from workers import stages
from workers.artifacts import ArtifactStore
from workers.catalogue import SELECTORS, seed_use
from workers.config import Named
from workers.data import load_splits
from workers.graph import selector_inputs, stage_deps, subset_key
from workers.selectors import SelectContext

NAMES = SELECTORS.names()
# Distillers are declared in the same registry but synthesise images (images.npy + labels.npy), not train ids:
# the id contract below does not apply to them.
DISTILLERS = {n for n in NAMES if SELECTORS[n].distiller}
SUBSET_NAMES = [n for n in NAMES if n not in DISTILLERS]
IPCS = (1, 4)
SEEDS = (0, 1)
FAST = {
    "el2n": "{runs: 2, epoch: 5}",
    "el2n_easy": "{runs: 2, epoch: 5}",
    "el2n_window": "{runs: 2, epoch: 5}",
    "grand": "{runs: 2}",
    "forgetting": "{epochs: 6}",
    "forgetting_easy": "{epochs: 6}",
    "ccs": "{epochs: 6}",
    "d2": "{epochs: 6}",
    "dyn_unc": "{epochs: 6, J: 3}",
}
SPEC = f"""
name: selectors
dataset: {{name: digits}}
teacher: {{arch: convnet, depth: 2, width: 16, epochs: 3, min_top1_factor: 1}}
student: {{arch: convnet, depth: 2, width: 16}}
budget: {{full_epochs: 6}}   # only CAD-Prune reads it: K = 6 scoring epochs, the same run as forgetting's
grid: {{selector: [{", ".join(SUBSET_NAMES)}], regime: [hl], ipc: [{", ".join(map(str, IPCS))}],
        seed: [{", ".join(map(str, SEEDS))}]}}
selectors:
{chr(10).join(f"  {k}: {v}" for k, v in FAST.items() if k in SELECTORS)}
train: {{batch_size: 128}}
"""

# How each subset depends on the trial seed is declared (workers.catalogue.seed_use) and checked here: "draw"
# methods must choose differently for seeds 0 and 1 (kmeans_medoid at IPC 1 is deterministic: one cluster, the
# class mean), "none" methods identically; "ties" methods (scores fixed across seeds, equal ones ordered by the
# seed) may do either. forgetting_easy, with its many ties at 0 events, must differ as well.
STOCHASTIC = {n for n in SUBSET_NAMES if seed_use(Named.make(n, SELECTORS[n].resolve({}, n)[0])) == "draw"}
STOCHASTIC |= {"forgetting_easy"}
SEED_FREE = {n for n in SUBSET_NAMES if seed_use(Named.make(n, SELECTORS[n].resolve({}, n)[0])) == "none"}


@pytest.fixture(scope="module")
def trials():
    spec = parse_spec(SPEC)
    return {(t.selector.name, t.ipc, t.seed): t for t in expand(spec)}


@pytest.fixture(scope="module")
def splits(trials):
    return load_splits(next(iter(trials.values())).dataset)


@pytest.fixture(scope="module")
def stores(trials, tmp_path_factory):
    """Store A with every shared input built once; store B a copy of those inputs (no subsets) for rebuilds."""
    a = ArtifactStore(tmp_path_factory.mktemp("selectors_a") / "artifacts")
    for t in trials.values():
        for dep in stage_deps(subset_key(t)):
            stages.build(dep, a)
    b_root = tmp_path_factory.mktemp("selectors_b") / "artifacts"
    shutil.copytree(a.root, b_root) if a.root.exists() else b_root.mkdir()
    return a, ArtifactStore(b_root)


@pytest.mark.parametrize("ipc", IPCS)
@pytest.mark.parametrize("name", SUBSET_NAMES)
def test_selector_contract(name, ipc, trials, splits, stores, monkeypatch):
    assert STOCHASTIC >= {"random", "kcenter", "kmeans_medoid", "ccs"} and SEED_FREE == {"full", "herding"}
    store_a, store_b = stores
    n_train = len(splits.train_y)
    seen: list[SelectContext] = []

    class SpyContext(SelectContext):  # the real context, recorded on its way to the selector
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self)

    monkeypatch.setattr(stages, "SelectContext", SpyContext)

    trial = trials[name, ipc, 0]
    key = subset_key(trial)
    assert not store_a.exists(key)
    stages.build(key, store_a)
    idx = np.load(store_a.path(key) / "indices.npy")

    # What the selector was given: train labels only, and inputs over the train split only.
    assert len(seen) == 1
    ctx = seen[0]
    assert len(ctx.labels) == n_train and np.array_equal(ctx.labels, splits.train_y)
    assert ctx.ipc == ipc and ctx.seed == 0 and ctx.num_classes == splits.num_classes
    meta_inputs = SELECTORS[name].inputs
    assert (ctx.features is not None) == ("features" in meta_inputs)
    assert (ctx.dynamics is not None) == ("dynamics" in meta_inputs)
    if ctx.features is not None:
        assert ctx.features().shape[0] == n_train
    if ctx.dynamics is not None:
        for what in ("prob_true", "el2n", "correct"):
            assert ctx.dynamics(what).shape[-1] == n_train

    # The contract.
    assert idx.dtype.kind == "i" and idx.ndim == 1
    assert np.all(np.diff(idx) > 0), "unsorted or duplicate ids"
    assert idx.min() >= 0 and idx.max() < n_train  # train ids only, never a test (or minival) row
    if name == "full":
        assert np.array_equal(idx, np.arange(n_train))
    else:
        counts = np.bincount(splits.train_y[idx], minlength=splits.num_classes)
        assert counts.tolist() == [ipc] * splits.num_classes
    manifest = store_a.manifest(key)
    assert manifest["n"] == len(idx) and manifest["class_names"] == list(splits.class_names)

    # Deterministic: the same trial in another store (same inputs) gives the same ids.
    stages.build(key, store_b)
    assert np.array_equal(np.load(store_b.path(key) / "indices.npy"), idx)

    # Seeds: stochastic methods differ, seed-free ones do not.
    other = subset_key(trials[name, ipc, 1])
    assert other != key
    stages.build(other, store_a)
    idx1 = np.load(store_a.path(other) / "indices.npy")
    if name in STOCHASTIC and not (name == "kmeans_medoid" and ipc == 1):
        assert not np.array_equal(idx, idx1), f"{name}: seeds 0 and 1 chose the same images"
    if name in SEED_FREE or (name == "kmeans_medoid" and ipc == 1):
        assert np.array_equal(idx, idx1)


# ------------------------------------------------------------------ which end is kept, on real dynamics
def _subset(trials, stores, name, ipc=4, seed=0):
    store = stores[0]
    key = subset_key(trials[name, ipc, seed])
    stages.build(key, store)
    return np.load(store.path(key) / "indices.npy")


def _dynamics(trials, stores, name, what, ipc=4):
    store = stores[0]
    keys = [k for k in selector_inputs(trials[name, ipc, 0]) if k.kind == "dynamics"]
    return np.stack([np.load(store.path(k) / f"{what}.npy") for k in keys])


def _check_ends(y, hard, easy, score, ipc, num_classes):
    assert score[hard].mean() > score[easy].mean()
    for c in range(num_classes):
        in_c = np.flatnonzero(y == c)
        h, e = hard[y[hard] == c], easy[y[easy] == c]
        assert score[h].min() >= score[e].max(), f"class {c}"
        ranked = np.sort(score[in_c])
        np.testing.assert_array_equal(np.sort(score[h]), ranked[-ipc:])  # the ipc highest scores of the class
        np.testing.assert_array_equal(np.sort(score[e]), ranked[:ipc])  # the ipc lowest


def test_el2n_keeps_the_hard_end_and_el2n_easy_the_easy_end(trials, splits, stores):
    epoch = trials["el2n", 4, 0].selector.opts["epoch"]
    el2n = _dynamics(trials, stores, "el2n", "el2n")  # runs x (epochs + 1) x N
    assert el2n.shape[0] == trials["el2n", 4, 0].selector.opts["runs"]
    score = el2n[:, epoch, :].astype(np.float64).mean(axis=0)
    _check_ends(
        splits.train_y,
        _subset(trials, stores, "el2n"),
        _subset(trials, stores, "el2n_easy"),
        score,
        4,
        splits.num_classes,
    )


def test_forgetting_keeps_the_most_forgotten_and_forgetting_easy_the_least(trials, splits, stores):
    correct = _dynamics(trials, stores, "forgetting", "correct")[0].astype(bool)  # epochs x N
    k = correct.shape[0]
    assert k == trials["forgetting", 4, 0].selector.opts["epochs"]
    events = np.zeros(correct.shape[1])
    for e in range(k - 1):
        events += correct[e] & ~correct[e + 1]
    events[~correct.any(axis=0)] = k + 1  # never learned ranks above every forgetting count
    assert events.max() > 0, "no forgetting at all: the check below would be vacuous"
    _check_ends(
        splits.train_y,
        _subset(trials, stores, "forgetting"),
        _subset(trials, stores, "forgetting_easy"),
        events,
        4,
        splits.num_classes,
    )


DISTILL_SPEC = f"""
name: distillers
dataset: {{name: digits}}
teacher: {{arch: convnet, depth: 2, width: 16, norm: batch, epochs: 3, min_top1_factor: 1}}
student: {{arch: convnet, depth: 2, width: 16}}
budget: {{full_epochs: 6}}
grid: {{selector: [{", ".join(sorted(DISTILLERS))}], regime: [hl], ipc: [1, 3], seed: [0]}}
selectors: {{sre2l: {{iterations: 5}}, cda: {{iterations: 5}}, rded: {{mipc: 12}}, ca2d: {{mipc: 12}}}}
"""


@pytest.mark.parametrize("ipc", (1, 3))
@pytest.mark.parametrize("name", sorted(DISTILLERS))
def test_distiller_contract(name, ipc, tmp_path_factory):
    """Every registered distiller, through the real stage: IPC uint8 images per class, labels sorted, seeded."""
    trial = next(t for t in expand(parse_spec(DISTILL_SPEC)) if t.selector.name == name and t.ipc == ipc)
    store = ArtifactStore(tmp_path_factory.mktemp(f"distill-{name}-{ipc}"))
    stages.build(subset_key(trial), store)
    splits = load_splits(trial.dataset)
    x, y, idx = stages.load_training_set(subset_key(trial), store, splits)
    assert idx is None and x.dtype == np.uint8 and x.shape == (10 * ipc, *splits.image_shape)
    assert np.array_equal(y, np.repeat(np.arange(10), ipc))
    again = ArtifactStore(tmp_path_factory.mktemp(f"distill-{name}-{ipc}-again"))
    stages.build(subset_key(trial), again)
    assert np.array_equal(stages.load_training_set(subset_key(trial), again, splits)[0], x)
