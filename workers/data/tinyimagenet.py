"""`tinyimagenet`: Tiny ImageNet as its archive unpacks, decoded once into a uint8 cache, never downloaded.

Layout under `dataset.root` (or its `tiny-imagenet-200/`): `train/<wnid>/images/*.JPEG` (500 per class),
`val/images/*.JPEG` with `val/val_annotations.txt` (file, wnid, box; 50 per class); `test/` has no labels
and is not read. Classes are the sorted wnids of `train/` (torchvision's ImageFolder order); a
`wnids.txt`, when present, must list the same. Split (docs/methods.md §6.1): val is the test split;
`minival_per_class` train images per class are held out by a fixed generator (seed SPLIT_SEED).

Images are decoded once (RGB; 64 px is native, another `image_size` resizes the shorter side and centre-
crops) into `$DDSWEEP_DATA_CACHE` (default `~/.cache/ddsweep`), split already applied, and memory-mapped
afterwards: 98,000 train images at 64 px are 1.2 GB of uint8 that every process on a host shares through
the page cache. The cache is written into a temporary folder and renamed into place. (ImageNet-scale
data sets use imagefolder's cache; Tiny ImageNet fits in memory like CIFAR.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from functools import lru_cache
from pathlib import Path

import numpy as np

from workers.data import DataError, Splits

SPLIT_SEED = 20240601
FOLDER = "tiny-imagenet-200"
LAYOUT = (
    "train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt (Tiny ImageNet's "
    "tiny-imagenet-200.zip, unzipped: http://cs231n.stanford.edu/tiny-imagenet-200.zip); ddsweep never downloads"
)
EXTENSIONS = (".jpeg", ".jpg", ".png")


def data_folder(root: str | None) -> Path:
    if not root:
        raise DataError(f"dataset.root: tinyimagenet needs root: the folder that holds {FOLDER}/ ({LAYOUT})")
    base = Path(root)
    data = base / FOLDER if (base / FOLDER).is_dir() else base
    if not (data / "train").is_dir():
        raise DataError(f"dataset.root: {str(root)!r} has no train/ (nor {FOLDER}/train/) folder; expected {LAYOUT}")
    if not (data / "val" / "val_annotations.txt").is_file():
        raise DataError(f"dataset.root: {data} has no val/val_annotations.txt; expected {LAYOUT}")
    return data


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS) if folder.is_dir() else []


@lru_cache(maxsize=4)
def listing(data: Path) -> tuple[tuple[str, ...], dict[str, list[Path]], list[tuple[Path, int]]]:
    """(class wnids, {wnid: train files}, [(val file, class index)]), checked against each other."""
    wnids = tuple(sorted(p.name for p in (data / "train").iterdir() if p.is_dir()))
    if not wnids:
        raise DataError(f"dataset.root: {data / 'train'} has no class folders; expected {LAYOUT}")
    listed = data / "wnids.txt"
    if listed.is_file():
        named = sorted(w.strip() for w in listed.read_text().split() if w.strip())
        if named != list(wnids):
            odd = sorted(set(named) ^ set(wnids))[:5]
            raise DataError(
                f"dataset.root: {listed} and the folders of {data / 'train'} name other classes (e.g. {odd})"
            )
    train = {}
    for w in wnids:
        files = _images(data / "train" / w / "images")
        if not files:
            raise DataError(f"dataset.root: {data / 'train' / w / 'images'} has no images; expected {LAYOUT}")
        train[w] = files
    index = {w: k for k, w in enumerate(wnids)}
    val = []
    for n, line in enumerate((data / "val" / "val_annotations.txt").read_text().splitlines(), start=1):
        parts = line.split("\t")
        if not line.strip():
            continue
        if len(parts) < 2 or parts[1] not in index:
            raise DataError(
                f"dataset.root: {data / 'val' / 'val_annotations.txt'} line {n}: {line[:80]!r} names no class of "
                f"train/ (expected: file<TAB>wnid<TAB>box)"
            )
        f = data / "val" / "images" / parts[0]
        if not f.is_file():
            raise DataError(f"dataset.root: {f} is listed in val_annotations.txt but does not exist")
        val.append((f, index[parts[1]]))
    if not val:
        raise DataError(f"dataset.root: {data / 'val' / 'val_annotations.txt'} lists no images")
    return wnids, train, val  # val in the order val_annotations.txt lists it


def _hold_out(counts: list[int], per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, minival) positions into the class-ordered train files: per class `per_class` by a fixed generator."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, minival, start = [], [], 0
    for c, n in enumerate(counts):
        if n <= per_class:
            raise DataError(f"class {c} has {n} train images, too few for minival_per_class={per_class}; lower it")
        idx = start + rng.permutation(n)
        minival.append(np.sort(idx[:per_class]))
        train.append(np.sort(idx[per_class:]))
        start += n
    return np.concatenate(train), np.concatenate(minival)


def _decode(files: list[Path], size: int) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(files), 3, size, size), np.uint8)
    for i, f in enumerate(files):
        with Image.open(f) as im:
            im = im.convert("RGB")
            w, h = im.size
            if (w, h) != (size, size):
                scale = size / min(w, h)
                im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
                w, h = im.size
                left, top = (w - size) // 2, (h - size) // 2
                im = im.crop((left, top, left + size, top + size))
            out[i] = np.asarray(im).transpose(2, 0, 1)
    return out


def _cache(data: Path, size: int, per_class: int) -> Path:
    wnids, train, val = listing(data)
    files = [f for w in wnids for f in train[w]]
    digest = hashlib.sha256(
        json.dumps(
            {
                "root": str(data.resolve()),
                "size": size,
                "minival_per_class": per_class,
                "train": [(f.relative_to(data).as_posix(), f.stat().st_size) for f in files],
                "val": [(f.name, k, f.stat().st_size) for f, k in val],
            }
        ).encode()
    ).hexdigest()[:16]
    cache = Path(os.environ.get("DDSWEEP_DATA_CACHE", Path.home() / ".cache" / "ddsweep")) / f"tinyimagenet-{digest}"
    if (cache / "done").exists():
        return cache
    labels = np.concatenate([np.full(len(train[w]), k, np.int64) for k, w in enumerate(wnids)])
    tr, mv = _hold_out([len(train[w]) for w in wnids], per_class)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.parent / f".{cache.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        x = _decode(files, size)
        for name, idx in (("train", tr), ("minival", mv)):
            np.save(tmp / f"{name}_x.npy", x[idx])
            np.save(tmp / f"{name}_y.npy", labels[idx])
        del x
        np.save(tmp / "test_x.npy", _decode([f for f, _ in val], size))
        np.save(tmp / "test_y.npy", np.asarray([k for _, k in val], np.int64))
        (tmp / "done").write_text("ok")
        try:
            os.rename(tmp, cache)
        except OSError:  # another process renamed its copy first
            if not (cache / "done").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cache


@lru_cache(maxsize=2)
def load(root: str | None = None, image_size: int = 64, minival_per_class: int = 10) -> Splits:
    data = data_folder(root)
    cache = _cache(data, image_size, minival_per_class)
    arrays = {
        name: np.load(cache / f"{name}.npy", mmap_mode="r" if name.endswith("_x") else None)
        for name in ("train_x", "train_y", "minival_x", "minival_y", "test_x", "test_y")
    }
    return Splits(**arrays, class_names=listing(data)[0])


def describe(root: str | None = None, image_size: int = 64, minival_per_class: int = 10) -> dict:
    """The facts validation needs, from the file listing alone (nothing is decoded)."""
    wnids, train, val = listing(data_folder(root))
    sizes = [len(train[w]) - minival_per_class for w in wnids]
    return {
        "class_names": list(wnids),
        "train_class_sizes": sizes,
        "num_train": int(sum(sizes)),
        "num_test": len(val),
        "image_shape": [3, image_size, image_size],
    }
