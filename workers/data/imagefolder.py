"""`imagefolder`: a local tree `root/train/<class>/*.{png,jpg,jpeg}` and `root/val/<class>/...` (ImageNet layout).

Classes are the sorted folder names of `train/` (for ImageNet: sorted WNIDs, the order torchvision's
weights use). `val/` is the test split and must hold the same classes. Minival: `minival_per_class`
images per class held out of train by a fixed generator. Images are decoded once (RGB, shorter
side resized to `image_size`, centre crop), stored as uint8 arrays in a cache folder
(`$DDSWEEP_DATA_CACHE` or `~/.cache/ddsweep`), and memory-mapped afterwards. Never re-encoded as JPEG.
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
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _listing(root: Path, split: str) -> dict[str, list[Path]]:
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"dataset.root: {str(root)!r} has no {split}/ folder; expected {root}/{split}/<class>/<images>")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"dataset.root: {folder} has no class folders")
    out = {}
    for c in classes:
        files = sorted(p for p in (folder / c).iterdir() if p.suffix.lower() in EXTENSIONS)
        if not files:
            raise DataError(f"dataset.root: class folder {folder / c} has no images ({', '.join(EXTENSIONS)})")
        out[c] = files
    return out


def _split_train(counts: list[int], minival_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SPLIT_SEED)
    train, minival, start = [], [], 0
    for c, n in enumerate(counts):
        if n <= minival_per_class:
            raise DataError(f"class {c} has {n} train images, too few for minival_per_class={minival_per_class}")
        idx = start + rng.permutation(n)
        minival.append(np.sort(idx[:minival_per_class]))
        train.append(np.sort(idx[minival_per_class:]))
        start += n
    return np.concatenate(train), np.concatenate(minival)


def _decode(files: list[Path], size: int) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(files), 3, size, size), np.uint8)
    for i, f in enumerate(files):
        with Image.open(f) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            out[i] = np.asarray(im.crop((left, top, left + size, top + size))).transpose(2, 0, 1)
    return out


def _cache_dir(root: Path, size: int, listing: dict) -> Path:
    digest = hashlib.sha256(
        json.dumps(
            {
                "root": str(root.resolve()),
                "size": size,
                "files": {
                    split: {c: [(f.name, f.stat().st_size) for f in fs] for c, fs in part.items()}
                    for split, part in listing.items()
                },
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    base = Path(os.environ.get("DDSWEEP_DATA_CACHE", Path.home() / ".cache" / "ddsweep"))
    return base / f"imagefolder-{digest}"


def _arrays(root: Path, size: int) -> tuple[dict, Path]:
    listing = {"train": _listing(root, "train"), "val": _listing(root, "val")}
    if list(listing["train"]) != list(listing["val"]):
        missing = sorted(set(listing["train"]) ^ set(listing["val"]))
        raise DataError(
            f"dataset.root: train/ and val/ hold different classes (e.g. {missing[:5]}); "
            "they must have the same class folders"
        )
    cache = _cache_dir(root, size, listing)
    if not (cache / "done").exists():
        _build_cache(cache, listing, size)
    return listing, cache


def _build_cache(cache: Path, listing: dict, size: int) -> None:
    """Decode every image into a temporary folder beside the cache, then rename it into place: a crash
    leaves no half-written cache, and of two processes decoding at once the first rename wins."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.parent / f".{cache.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for split, part in listing.items():
            files = [f for c in part for f in part[c]]
            labels = np.concatenate([np.full(len(fs), k, np.int64) for k, fs in enumerate(part.values())])
            np.save(tmp / f"{split}_x.npy", _decode(files, size))
            np.save(tmp / f"{split}_y.npy", labels)
        (tmp / "done").write_text("ok")
        if cache.exists() and not (cache / "done").exists():  # left by an older, non-atomic version
            shutil.rmtree(cache, ignore_errors=True)
        try:
            os.rename(tmp, cache)
        except OSError:
            if not (cache / "done").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@lru_cache(maxsize=4)
def load(root: str | None = None, image_size: int = 32, minival_per_class: int = 10) -> Splits:
    if not root:
        raise DataError("dataset.root: imagefolder needs root: /path/with/train/and/val/")
    listing, cache = _arrays(Path(root), image_size)
    x = np.load(cache / "train_x.npy", mmap_mode="r")
    y = np.load(cache / "train_y.npy")
    tr, mv = _split_train([len(v) for v in listing["train"].values()], minival_per_class)
    return Splits(
        x[tr],
        y[tr],
        x[mv],
        y[mv],
        np.load(cache / "val_x.npy", mmap_mode="r"),
        np.load(cache / "val_y.npy"),
        tuple(listing["train"]),
    )


def describe(root: str | None = None, image_size: int = 32, minival_per_class: int = 10) -> dict:
    if not root:
        raise DataError("dataset.root: imagefolder needs root: /path/with/train/and/val/")
    listing = _listing(Path(root), "train")
    sizes = [len(v) - minival_per_class for v in listing.values()]
    return {
        "class_names": list(listing),
        "train_class_sizes": sizes,
        "num_train": int(sum(sizes)),
        "image_shape": [3, image_size, image_size],
    }
