"""Teachers (docs/methods.md §3): trained or loaded, measured against a floor on minival, always frozen in eval mode."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from workers import models, stages
from workers.artifacts import ArtifactStore
from workers.config import DatasetConfig, Named, TeacherConfig, _frozen_options
from workers.data import DataError, load_splits
from workers.graph import teacher_key
from workers.teacher import full_train_tensors, load_teacher, load_weights, logits_and_features, teacher_stats
from workers.train import evaluate

DATASET = DatasetConfig(
    "digits", None, _frozen_options({"image_size": 8, "minival_per_class": 10, "test_fraction": 0.2})
)
ARCH = {"depth": 2, "width": 16, "norm": "instance"}
SHAPE = (1, 8, 8)


def tcfg(**kw) -> TeacherConfig:
    return TeacherConfig(arch=Named.make("convnet", ARCH), **{"epochs": 3, **kw})


@pytest.fixture(scope="module")
def splits():
    return load_splits(DATASET)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A teacher trained by the `teacher` stage with the default floor (5x chance = 0.5 top-1 on digits)."""
    store = ArtifactStore(tmp_path_factory.mktemp("teacher_store"))
    key = teacher_key(DATASET, tcfg())
    stages.build(key, store)
    return store, key


def test_trained_teacher_beats_the_floor_and_records_its_classes(built, splits):
    store, key = built
    manifest = store.manifest(key)
    assert manifest["class_names"] == list(splits.class_names)
    floor = TeacherConfig.min_top1_factor / splits.num_classes  # default factor x chance
    assert manifest["minival_top1"] >= floor
    assert (store.path(key) / "weights.pt").is_file()
    assert store.verify(key)
    # The recorded number is the loaded teacher's minival top-1.
    teacher = load_teacher(key, store, "cpu")
    _, minival = full_train_tensors(splits, "cpu")
    assert evaluate(teacher, minival)["top1"] == pytest.approx(manifest["minival_top1"], abs=1e-12)


def test_load_teacher_is_frozen_and_in_eval_mode(built):
    store, key = built
    teacher = load_teacher(key, store, "cpu")
    assert all(not m.training for m in teacher.modules())
    params = list(teacher.parameters())
    assert params and all(not p.requires_grad for p in params)
    out = teacher(torch.zeros(2, *SHAPE))
    assert not out.requires_grad and out.shape == (2, 10)


def test_logits_and_features_are_a_clean_eval_forward(built, splits):
    store, key = built
    teacher = load_teacher(key, store, "cpu")
    teacher.train()  # logits_and_features must switch to eval itself and restore the mode
    data, _ = full_train_tensors(splits, "cpu")
    logits, feats = logits_and_features(teacher, data, chunk=500)
    assert teacher.training
    n = len(splits.train_y)
    assert logits.shape == (n, 10) and feats.shape == (n, ARCH["width"] * 2 * 2)
    with torch.no_grad():
        teacher.eval()
        direct = teacher(data.float_batch(torch.arange(n)))
    torch.testing.assert_close(logits, direct, rtol=1e-5, atol=1e-5)
    head = teacher[-1]
    torch.testing.assert_close(feats @ head.weight.T + head.bias, logits, rtol=1e-4, atol=1e-4)


def test_missing_weights_file_raises_data_error_naming_it(tmp_path):
    missing = tmp_path / "no_such_teacher.pt"
    model = models.build("convnet", ARCH, 10, SHAPE, 0)
    with pytest.raises(DataError, match="no_such_teacher.pt"):
        load_weights(model, str(missing), 10)
    # Through the stage as well: the error reaches the caller and nothing is published.
    store = ArtifactStore(tmp_path / "store")
    key = teacher_key(DATASET, tcfg(weights=str(missing)))
    with pytest.raises(DataError) as err:
        stages.build(key, store)
    assert str(missing) in str(err.value)
    assert not store.exists(key)


def test_weights_for_another_class_count_raise_data_error(tmp_path):
    five = models.build("convnet", ARCH, 5, SHAPE, 0)
    path = tmp_path / "five_classes.pt"
    torch.save(five.state_dict(), path)
    ten = models.build("convnet", ARCH, 10, SHAPE, 0)
    with pytest.raises(DataError) as err:
        load_weights(ten, str(path), 10)
    msg = str(err.value)
    assert "10 classes" in msg and "5 outputs" in msg and str(path) in msg
    store = ArtifactStore(tmp_path / "store")
    key = teacher_key(DATASET, tcfg(weights=str(path)))
    with pytest.raises(DataError, match="10 classes"):
        stages.build(key, store)
    assert not store.exists(key)


def test_wrapped_state_dict_is_accepted(tmp_path):
    src = models.build("convnet", ARCH, 10, SHAPE, 7)
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": src.state_dict(), "epoch": 3}, path)
    dst = models.build("convnet", ARCH, 10, SHAPE, 0)
    load_weights(dst, str(path), 10)
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), k


def test_teacher_below_the_floor_is_refused(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    key = teacher_key(DATASET, tcfg(epochs=1, min_top1_factor=9.9))  # floor 0.99 top-1
    with pytest.raises(DataError, match="below the floor"):
        stages.build(key, store)
    assert not store.exists(key)
    with pytest.raises(FileNotFoundError, match="not built"):
        load_teacher(key, store, "cpu")


def test_load_teacher_refuses_another_class_order(built, tmp_path, splits):
    store, key = built
    other = ArtifactStore(tmp_path / "store")
    shutil.copytree(store.path(key), other.path(key))
    manifest_file = other.path(key) / "manifest.json"
    m = json.loads(manifest_file.read_text())
    m["class_names"] = list(reversed(m["class_names"]))
    manifest_file.write_text(json.dumps(m))
    with pytest.raises(DataError, match="classes"):
        load_teacher(key, other, "cpu")


def test_saved_state_dict_round_trips_through_weights(built, splits, tmp_path):
    from orchestrator.spec import parse_spec

    store, key = built
    trained = load_teacher(key, store, "cpu")
    path = tmp_path / "teacher.pt"
    torch.save(trained.state_dict(), path)
    spec = parse_spec(f"""
name: roundtrip
dataset: {{name: digits}}
teacher: {{arch: convnet, depth: 2, width: 16, weights: {json.dumps(str(path))}}}
student: {{arch: convnet, depth: 2, width: 16}}
budget: {{epochs: 10}}
grid: {{selector: [random], regime: [sl], ipc: [2], seed: [0]}}
""")
    assert spec.teacher.weights == str(path)
    wkey = teacher_key(spec.dataset, spec.teacher)
    assert wkey != key
    other = ArtifactStore(tmp_path / "store")
    stages.build(wkey, other)
    loaded = load_teacher(wkey, other, "cpu")
    assert other.manifest(wkey)["minival_top1"] == pytest.approx(store.manifest(key)["minival_top1"], abs=1e-12)
    x = torch.as_tensor(np.ascontiguousarray(splits.test_x)).float()
    mean, std = x.mean() / 255.0, x.std() / 255.0
    batch = (x / 255.0 - mean) / std
    with torch.no_grad():
        a, b = trained(batch), loaded(batch)
    assert a.abs().max() > 1.0
    assert torch.equal(a, b)


def test_features_built_in_parts_equal_one_unsharded_pass(built, splits, monkeypatch, tmp_path):
    """The `features` stage concatenates its `features_part` stages; cut into 5 parts (the last one short), the
    merged array is exactly the features of one pass over the whole train split, row for row."""
    from workers import graph

    store, tkey = built
    fkey = graph.features_key(tkey)
    teacher = load_teacher(tkey, store, "cpu", raw=True)
    data, _ = full_train_tensors(splits, "cpu", teacher_stats(tcfg(), splits, "cpu"), placement="stream")
    _, whole = logits_and_features(teacher, data)
    n = len(splits.train_y)
    rows = -(-n // 5)
    monkeypatch.setattr(graph, "INFERENCE_PART_ROWS", rows)
    parts = graph.stage_deps(fkey)
    assert [k.kind for k in parts] == ["features_part"] * 5
    assert [(k.cfg["start"], k.cfg["stop"]) for k in parts] == [(s, min(n, s + rows)) for s in range(0, n, rows)]
    merged_store = ArtifactStore(tmp_path)
    shutil.copytree(store.path(tkey), merged_store.path(tkey))  # the same teacher
    stages.build(fkey, merged_store)
    merged = np.load(merged_store.path(fkey) / "features.npy")
    assert merged.dtype == np.float16 and merged.shape == (n, ARCH["width"] * 2 * 2)
    np.testing.assert_array_equal(merged, whole.numpy().astype(np.float16))
    assert merged_store.manifest(fkey)["parts"] == 5
    # One part (the default size on digits) gives the same artifact.
    monkeypatch.setattr(graph, "INFERENCE_PART_ROWS", 65_536)
    one_store = ArtifactStore(tmp_path / "one")
    shutil.copytree(store.path(tkey), one_store.path(tkey))
    stages.build(fkey, one_store)
    np.testing.assert_array_equal(np.load(one_store.path(fkey) / "features.npy"), merged)
