"""Tiny data sets in the on-disk formats ddsweep reads, written by the tests themselves (nothing is downloaded)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def images(rng, labels: list[int]) -> np.ndarray:
    """(N, 3072) uint8 rows as CIFAR stores them: red, green, blue 32x32 planes; class k has level 20 k."""
    x = (
        rng.integers(0, 8, (len(labels), 3, 32, 32), dtype=np.uint8)
        + (20 * np.asarray(labels, np.uint8))[:, None, None, None]
    )
    return x.reshape(len(labels), 3072)


def dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the protocol of the published Python 2 pickles


def make_cifar10(root: Path, per_class_train: int = 15, per_class_test: int = 3) -> dict:
    data = root / "cifar-10-batches-py"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    labels = [c for c in range(10) for _ in range(per_class_train)]
    rng.shuffle(labels)
    x = images(rng, labels)
    written = {"train_x": [], "train_y": []}
    for b, part in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        batch = {"batch_label": f"training batch {b} of 5", "labels": [labels[i] for i in part], "data": x[part]}
        batch["filenames"] = [f"img{i}.png" for i in part]
        dump(data / f"data_batch_{b}", batch)
        written["train_x"].append(x[part])
        written["train_y"] += [labels[i] for i in part]
    test_labels = [c for c in range(10) for _ in range(per_class_test)]
    tx = images(rng, test_labels)
    dump(data / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": test_labels, "data": tx})
    dump(data / "batches.meta", {"label_names": names, "num_cases_per_batch": 30, "num_vis": 3072})
    written.update(train_x=np.concatenate(written["train_x"]), test_x=tx, test_y=test_labels, names=names)
    return written


def make_cifar100(root: Path, per_class_train: int = 12, per_class_test: int = 2) -> dict:
    data = root / "cifar-100-python"
    data.mkdir(parents=True)
    rng = np.random.default_rng(1)
    fine = [c for c in range(100) for _ in range(per_class_train)]
    x = rng.integers(0, 255, (len(fine), 3072), dtype=np.uint8)
    dump(data / "train", {"fine_labels": fine, "coarse_labels": [c // 5 for c in fine], "data": x})
    test = [c for c in range(100) for _ in range(per_class_test)]
    tx = rng.integers(0, 255, (len(test), 3072), dtype=np.uint8)
    dump(data / "test", {"fine_labels": test, "coarse_labels": [c // 5 for c in test], "data": tx})
    names = [f"class{c:03d}" for c in range(100)]
    dump(data / "meta", {"fine_label_names": names, "coarse_label_names": [f"super{c}" for c in range(20)]})
    return {"x": x, "y": np.asarray(fine), "tx": tx, "ty": np.asarray(test), "names": names}


def make_tinyimagenet(
    root: Path, classes: int = 4, per_class: int = 12, val_per_class: int = 3, size: int = 64, wnids_txt: bool = True
) -> dict:
    """Tiny ImageNet as its zip unpacks: train/<wnid>/images/<wnid>_<i>.JPEG (+ the boxes file), val/images/
    val_<i>.JPEG with val/val_annotations.txt, wnids.txt, an unlabelled test/. Class k (sorted wnid order) is a
    flat colour (30 k, 255 - 30 k, 60) plus a bright square, so decoding and class order can be checked."""
    from PIL import Image

    data = root / "tiny-imagenet-200"
    wnids = [f"n{(613 * k + 3) % 1009:08d}" for k in range(classes)]  # unique, not in sorted order
    order = {w: k for k, w in enumerate(sorted(wnids))}

    def image(w: str) -> Image.Image:
        k = order[w]
        arr = np.zeros((size, size, 3), np.uint8)
        arr[:] = (30 * k % 256, (255 - 30 * k) % 256, 60)
        arr[size // 4 : size // 2, size // 4 : size // 2] = 250
        return Image.fromarray(arr)

    for w in wnids:
        (data / "train" / w / "images").mkdir(parents=True)
        (data / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(per_class):
            image(w).save(data / "train" / w / "images" / f"{w}_{i}.JPEG", quality=95)
    (data / "val" / "images").mkdir(parents=True)
    lines = []
    for i in range(val_per_class * classes):
        w = wnids[i % classes]
        image(w).save(data / "val" / "images" / f"val_{i}.JPEG", quality=95)
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t{size - 1}\t{size - 1}")
    (data / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (data / "test" / "images").mkdir(parents=True)
    image(wnids[0]).save(data / "test" / "images" / "test_0.JPEG")
    if wnids_txt:
        (data / "wnids.txt").write_text("\n".join(wnids) + "\n")
    return {"wnids": sorted(wnids), "val": [order[wnids[i % classes]] for i in range(val_per_class * classes)]}


def make_root(name: str, root: Path, per_class: int = 12) -> None:
    """A small tree of data set `name` (a registered data set that needs a root) under `root`, with
    `per_class` train images per class (imagefolder: 12 whatever it is)."""
    if name == "imagefolder":
        from PIL import Image

        for split in ("train", "val"):
            for c in ("a", "b"):
                (root / split / c).mkdir(parents=True)
                for i in range(12):
                    Image.new("RGB", (10, 12), (i * 20, 0, 0)).save(root / split / c / f"{i}.png")
    elif name == "cifar10":
        make_cifar10(root, per_class_train=per_class)
    elif name == "cifar100":
        make_cifar100(root, per_class_train=per_class)
    elif name == "tinyimagenet":
        classes = 200 if per_class > 12 else 4  # a sweep's validation: all classes, tiny images (never decoded)
        make_tinyimagenet(root, classes=classes, per_class=per_class, val_per_class=1, size=8 if classes > 4 else 64)
    else:
        raise KeyError(f"tests/datafiles.py cannot write data set {name!r} yet: add it to make_root")
