"""`tinyimagenet`: Tiny ImageNet as its archive unpacks, decoded once into imagefolder's sharded cache.

Layout under `dataset.root` (or its `tiny-imagenet-200/`): `train/<wnid>/images/*.JPEG` (500 per class),
`val/images/*.JPEG` with `val/val_annotations.txt` (file, wnid, box; 50 per class); `test/` has no labels
and is not read. Classes are the sorted wnids of `train/` (torchvision's ImageFolder order); a
`wnids.txt`, when present, must list the same. Split (docs/methods.md §6.1): val is the test split;
`minival_per_class` train images per class are held out by imagefolder's fixed generator.

The images go through the same `shard` and `cache` stages as `imagefolder` (docs/design.md §4): decoded once
(RGB; 64 px is native, another `image_size` resizes the shorter side and centre-crops) into uint8 shards in
the artifact store, checked against their digests, read a batch at a time; the cache rule names this
layout (`"layout": "tinyimagenet"`), whose listing `cache_listing` gives. Never downloaded.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from workers.config import ArtifactKey
from workers.data import DataError, Splits
from workers.data.imagefolder import EXTENSIONS, Listing, open_cache, split_train

FOLDER = "tiny-imagenet-200"
LAYOUT = (
    "train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt (Tiny ImageNet's "
    "tiny-imagenet-200.zip, unzipped: http://cs231n.stanford.edu/tiny-imagenet-200.zip); ddsweep never downloads"
)


def data_folder(root: str | None) -> Path:
    """The unzipped archive: `root` itself or its tiny-imagenet-200/, with train/ and the val annotations."""
    if not root:
        raise DataError(f"dataset.root: tinyimagenet needs root: the folder that holds {FOLDER}/ ({LAYOUT})")
    base = Path(root)
    data = base / FOLDER if (base / FOLDER).is_dir() else base
    if not (data / "train").is_dir():
        raise DataError(f"dataset.root: {str(root)!r} has no train/ (nor {FOLDER}/train/) folder; expected {LAYOUT}")
    if not (data / "val" / "val_annotations.txt").is_file():
        raise DataError(f"dataset.root: {data} has no val/val_annotations.txt; expected {LAYOUT}")
    return data


def _images(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(
        e.name for e in os.scandir(folder) if not e.name.startswith(".") and Path(e.name).suffix.lower() in EXTENSIONS
    )


@lru_cache(maxsize=4)
def cache_listing(root: str, minival_per_class: int) -> Listing:
    """The rows of every split (paths relative to the data folder `root`, labels), as imagefolder lists its own."""
    data = Path(root)
    wnids = sorted(e.name for e in os.scandir(data / "train") if e.is_dir() and not e.name.startswith("."))
    if not wnids:
        raise DataError(f"dataset.root: {data / 'train'} has no class folders; expected {LAYOUT}")
    listed = data / "wnids.txt"
    if listed.is_file():
        named = sorted(w.strip() for w in listed.read_text().split() if w.strip())
        if named != wnids:
            odd = sorted(set(named) ^ set(wnids))[:5]
            raise DataError(
                f"dataset.root: {listed} and the folders of {data / 'train'} name other classes (e.g. {odd})"
            )
    train = []
    for k, w in enumerate(wnids):
        files = _images(data / "train" / w / "images")
        if not files:
            raise DataError(f"dataset.root: {data / 'train' / w / 'images'} has no images; expected {LAYOUT}")
        train.append([(f"train/{w}/images/{f}", k) for f in files])
    index = {w: k for k, w in enumerate(wnids)}
    ann = data / "val" / "val_annotations.txt"
    val = []
    for n, line in enumerate(ann.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise DataError(
                f"dataset.root: {ann} line {n}: {line[:80]!r} names no class of train/ "
                "(expected: file<TAB>wnid<TAB>box)"
            )
        if not (data / "val" / "images" / parts[0]).is_file():
            raise DataError(f"dataset.root: {data / 'val' / 'images' / parts[0]} is listed in {ann.name} but missing")
        val.append((f"val/images/{parts[0]}", index[parts[1]]))  # in the order the annotations list them
    if not val:
        raise DataError(f"dataset.root: {ann} lists no images")
    flat = [row for rows in train for row in rows]
    tr, mv = split_train([len(rows) for rows in train], minival_per_class, wnids)
    rows = {"train": [flat[i] for i in tr], "minival": [flat[i] for i in mv], "val": val}
    h = hashlib.sha256()
    files, labels = {}, {}
    for split, part in rows.items():
        for path, label in part:
            h.update(f"{split}\t{label}\t{path}\t{os.stat(data / path).st_size}\n".encode())
        files[split] = np.asarray([p.encode() for p, _ in part], dtype=bytes)
        labels[split] = np.asarray([k for _, k in part], dtype=np.int64)
    sizes = tuple(len(r) - minival_per_class for r in train)
    return Listing(tuple(wnids), files, labels, sizes, 0, h.hexdigest())


def cache_config(root: str | None, image_size: int = 64, minival_per_class: int = 10, shard_size: int = 1024) -> dict:
    """The `cache` stage's key config: imagefolder's rule with this layout (every split decoded at image_size)."""
    data = str(data_folder(root))
    lst = cache_listing(data, minival_per_class)
    return {
        "rule": {
            "root": data,
            "layout": "tinyimagenet",
            "listing": lst.digest,
            "train": [image_size, image_size],
            "val": [image_size, image_size],
            "interpolation": "bilinear",
            "skip_bad_files": False,
            "shard_size": int(shard_size),
            "minival_per_class": int(minival_per_class),
            "val_labels": None,
        },
        "splits": {split: len(lst.files[split]) for split in ("train", "minival", "val")},
    }


def describe(root: str | None = None, image_size: int = 64, minival_per_class: int = 10, shard_size: int = 1024):
    """Facts for validation and planning from the file listing alone (nothing is decoded, no torch)."""
    cache = cache_config(root, image_size, minival_per_class, shard_size)
    lst = cache_listing(cache["rule"]["root"], minival_per_class)
    return {
        "class_names": list(lst.class_names),
        "train_class_sizes": list(lst.train_sizes),
        "num_train": int(sum(lst.train_sizes)),
        "num_test": len(lst.files["val"]),
        "image_shape": [3, image_size, image_size],
        "cache": cache,
        "cache_bytes": int(sum(cache["splits"].values()) * 3 * image_size * image_size),
    }


def load(root: str | None = None, store=None, **options: Any) -> Splits:
    """The splits as sharded arrays over the cache in `store`, built first if missing (imagefolder.open_cache)."""
    if store is None:
        raise DataError("tinyimagenet reads its cache from the artifact store: load_splits(dataset, store)")
    key = ArtifactKey.make("cache", cache_config(root, **options))
    return open_cache(key, store, int(options.get("image_size", 64)))
