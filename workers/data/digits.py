"""scikit-learn's digits (1,797 8x8 grey images, 10 classes): the embedded default data set.

Split (fixed, documented in README): per class, with numpy generator seed SPLIT_SEED, 20% test,
then `minival_per_class` minival images, the rest train (about 133 per class). Pixels 0..16 are
mapped to uint8 0..255 (x * 255 / 16, rounded); larger `image_size` repeats pixels (nearest).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from workers.data import Splits, stratified_split

SPLIT_SEED = 20240601
CLASS_NAMES = tuple(str(d) for d in range(10))


@lru_cache(maxsize=8)
def load(
    root: str | None = None, image_size: int = 8, minival_per_class: int = 10, test_fraction: float = 0.2
) -> Splits:
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = np.rint(raw.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    if image_size != 8:
        f = image_size // 8
        x = x.repeat(f, axis=2).repeat(f, axis=3)
    y = raw.target.astype(np.int64)
    tr, mv, te = stratified_split(y, len(CLASS_NAMES), test_fraction, minival_per_class, SPLIT_SEED)
    for a in (x, y):
        a.setflags(write=False)
    return Splits(x[tr], y[tr], x[mv], y[mv], x[te], y[te], CLASS_NAMES)


def describe(root: str | None = None, **options) -> dict:
    s = load(root, **options)
    return {
        "class_names": list(s.class_names),
        "train_class_sizes": np.bincount(s.train_y).tolist(),
        "num_train": len(s.train_y),
        "num_test": len(s.test_y),
        "image_shape": list(s.image_shape),
    }
