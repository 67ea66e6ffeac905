"""Write a 32-px RGB ImageFolder generated from scikit-learn's digits: a larger, harder data set made here.

    python benchmarks/make_digits_folder.py ROOT [--train-per-class 500] [--val-per-class 100] [--size 32]

Every image is one of the 8x8 digits, upsampled to `size` px through a random affine map (rotation +-15 deg,
scale 0.8-1.25, shear +-10 deg, shift +-size/8), coloured with a random foreground and background colour,
blurred a little and given Gaussian pixel noise (sigma 24 of 255). Train images come from the digits of the
`digits` data set's train split, val images (the test split) from its test split, so no source digit is in
both. Deterministic: one seeded generator. Writes ROOT/train/<class>/*.png and ROOT/val/<class>/*.png; the
`imagefolder` data set reads it (minival is then held out of train by ddsweep).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np


def _affine(rng: np.random.Generator, size: int) -> tuple[float, ...]:
    """PIL's inverse affine coefficients (output pixel -> input pixel) of a random map onto a size x size canvas."""
    angle = math.radians(rng.uniform(-15, 15))
    shear = math.radians(rng.uniform(-10, 10))
    scale = rng.uniform(0.8, 1.25) * size / 8.0  # 8 source px fill the canvas at scale 1
    tx, ty = rng.uniform(-size / 8, size / 8, 2)
    # forward: centred source -> rotate/shear/scale -> centred canvas + shift
    a = scale * np.array([[math.cos(angle), -math.sin(angle + shear)], [math.sin(angle), math.cos(angle + shear)]])
    inv = np.linalg.inv(a)
    c_out = np.array([size / 2 + tx, size / 2 + ty])
    off = np.array([4.0, 4.0]) - inv @ c_out
    return (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1])


def render(digit: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """One 8x8 digit (0..16) -> a size x size x 3 uint8 image."""
    from PIL import Image, ImageFilter

    src = Image.fromarray((digit * (255 / 16)).astype(np.uint8))
    ink = src.transform((size, size), Image.AFFINE, _affine(rng, size), resample=Image.BILINEAR)
    ink = ink.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.3, 1.0)))
    alpha = np.asarray(ink, dtype=np.float64)[..., None] / 255.0
    fg, bg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    while np.abs(fg - bg).sum() < 150:  # keep the digit visible
        fg, bg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = alpha * fg + (1 - alpha) * bg + rng.normal(0, 24, (size, size, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def make(root: str | Path, train_per_class: int = 500, val_per_class: int = 100, size: int = 32, seed: int = 0) -> Path:
    from PIL import Image

    from workers.data import digits

    root = Path(root)
    splits = digits.load()  # train (minival excluded) and test splits of the embedded digits
    raw = {"train": (splits.train_x, splits.train_y), "val": (splits.test_x, splits.test_y)}
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        x, y = raw[split]
        for c in range(10):
            folder = root / split / f"d{c}"
            folder.mkdir(parents=True, exist_ok=True)
            pool = np.flatnonzero(y == c)
            for i in range(per_class):
                src = x[pool[i % len(pool)], 0].astype(np.float64) * (16 / 255)
                Image.fromarray(render(src, rng, size)).save(folder / f"{i:05d}.png")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--val-per-class", type=int, default=100)
    ap.add_argument("--size", type=int, default=32)
    a = ap.parse_args()
    print(make(a.root, a.train_per_class, a.val_per_class, a.size))


if __name__ == "__main__":
    main()
