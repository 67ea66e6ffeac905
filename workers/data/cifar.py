"""`cifar10`, `cifar100`: read from the folders torchvision's datasets leave on disk, never downloaded.

`dataset.root` is the folder that holds `cifar-10-batches-py/` (`data_batch_1` .. `data_batch_5`,
`test_batch`, `batches.meta`) or `cifar-100-python/` (`train`, `test`, `meta`; the 100 fine labels), as
torchvision's `root` (the data folder itself is accepted too). Both fit in memory like digits (50,000
32x32 images = 150 MB uint8). Split (docs/methods.md §6.1): the official test batch is the test split;
`minival_per_class` images per class of the official train set are held out by a fixed generator
(seed SPLIT_SEED) and the rest is train. The pickles are read by an unpickler that only builds numpy
arrays and plain containers, so a file that is not CIFAR cannot run code.
"""

from __future__ import annotations

import importlib
import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np

from workers.data import DataError, Splits

SPLIT_SEED = 20240601

LAYOUTS = {
    "cifar10": {
        "title": "CIFAR-10",
        "folder": "cifar-10-batches-py",
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
        "meta": "batches.meta",
        "names": "label_names",
        "labels": "labels",
        "torchvision": "CIFAR10",
        "archive": "cifar-10-python.tar.gz",
    },
    "cifar100": {
        "title": "CIFAR-100",
        "folder": "cifar-100-python",
        "train": ("train",),
        "test": ("test",),
        "meta": "meta",
        "names": "fine_label_names",
        "labels": "fine_labels",
        "torchvision": "CIFAR100",
        "archive": "cifar-100-python.tar.gz",
    },
}

# What a CIFAR pickle may build: numpy arrays (under numpy 1 and 2 module names) and bytes from Python 2.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to build {module}.{name}: a CIFAR file holds only arrays")
        if module.startswith("numpy") and module.endswith("multiarray"):
            try:
                return getattr(importlib.import_module("numpy._core.multiarray"), name)
            except ImportError:  # numpy 1
                return getattr(importlib.import_module("numpy.core.multiarray"), name)
        return super().find_class(module, name)


def _read(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _Unpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise DataError(f"dataset.root: {path} is not a CIFAR pickle ({err})") from None
    if not isinstance(obj, dict):
        raise DataError(f"dataset.root: {path} holds a {type(obj).__name__}, not a CIFAR dictionary")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def folder(name: str, root: str | None) -> Path:
    """The data folder of `name` under `root` (or `root` itself), with every file it needs, else a DataError."""
    lay = LAYOUTS[name]
    files = (*lay["train"], *lay["test"], lay["meta"])
    how = (
        f'ddsweep never downloads: on a machine with internet run python -c "import torchvision; '
        f"torchvision.datasets.{lay['torchvision']}('{root}', download=True)\", or extract {lay['archive']} "
        f"(https://www.cs.toronto.edu/~kriz/cifar.html) into {root}"
    )
    if not root:
        raise DataError(f"dataset.root: {name} needs root: the folder that holds {lay['folder']}/")
    base = Path(root)
    data = base / lay["folder"] if (base / lay["folder"]).is_dir() else base
    if not all((data / f).is_file() for f in files):
        if data == base and base.name != lay["folder"]:
            raise DataError(
                f"dataset.root: {root!r} has no {lay['folder']}/ folder ({lay['title']} in torchvision's layout: "
                f"{', '.join(files)}); {how}"
            )
        missing = [f for f in files if not (data / f).is_file()]
        raise DataError(f"dataset.root: {data} lacks {', '.join(missing)} of {lay['title']}; {how}")
    return data


def _arrays(data: Path, files: tuple[str, ...], key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for f in files:
        d = _read(data / f)
        if "data" not in d or key not in d:
            raise DataError(f"dataset.root: {data / f} has no 'data' and {key!r} entries")
        x = np.asarray(d["data"], dtype=np.uint8)
        y = np.asarray(d[key], dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
            raise DataError(
                f"dataset.root: {data / f}: 'data' is {x.shape}, expected (N, 3072) with N = {len(y)} labels"
            )
        xs.append(x.reshape(-1, 3, 32, 32))  # rows hold the red, green, blue 32x32 planes in turn
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def hold_out(labels: np.ndarray, num_classes: int, per_class: int, seed: int = SPLIT_SEED):
    """(train, minival) indices: per class, `per_class` images chosen by a fixed generator, the rest train."""
    rng = np.random.default_rng(seed)
    train, minival = [], []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= per_class:
            raise DataError(
                f"class {c} has {len(idx)} train images, too few for minival_per_class={per_class}; lower it"
            )
        idx = idx[rng.permutation(len(idx))]
        minival.append(idx[:per_class])
        train.append(idx[per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(minival))


@lru_cache(maxsize=2)
def _load(name: str, root: str, minival_per_class: int) -> Splits:
    lay = LAYOUTS[name]
    data = folder(name, root)
    names = tuple(str(n) for n in _read(data / lay["meta"]).get(lay["names"], []))
    x, y = _arrays(data, lay["train"], lay["labels"])
    tx, ty = _arrays(data, lay["test"], lay["labels"])
    if not names or y.max() >= len(names) or ty.max() >= len(names) or min(y.min(), ty.min()) < 0:
        raise DataError(f"dataset.root: {data / lay['meta']}: {len(names)} class names for labels {y.min()}..{y.max()}")
    tr, mv = hold_out(y, len(names), minival_per_class)
    return Splits(x[tr], y[tr], x[mv], y[mv], tx, ty, names)


def load_cifar10(root: str | None = None, minival_per_class: int = 10) -> Splits:
    return _load("cifar10", str(folder("cifar10", root)), minival_per_class)


def load_cifar100(root: str | None = None, minival_per_class: int = 10) -> Splits:
    return _load("cifar100", str(folder("cifar100", root)), minival_per_class)


def _describe(s: Splits) -> dict:
    return {
        "class_names": list(s.class_names),
        "train_class_sizes": np.bincount(s.train_y, minlength=s.num_classes).tolist(),
        "num_train": len(s.train_y),
        "num_test": len(s.test_y),
        "image_shape": list(s.image_shape),
    }


def describe_cifar10(root: str | None = None, **options) -> dict:
    return _describe(load_cifar10(root, **options))


def describe_cifar100(root: str | None = None, **options) -> dict:
    return _describe(load_cifar100(root, **options))
