"""Image trees in ImageNet's layout, written by the tests themselves (real PNG/JPEG files, no download).

- `make_tree`: root/train/<class>/*, root/val/<class>/* (or a flat val/ with a Kaggle CSV or an ILSVRC2012
  devkit folder); each class has its own colour so a wrong class order or label is visible in the pixels.
- `wnids(n)`: n sorted WNID-like class names (n########).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def wnids(n: int) -> list[str]:
    return [f"n{1440764 + 37 * k:08d}" for k in range(n)]


def colour(k: int) -> tuple[int, int, int]:
    """A distinct, far-apart colour per class index (first 1000 classes: distinct)."""
    return ((k * 97) % 256, (k * 57 + 80) % 256, (k // 3 * 29 + 160) % 256)


def image(k: int, size: tuple[int, int], rng: np.random.Generator, noise: int = 12) -> Image.Image:
    w, h = size
    arr = np.empty((h, w, 3), np.uint8)
    arr[:] = colour(k)
    arr = np.clip(arr.astype(np.int16) + rng.integers(-noise, noise + 1, arr.shape), 0, 255).astype(np.uint8)
    arr[: h // 4, : w // 4] = 255 - np.asarray(colour(k), np.uint8)  # a corner mark: crops and flips show
    return Image.fromarray(arr)


def make_tree(
    root: Path,
    classes=("n02", "n01", "n03"),
    per_class: int = 14,
    val: int = 3,
    size: tuple[int, int] = (20, 12),
    ext: str = ".png",
    flat_val: str | None = None,
    seed: int = 0,
    quality: int = 90,
) -> Path:
    """Write the tree; flat_val: None (val/<class>/), "csv" (val/*.JPEG + root/LOC_val_solution.csv) or
    "devkit" (val/*.JPEG + root/ILSVRC2012_devkit_t12/data/{ground truth, meta.mat}), val images named
    ILSVRC2012_val_<k>. Classes are given in any order; the class index k is the position in `classes`."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    kw = {"quality": quality} if ext.lower() in (".jpg", ".jpeg") else {}
    for k, c in enumerate(classes):
        (root / "train" / c).mkdir(parents=True)
        for i in range(per_class):
            image(k, size, rng).save(root / "train" / c / f"{c}_{i}{ext}", format=_format(ext), **kw)
    if flat_val is None:
        for k, c in enumerate(classes):
            (root / "val" / c).mkdir(parents=True)
            for i in range(val):
                image(k, size, rng).save(root / "val" / c / f"val_{i}{ext}", format=_format(ext), **kw)
        return root
    (root / "val").mkdir(parents=True)
    labels = []  # (image id, class name) in val-id order
    order = [(k, c) for i in range(val) for k, c in enumerate(classes)]
    perm = rng.permutation(len(order))  # labels not in class order: the file must be read, not assumed
    for n, j in enumerate(perm, 1):
        k, c = order[j]
        name = f"ILSVRC2012_val_{n:08d}"
        image(k, size, rng).save(root / "val" / f"{name}.JPEG", format="JPEG", quality=quality)
        labels.append((name, c))
    if flat_val == "csv":
        lines = ["ImageId,PredictionString"] + [f"{name},{c} 1 2 10 11 {c} 3 4 12 13" for name, c in labels]
        (root / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    elif flat_val == "devkit":
        data = root / "ILSVRC2012_devkit_t12" / "data"
        data.mkdir(parents=True)
        # meta.mat: ILSVRC2012_IDs 1..C in sorted-WNID order (as ImageNet's), plus a non-leaf synset above them
        names = sorted(classes)
        ids = {c: i + 1 for i, c in enumerate(names)}
        write_meta(data / "meta.mat", [(ids[c], c) for c in names] + [(len(names) + 1, "n99999999")])
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[c]}\n" for _, c in labels))
    else:
        raise ValueError(flat_val)
    return root


def write_meta(path: Path, synsets: list[tuple[int, str]]) -> None:
    from scipy.io import savemat

    table = np.zeros((len(synsets), 1), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    for i, (sid, wnid) in enumerate(synsets):
        table[i, 0] = (sid, wnid, f"class {wnid}")
    savemat(str(path), {"synsets": table})


def _format(ext: str) -> str:
    return {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}[ext.lower()]


def dataset_options(**given) -> dict:
    """imagefolder options with every default filled in and the derived sizes made explicit, as the spec does."""
    from workers.catalogue import DATASETS

    entry = DATASETS["imagefolder"]
    opts, problems = entry.resolve(given, "dataset")
    assert not problems, problems
    return entry.derive(opts)


def dataset(root: Path, **given):
    from workers.config import DatasetConfig, _frozen_options

    return DatasetConfig("imagefolder", str(root), _frozen_options(dataset_options(**given)))
