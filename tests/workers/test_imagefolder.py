"""imagefolder on trees built here: class order, split, the decode rule, ImageNet's layouts and quirks, the sharded
cache in the artifact store (checksums, rebuilds), and the checks `describe` makes before launch (issue #10.7/8)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from imagetrees import dataset, dataset_options, make_tree, wnids
from PIL import Image

from workers.artifacts import ArtifactStore, clear_process_cache
from workers.data import DataError, imagefolder, load_splits
from workers.graph import cache_key, shard_keys


def load(root, store, **given):
    return load_splits(dataset(root, **given), store)


def test_tree_loads_with_sorted_classes_and_a_held_out_minival(tmp_path):
    root = make_tree(tmp_path / "data")
    store = ArtifactStore(tmp_path / "store")
    s = load(root, store, image_size=8, minival_per_class=4, shard_size=7)
    assert s.class_names == ("n01", "n02", "n03")
    assert s.train_x.shape == (30, 3, 8, 8) and s.train_x.dtype == np.uint8
    assert np.bincount(s.minival_y).tolist() == [4, 4, 4] and len(s.test_y) == 9
    x = s.train_x[np.arange(30)]
    # class k of the sorted order is the tree's class written second (n01), whose colour is colour(1)
    from imagetrees import colour

    assert np.abs(x[s.train_y == 0].reshape(10, 3, -1).mean(axis=(0, 2)) - colour(1)).max() < 20
    d = imagefolder.describe(str(root), **dataset_options(image_size=8, minival_per_class=4))
    assert d["train_class_sizes"] == [10, 10, 10] and d["num_train"] == 30
    # the cache lives in the store: 30 + 12 + 9 rows in shards of 7, merged by the cache artifact
    key = cache_key(dataset(root, image_size=8, minival_per_class=4, shard_size=7))
    assert [k.cfg["split"] for k in shard_keys(key)].count("train") == 5 and store.verify(key)
    m = store.manifest(key)
    assert m["splits"]["train"] == {"rows": 30, "files": 30, "shape": [3, 8, 8]} and m["class_names"] == [
        "n01",
        "n02",
        "n03",
    ]


def test_the_minival_split_is_the_one_of_before(tmp_path):
    """Minival membership is the old rule's (numpy generator 20240601, per class): same files held out."""
    root = make_tree(tmp_path / "data", per_class=9)
    lst = imagefolder.listing(str(root), 3, None)
    rng = np.random.default_rng(20240601)
    want = []
    for c in ("n01", "n02", "n03"):
        files = sorted((root / "train" / c).iterdir())
        want += [f"train/{c}/{files[i].name}" for i in sorted(rng.permutation(9)[:3])]
    assert [f.decode() for f in lst.files["minival"]] == want


def test_lazy_split_indexing_views_and_batches(tmp_path):
    root = make_tree(tmp_path / "data", per_class=12)
    s = load(root, ArtifactStore(tmp_path / "store"), image_size=8, minival_per_class=2, shard_size=4)
    x = s.train_x
    every = x[np.arange(len(x))]
    assert np.array_equal(x[3], every[3]) and np.array_equal(x[2:9], every[2:9])
    idx = np.array([17, 2, 2, 29, 0])
    assert np.array_equal(x[idx], every[idx])  # unsorted, repeated, across shards
    mask = s.train_y == 1
    assert np.array_equal(x[mask], every[mask])
    sub = x.take(idx)
    assert sub.shape == (5, 3, 8, 8) and np.array_equal(sub[np.arange(5)], every[idx])
    assert np.array_equal(np.concatenate([b for _, b in x.batches(7)]), every)
    with pytest.raises(TypeError, match="not materialised implicitly"):
        np.asarray(x)
    mean, std = x.channel_stats()  # exact integer sums of the build = a float64 pass over the images
    f = every.astype(np.float64) / 255
    np.testing.assert_allclose(mean, f.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, f.std(axis=(0, 2, 3), ddof=1), rtol=1e-9)


def test_decode_is_torchvisions_resize_and_center_crop(tmp_path):
    """Resize(int) + CenterCrop of torchvision on the PIL image, for landscape and portrait, both filters."""
    from torchvision import transforms

    rng = np.random.default_rng(1)
    for i, (w, h) in enumerate([(500, 375), (375, 500), (333, 500), (64, 64)]):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=95)
        for interp, mode in (
            ("bilinear", transforms.InterpolationMode.BILINEAR),
            ("bicubic", transforms.InterpolationMode.BICUBIC),
        ):
            for resize, crop in ((256, 224), (73, 64), (40, 40)):
                tv = transforms.Compose([transforms.Resize(resize, interpolation=mode), transforms.CenterCrop(crop)])
                with Image.open(path) as im:
                    want = np.asarray(tv(im.convert("RGB"))).transpose(2, 0, 1)
                got = imagefolder.decode(path, resize, crop, interp)
                assert got.shape == (3, crop, crop) and np.array_equal(got, want), (w, h, interp, resize, crop)


def test_quirks_png_named_jpeg_cmyk_greyscale_palette_are_converted_to_rgb(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "png_inside.JPEG", format="PNG")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.JPEG", format="JPEG", quality=95)
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "grey.JPEG", format="JPEG", quality=95)
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(np.dstack([rgb, rgb[:, :, :1]])).save(tmp_path / "rgba.png")
    for name in ("png_inside.JPEG", "cmyk.JPEG", "grey.JPEG", "palette.png", "rgba.png"):
        got = imagefolder.decode(tmp_path / name, 30, 30)
        with Image.open(tmp_path / name) as im:
            want = np.asarray(im.convert("RGB").resize((40, 30)).crop((5, 0, 35, 30))).transpose(2, 0, 1)
        assert got.shape == (3, 30, 30) and np.array_equal(got, want), name
    assert np.array_equal(imagefolder.decode(tmp_path / "png_inside.JPEG", 30, 30), rgb[:, 5:35].transpose(2, 0, 1))


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_an_unreadable_image_fails_the_build_naming_the_file(tmp_path):
    """Issue #10.3: PIL's `OSError: Truncated File Read` said nothing of which file; now the error names it."""
    root = make_tree(tmp_path / "data", size=(64, 48), ext=".JPEG")
    bad = root / "train" / "n02" / "n02_5.JPEG"
    truncate(bad)
    with pytest.raises(DataError) as err:
        load(root, ArtifactStore(tmp_path / "store"), image_size=16, minival_per_class=2)
    assert str(bad) in str(err.value) and "skip_bad_files" in str(err.value)
    (root / "train" / "n01" / "n01_2.JPEG").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="n01_2.JPEG"):
        load(root, ArtifactStore(tmp_path / "store2"), image_size=16, minival_per_class=2)


def test_skip_bad_files_skips_and_counts_them(tmp_path):
    root = make_tree(tmp_path / "data", size=(64, 48), ext=".JPEG")
    truncate(root / "train" / "n02" / "n02_5.JPEG")
    (root / "val" / "n03" / "val_1.JPEG").write_bytes(b"\xff\xd8\xff garbage")
    store = ArtifactStore(tmp_path / "store")
    ds = dataset(root, image_size=16, minival_per_class=2, skip_bad_files=True)
    s = load_splits(ds, store)
    m = store.manifest(cache_key(ds))
    assert m["bad_files"] == 2 and sorted(m["bad_file_names"]) == ["train/n02/n02_5.JPEG", "val/n03/val_1.JPEG"]
    lst = imagefolder.listing(str(root), 2, None)
    in_minival = b"train/n02/n02_5.JPEG" in set(lst.files["minival"])
    assert len(s.train_y) + len(s.minival_y) == 3 * 14 - 1 and len(s.test_y) == 8
    assert (np.bincount(s.minival_y).tolist() == [2, 1, 2]) == in_minival
    assert np.bincount(s.test_y).tolist() == [3, 3, 2]
    x = s.train_x[np.arange(len(s.train_y))]
    assert (x.reshape(len(x), -1).max(axis=1) > 0).all()  # no zero-filled hole reaches a reader


def test_hidden_and_non_image_files_are_skipped_before_launch(tmp_path):
    """Issue #10.7: macOS `._*` files (named .jpg but AppleDouble metadata) and .DS_Store used to be decoded."""
    root = make_tree(tmp_path / "data", ext=".jpg")
    (root / "train" / "n01" / "._n01_0.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "train" / "n01" / ".DS_Store").write_bytes(b"junk")
    (root / "val" / "n02" / "._val_0.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "train" / "n03" / "notes.txt").write_text("not an image")
    facts = imagefolder.describe(str(root), **dataset_options(image_size=8, minival_per_class=2))
    assert facts["train_class_sizes"] == [12, 12, 12] and facts["ignored_files"] == 4
    s = load(root, ArtifactStore(tmp_path / "store"), image_size=8, minival_per_class=2)
    assert len(s.train_y) == 36 and len(s.test_y) == 9


@pytest.mark.parametrize(
    "damage,match",
    [
        ("empty_val_class", r"class folder .*val/n02 has no images"),
        ("val_class_not_in_train", r"val/ has \['n09'\] that train/ lacks"),
        ("train_class_not_in_val", r"val/ has no images of \['n03'\]"),
        ("empty_train_class", r"class folder .*train/n01 has no images .*2 hidden"),
        ("no_val", "has no val/ folder"),
        ("no_train", "has no train/ folder"),
    ],
)
def test_layout_problems_are_found_before_launch_with_the_fix(tmp_path, damage, match):
    """Issue #10.7: describe (called by validate/plan/run, torch-free) checks the layout; it listed train/ only."""
    import shutil

    root = make_tree(tmp_path / "data")
    if damage == "empty_val_class":
        for f in (root / "val" / "n02").iterdir():
            f.unlink()
    elif damage == "val_class_not_in_train":
        (root / "val" / "n09").mkdir()
        Image.new("RGB", (8, 8)).save(root / "val" / "n09" / "a.png")
    elif damage == "train_class_not_in_val":
        shutil.rmtree(root / "val" / "n03")
    elif damage == "empty_train_class":
        for f in (root / "train" / "n01").iterdir():
            f.unlink()
        (root / "train" / "n01" / "._x.png").write_bytes(b"x")
        (root / "train" / "n01" / "x.txt").write_bytes(b"x")
    elif damage == "no_val":
        shutil.rmtree(root / "val")
    elif damage == "no_train":
        shutil.rmtree(root / "train")
    imagefolder.listing.cache_clear()
    with pytest.raises(DataError, match=match):
        imagefolder.describe(str(root), **dataset_options(image_size=8, minival_per_class=2))


SMALL = """
name: small
dataset: {{name: imagefolder, root: {root}, image_size: 8, minival_per_class: 2}}
student: {{arch: convnet, depth: 2, width: 8}}
budget: {{epochs: 1}}
grid: {{selector: [random], regime: [hl], ipc: [1], seed: [0]}}
"""


def test_a_class_smaller_than_minival_names_minival_not_a_negative_ipc(tmp_path):
    """Issue #10.8: `1 is more than the smallest class has (-1 train images in class 'fox'); use ipc <= -1`."""
    from orchestrator.spec import SpecError, parse_spec

    root = make_tree(tmp_path / "data", classes=("cat", "dog", "fox"), per_class=5)
    for f in sorted((root / "train" / "fox").iterdir())[1:]:
        f.unlink()
    with pytest.raises(SpecError) as err:
        parse_spec(SMALL.format(root=root))
    msg = str(err.value)
    assert "-1" not in msg and "ipc" not in msg
    assert "dataset.minival_per_class: class 'fox' has 1 train image, too few to hold out 2" in msg
    assert "add images to train/fox/" in msg
    for f in sorted((root / "train" / "dog").iterdir())[2:]:
        f.unlink()  # dog: 2 images, fox: 1; minival_per_class 2 fails on dog first, which can go to 1
    with pytest.raises(SpecError, match="class 'dog' has 2 train images.*to at most 1, or add images to train/dog/"):
        imagefolder.listing.cache_clear()
        parse_spec(SMALL.format(root=root).replace("name: small", "name: small2"))


@pytest.mark.parametrize("labels", ["csv", "devkit"])
def test_flat_val_with_a_label_file_gives_the_class_folder_splits(tmp_path, labels):
    classes = wnids(4)[::-1]  # written in reverse: the class order must come from sorting, not from the files
    folders = make_tree(tmp_path / "folders", classes=classes, per_class=6, val=3, flat_val=None, ext=".JPEG")
    flat = make_tree(tmp_path / "flat", classes=classes, per_class=6, val=3, flat_val=labels, ext=".JPEG")
    path = flat / ("LOC_val_solution.csv" if labels == "csv" else "ILSVRC2012_devkit_t12")
    a = load(folders, ArtifactStore(tmp_path / "sa"), image_size=8, minival_per_class=1)
    b = load(flat, ArtifactStore(tmp_path / "sb"), image_size=8, minival_per_class=1, val_labels=str(path))
    assert a.class_names == b.class_names == tuple(sorted(classes))
    assert np.bincount(b.test_y).tolist() == [3, 3, 3, 3]
    # every flat val image carries its class's colour: the label file was read, not assumed
    from imagetrees import colour

    xb = b.test_x[np.arange(len(b.test_y))].astype(float)
    for k, c in enumerate(b.class_names):
        got = xb[b.test_y == k][:, :, 4:, 4:].mean(axis=(0, 2, 3))  # away from the corner mark
        assert np.abs(got - colour(classes.index(c))).max() < 25, c
    if labels == "devkit":  # the ground-truth file itself (meta.mat beside it) works too
        gt = path / "data" / "ILSVRC2012_validation_ground_truth.txt"
        c = load(flat, ArtifactStore(tmp_path / "sc"), image_size=8, minival_per_class=1, val_labels=str(gt))
        assert np.array_equal(c.test_y, b.test_y)


def test_flat_val_problems_name_the_file_and_the_fix(tmp_path):
    flat = make_tree(tmp_path / "flat", classes=wnids(3), per_class=4, val=2, flat_val="csv", ext=".JPEG")
    with pytest.raises(DataError, match="val_labels: .*flat .*LOC_val_solution.csv"):
        imagefolder.describe(str(flat), **dataset_options(image_size=8, minival_per_class=1))
    csv = flat / "LOC_val_solution.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")  # one image without a label
    imagefolder.listing.cache_clear()
    with pytest.raises(DataError, match="has no label for .*ILSVRC2012_val_"):
        imagefolder.describe(str(flat), **dataset_options(image_size=8, minival_per_class=1, val_labels=str(csv)))
    csv.write_text("\n".join(lines[:-1] + [lines[-1].split(",")[0] + ",n12345678 1 2 3 4"]) + "\n")
    imagefolder.listing.cache_clear()
    with pytest.raises(DataError, match="labelled 'n12345678', which is not a class of train/"):
        imagefolder.describe(str(flat), **dataset_options(image_size=8, minival_per_class=1, val_labels=str(csv)))


def test_sizes_are_checked_and_explicit_in_the_config(tmp_path):
    root = make_tree(tmp_path / "data")
    opts = dataset_options(image_size=16, train_crop=24)
    assert (opts["train_resize"], opts["train_crop"], opts["val_resize"], opts["val_crop"]) == (24, 24, 16, 16)
    with pytest.raises(DataError, match="dataset.image_size: 16 is larger than val_crop = 12"):
        imagefolder.describe(str(root), **dataset_options(image_size=16, val_crop=12, val_resize=14))
    with pytest.raises(DataError, match="dataset.train_crop: 30 is larger than train_resize = 20"):
        imagefolder.describe(str(root), **dataset_options(image_size=16, train_resize=20, train_crop=30))


def test_a_corrupted_shard_is_detected_on_read_and_rebuilt(tmp_path, caplog):
    root = make_tree(tmp_path / "data", per_class=10)
    store = ArtifactStore(tmp_path / "store")
    ds = dataset(root, image_size=8, minival_per_class=2, shard_size=8)
    s = load_splits(ds, store)
    good = s.train_x[np.arange(len(s.train_y))]
    shard = next(k for k in shard_keys(cache_key(ds)) if k.cfg["split"] == "train" and k.cfg["index"] == 1)
    f = store.path(shard) / "images.npy"
    data = bytearray(f.read_bytes())
    data[-300:-200] = bytes(100)  # zeroed bytes in the last image of the shard: still a valid .npy
    f.write_bytes(bytes(data))
    clear_process_cache()
    imagefolder._OPEN.clear()  # as a new process
    with caplog.at_level("WARNING"):
        again = load_splits(ds, store).train_x[np.arange(len(good))]
    assert "does not match its digests; rebuilding it" in caplog.text
    assert np.array_equal(again, good) and store.verify(shard)


def test_a_shard_that_fails_its_checksums_is_rebuilt_by_the_cache_build(tmp_path):
    root = make_tree(tmp_path / "data", per_class=6)
    store = ArtifactStore(tmp_path / "store")
    ds = dataset(root, image_size=8, minival_per_class=2, shard_size=5)
    key = cache_key(ds)
    imagefolder.ensure_cache(key, store)
    first = shard_keys(key)[0]
    built = json.loads((store.path(first) / "manifest.json").read_text())["build"]
    (store.path(first) / "labels.npy").write_bytes(b"truncated")
    store.invalidate(key)  # the cache goes too: the next ensure_cache visits its shards again
    clear_process_cache()
    imagefolder.ensure_cache(key, store)
    assert store.verify(first) and store.manifest(first)["build"] != built
