"""Stored SL+KD labels as artifacts (docs/methods.md §9): one `kd_epoch` stage per epoch, one file (or two, top-k) per
epoch, equal to the online teacher up to fp16, read one epoch at a time, resumed per epoch, shared across budgets."""

from __future__ import annotations

import gc
import weakref
from dataclasses import replace

import numpy as np
import pytest
import torch

from workers import stages
from workers.artifacts import ArtifactStore, clear_process_cache
from workers.config import BudgetConfig, DatasetConfig, Named, TeacherConfig, TrainConfig, TrialConfig, _frozen_options
from workers.data import load_splits
from workers.graph import kd_epoch_keys, kd_labels_key, requires, stage_deps, subset_key, teacher_key, train_epochs
from workers.kd_labels import StoredLabels
from workers.regimes import KDViews, reconstruct_topk, topk_uniform
from workers.stages import load_training_set
from workers.teacher import load_teacher
from workers.train import Tensors, channel_stats
from workers.trial import TrialContext, run_trial

DATASET = DatasetConfig(
    "digits", None, _frozen_options({"image_size": 8, "minival_per_class": 10, "test_fraction": 0.2})
)
ARCH = {"depth": 2, "width": 16, "norm": "instance"}


def trial(**train) -> TrialConfig:
    return TrialConfig(
        dataset=DATASET,
        student=Named.make("convnet", ARCH),
        selector=Named.make("random"),
        regime="sl_kd",
        ipc=2,
        seed=4,
        budget=BudgetConfig("epochs", 3),
        train=TrainConfig(batch_size=8, eval_points=1, kd_backend="stored", temperature=4.0, **train),
        teacher=TeacherConfig(arch=Named.make("convnet", ARCH), epochs=6, min_top1_factor=2.0),
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    store = ArtifactStore(tmp_path_factory.mktemp("kd_store"))
    t = trial()
    for k in requires(t):
        stages.build(k, store)
    return store, t


def test_one_stage_and_one_file_per_epoch(built):
    store, t = built
    key = kd_labels_key(t)
    assert key in requires(t) and train_epochs(t) == 3 == key.cfg["epochs"]
    epochs = kd_epoch_keys(key)
    assert stage_deps(key) == epochs and len(epochs) == 3
    assert set(stage_deps(epochs[0])) == {subset_key(t), teacher_key(t.dataset, t.teacher)}
    for e, k in enumerate(epochs):
        m = store.manifest(k)
        assert list(m["files"]) == ["logits.npy"] and m["epoch"] == e and m["bytes"] == 20 * 10 * 2
    assert store.manifest(key)["bytes"] == 3 * 20 * 10 * 2
    # an online trial and an hl trial need no labels
    assert kd_labels_key(replace(t, train=replace(t.train, kd_backend="online"))) is None
    assert kd_labels_key(replace(t, regime="hl")) is None


def test_stored_epochs_equal_the_online_teacher_up_to_fp16(built):
    store, t = built
    splits = load_splits(t.dataset)
    x, y, ids = load_training_set(subset_key(t), store, splits)
    mean, std = channel_stats(splits.train_x, "cpu")
    data = Tensors.of(x, y, mean, std, ids=ids)
    teacher = load_teacher(teacher_key(t.dataset, t.teacher), store, "cpu")
    labels = StoredLabels.of(kd_labels_key(t), store)
    for e in range(3):
        view = KDViews(len(y), 8, t.seed, t.train.kd_min_scale, "cpu", ids=ids).mixed(data, torch.arange(len(y)), e)
        with torch.no_grad():
            online = teacher(view)
        (stored,) = labels.epoch(e)
        assert stored.dtype == torch.float16 and online.abs().max() > 1.0
        torch.testing.assert_close(stored.float(), online, rtol=2**-10, atol=1e-3)


def test_topk_round_trip(built):
    store, t = built
    k = 3
    top = replace(t, train=replace(t.train, kd_topk=k))
    key = kd_labels_key(top)
    assert key != kd_labels_key(t)
    stages.build(key, store)
    full, part = StoredLabels.of(kd_labels_key(t), store), StoredLabels.of(key, store)
    assert part.bytes == 3 * 20 * k * (2 + 2)
    for e in range(3):
        (logits,) = full.epoch(e)
        values, classes = part.epoch(e)
        assert values.dtype == torch.float16 and classes.dtype == torch.int16
        want = logits.topk(k, dim=1)
        assert torch.equal(values, want.values) and torch.equal(classes.long(), want.indices)
        rebuilt = reconstruct_topk(values.float(), classes.long(), 10)
        assert torch.equal(rebuilt.gather(1, classes.long()), values.float())
        missing = torch.ones_like(rebuilt, dtype=torch.bool).scatter(1, classes.long(), False)
        assert torch.equal(rebuilt[missing], values.float().min(1, keepdim=True).values.expand(-1, 10)[missing])
    # the uniform alternative keeps the exact top-k probabilities and sums to one
    (logits,) = full.epoch(0)
    p = topk_uniform(logits.float(), k, 4.0)
    exact = torch.softmax(logits.float() / 4.0, dim=1)
    torch.testing.assert_close(p.sum(1), torch.ones(20))
    top_idx = exact.topk(k, dim=1).indices
    torch.testing.assert_close(p.gather(1, top_idx), exact.gather(1, top_idx))


def test_training_reads_one_epoch_at_a_time(built):
    store, t = built
    labels = StoredLabels.of(kd_labels_key(t), store)
    first = weakref.ref(labels.epoch(0)[0])
    labels.epoch(0)
    assert first() is not None  # the current epoch stays
    labels.epoch(1)
    gc.collect()
    assert first() is None  # the previous one is released before the next is read


def test_a_longer_budget_reuses_the_epochs_and_a_lost_epoch_is_rebuilt_alone(built):
    store, t = built
    longer = replace(t, budget=BudgetConfig("epochs", 5))
    key = kd_labels_key(longer)
    assert key.cfg["epochs"] == 5 and kd_epoch_keys(key)[:3] == kd_epoch_keys(kd_labels_key(t))
    builds = {k: store.manifest(k)["build"] for k in kd_epoch_keys(kd_labels_key(t))}
    stages.build(key, store)
    assert all(store.manifest(k)["build"] == b for k, b in builds.items())
    lost = kd_epoch_keys(key)[1]
    (store.path(lost) / "logits.npy").write_bytes(b"corrupted")
    clear_process_cache()
    labels = StoredLabels.of(key, store)
    (again,) = labels.epoch(1)
    assert store.verify(lost) and again.shape == (20, 10)
    others = [k for k in kd_epoch_keys(key) if k != lost and k in builds]
    assert all(store.manifest(k)["build"] == builds[k] for k in others)


def test_a_stored_trial_matches_its_online_twin(tmp_path):
    """Through run_trial: the stored trial replays the artifact (its bytes are in the row) and lands where the
    online one does (the labels differ only by fp16 rounding)."""
    t = trial()
    on = run_trial(replace(t, train=replace(t.train, kd_backend="online")), TrialContext(artifacts_root=tmp_path))
    st = run_trial(t, TrialContext(artifacts_root=tmp_path))
    assert on["soft_label_bytes"] == 0 and st["soft_label_bytes"] == 3 * 20 * 10 * 2
    assert st["loss"] == pytest.approx(on["loss"], rel=0.02) and abs(st["top1"] - on["top1"]) <= 0.03
    assert np.isfinite(st["loss"])
