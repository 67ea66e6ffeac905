"""imagefolder on a tiny tree built here: class order, split, decoding, cache, clear errors."""

import numpy as np
import pytest
from PIL import Image

from workers.data import DataError, imagefolder


def make_tree(root, classes=("n02", "n01", "n03"), per_class=14, val=3, size=(20, 12)):
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val)):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                arr = np.full((size[1], size[0], 3), 40 * k, np.uint8) + rng.integers(
                    0, 10, (size[1], size[0], 3), dtype=np.uint8
                )
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    return root


def test_tree_loads_with_sorted_classes_and_a_held_out_minival(tmp_path, monkeypatch):
    monkeypatch.setenv("DDSWEEP_DATA_CACHE", str(tmp_path / "cache"))
    root = make_tree(tmp_path / "data")
    s = imagefolder.load(str(root), image_size=8, minival_per_class=4)
    assert s.class_names == ("n01", "n02", "n03")
    assert s.train_x.shape == (30, 3, 8, 8) and s.train_x.dtype == np.uint8
    assert np.bincount(s.minival_y).tolist() == [4, 4, 4] and len(s.test_y) == 9
    # class k of the sorted order has pixel level 40 * (original index): n01 was written second (k=1)
    assert abs(float(s.train_x[s.train_y == 0].mean()) - 44.5) < 3
    d = imagefolder.describe(str(root), image_size=8, minival_per_class=4)
    assert d["train_class_sizes"] == [10, 10, 10] and d["num_train"] == 30
    assert any((tmp_path / "cache").iterdir())


def test_mismatched_classes_and_missing_folders_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("DDSWEEP_DATA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="no train/ folder"):
        imagefolder.load(str(tmp_path), image_size=8)
    root = make_tree(tmp_path / "d2")
    (root / "val" / "n09").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "val" / "n09" / "a.png")
    with pytest.raises(DataError, match="different classes"):
        imagefolder.load(str(root), image_size=8)


def test_a_crash_while_decoding_leaves_no_cache_and_the_next_load_builds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DDSWEEP_DATA_CACHE", str(tmp_path / "cache"))
    root = make_tree(tmp_path / "data")
    calls = []
    real = imagefolder._decode

    def crash_on_val(files, size):
        calls.append(len(files))
        if len(calls) == 2:  # train decoded and saved, val not yet
            raise KeyboardInterrupt("killed while decoding")
        return real(files, size)

    monkeypatch.setattr(imagefolder, "_decode", crash_on_val)
    with pytest.raises(KeyboardInterrupt):
        imagefolder._arrays(root, 8)
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-written, not even hidden
    monkeypatch.setattr(imagefolder, "_decode", real)
    _, cache = imagefolder._arrays(root, 8)
    assert sorted(p.name for p in cache.iterdir()) == ["done", "train_x.npy", "train_y.npy", "val_x.npy", "val_y.npy"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.name]
