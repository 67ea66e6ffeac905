"""tinyimagenet from a tiny tree in Tiny ImageNet's own layout written here, through imagefolder's sharded cache
(issue #13, item 3)."""

from __future__ import annotations

import numpy as np
import pytest
from datafiles import make_tinyimagenet

from orchestrator.grid import expand, stages_for
from orchestrator.spec import SpecError, parse_spec
from workers.artifacts import ArtifactStore
from workers.data import DataError, tinyimagenet


@pytest.fixture(autouse=True)
def fresh_listing():
    tinyimagenet.cache_listing.cache_clear()


def test_tiny_imagenet_round_trips_with_sorted_wnids_and_val_labels_from_the_annotations(tmp_path):
    w = make_tinyimagenet(tmp_path, classes=4, per_class=12, val_per_class=3)
    store = ArtifactStore(tmp_path / "store")
    s = tinyimagenet.load(str(tmp_path), store=store, minival_per_class=2, shard_size=7)
    assert s.class_names == tuple(w["wnids"]) and s.image_shape == (3, 64, 64) and s.train_x.dtype == np.uint8
    assert np.bincount(s.train_y).tolist() == [10] * 4 and np.bincount(s.minival_y).tolist() == [2] * 4
    assert s.test_y.tolist() == w["val"]  # val/ in annotation order, labelled by val_annotations.txt
    # decoded pixels: class k is the colour (30 k, 255 - 30 k, 60) with a bright square (JPEG: within a few levels)
    for x, y in ((s.train_x, s.train_y), (s.test_x, s.test_y), (s.minival_x, s.minival_y)):
        for k in range(4):
            img = np.asarray(x[int(np.flatnonzero(y == k)[0])], dtype=int)
            assert np.abs(img[:, 50, 50] - [30 * k, 255 - 30 * k, 60]).max() <= 4
            assert img[:, 20, 20].min() >= 240
    # one cache of shards in the artifact store (40 train rows in shards of 7: 6 of them), decoded once
    assert len(list((tmp_path / "store" / "shard").iterdir())) == 6 + 2 + 2  # train, minival (8), val (12)
    assert len(list((tmp_path / "store" / "cache").iterdir())) == 1
    d = tinyimagenet.describe(str(tmp_path / "tiny-imagenet-200"), minival_per_class=2)
    assert {k: d[k] for k in ("class_names", "train_class_sizes", "num_train", "num_test", "image_shape")} == {
        "class_names": w["wnids"],
        "train_class_sizes": [10] * 4,
        "num_train": 40,
        "num_test": 12,
        "image_shape": [3, 64, 64],
    }
    assert d["cache"]["rule"]["layout"] == "tinyimagenet" and d["cache_bytes"] == (40 + 8 + 12) * 3 * 64 * 64
    small = tinyimagenet.load(str(tmp_path), store=store, image_size=32, minival_per_class=2)
    assert small.train_x.shape[1:] == (3, 32, 32) and np.array_equal(small.train_y, s.train_y)
    k = int(small.train_y[0])  # the shorter side resized to 32: the same colours, the square at a quarter
    assert np.abs(np.asarray(small.train_x[0][:, 25, 25], dtype=int) - [30 * k, 255 - 30 * k, 60]).max() <= 6


def test_layout_mistakes_are_clear_errors_that_say_what_to_put_where(tmp_path):
    with pytest.raises(DataError) as info:
        tinyimagenet.describe(str(tmp_path))
    assert "has no train/ (nor tiny-imagenet-200/train/) folder" in str(info.value)
    assert "tiny-imagenet-200.zip" in str(info.value) and "never downloads" in str(info.value)
    make_tinyimagenet(tmp_path)
    data = tmp_path / "tiny-imagenet-200"
    ann = data / "val" / "val_annotations.txt"
    good = ann.read_text()
    ann.write_text(good.replace(good.split("\t")[1], "n99999999", 1))
    with pytest.raises(DataError, match=r"val_annotations.txt line 1: .* names no class of train/"):
        tinyimagenet.describe(str(tmp_path))
    tinyimagenet.cache_listing.cache_clear()
    ann.unlink()
    with pytest.raises(DataError, match="has no val/val_annotations.txt"):
        tinyimagenet.describe(str(tmp_path))
    ann.write_text(good)
    (data / "wnids.txt").write_text("n00000001\n")
    with pytest.raises(DataError, match="wnids.txt and the folders of .* name other classes"):
        tinyimagenet.describe(str(tmp_path))


SWEEP = """
name: t
dataset: {{name: tinyimagenet, root: {root}, image_size: 16, minival_per_class: 2}}
student: {{arch: convnet, depth: 2, width: 8}}
teacher: {{arch: convnet, depth: 2, width: 8, epochs: 2, min_top1_factor: 0}}
budget: {{epochs: 2}}
grid: {{selector: [random, herding], regime: [hl, sl], ipc: [{ipc}], seed: [0]}}
train: {{batch_size: 16}}
"""


def test_a_tiny_imagenet_sweep_validates_and_its_trials_train(tmp_path):
    from workers.trial import TrialContext, run_trial

    make_tinyimagenet(tmp_path / "data", wnids_txt=False)
    with pytest.raises(SpecError) as info:
        parse_spec(SWEEP.format(root=tmp_path / "data", ipc=11))
    assert any(
        p.startswith("grid.ipc[0]: 11 is more than the smallest class has (10 train") for p in info.value.problems
    )
    trials = expand(parse_spec(SWEEP.format(root=tmp_path / "data", ipc=3)))
    kinds = {k.kind for k in stages_for(trials)}
    assert {"shard", "cache", "teacher", "features", "subset"} <= kinds  # the data set is a stage like ImageNet's
    for t in (trials[1], trials[3]):  # random-sl, herding-sl: a teacher, its labels, its features
        out = run_trial(t, TrialContext(artifacts_root=tmp_path / "artifacts", num_threads=1))
        assert out["dataset"] == "tinyimagenet" and out["images_seen"] == 2 * 12 and 0.0 <= out["top1"] <= 1.0
