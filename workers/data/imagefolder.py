"""`imagefolder`: a local tree in ImageNet's layout, decoded once into a sharded uint8 cache in the artifact store.

Layout: `root/train/<class>/<images>`; `root/val/<class>/<images>`, or a flat `root/val/<images>` with a label
file (`val_labels`, workers.data.imagenet). Classes are the sorted folder names of `train/` (for ImageNet the
sorted WNIDs, the order torchvision's weights use). Names starting with "." (macOS `._*`, `.DS_Store`) are
skipped, as are files whose extension is not an image's. Minival: `minival_per_class` train images per class
held out by a fixed generator.

Decoding (docs/design.md §4, the `shard` stage): RGB (CMYK, greyscale and palette images converted; a PNG
named .JPEG is read as the PNG it is), shorter side resized to `train_resize` (train) or `val_resize` (val and
minival) with `interpolation`, then a centre crop of `train_crop` / `val_crop`, exactly as torchvision's
Resize(int) + CenterCrop on a PIL image. Never re-encoded as JPEG. Splits are `shard_size` images per shard;
the `cache` stage merges the shards' labels, digests and pixel sums. `describe` checks everything that is
cheap before launch: folders, classes, extensions, empty classes, the val labels, minival sizes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from workers.config import ArtifactKey
from workers.data import DataError, Splits
from workers.data.shards import NpyWriter, ShardedImages, ShardSet, image_digest, pixel_sums, stats_from_sums

log = logging.getLogger(__name__)

SPLIT_SEED = 20240601
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
INTERPOLATIONS = ("bilinear", "bicubic")
SPLITS = ("train", "minival", "val")  # minival: train-folder images, prepared like val
BAD_NAMES_KEPT = 100  # skipped files named in a manifest (all are counted)


# ---------------------------------------------------------------- listing (torch-free, cheap)
@dataclass(frozen=True)
class Listing:
    class_names: tuple[str, ...]
    files: dict[str, np.ndarray]  # split -> paths relative to root, in row order
    labels: dict[str, np.ndarray]  # split -> int64 class index per row
    train_sizes: tuple[int, ...]  # per class, minival excluded
    ignored: int  # hidden files and files with other extensions, skipped
    digest: str  # sha256 of (split, label, path, size) of every row


def _scan(folder: Path) -> tuple[list[str], list[str], int]:
    """(class folders, image files, ignored files) directly in `folder`, sorted, hidden names skipped."""
    dirs, files, ignored = [], [], 0
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith("."):
                ignored += 1
            elif e.is_dir():
                dirs.append(e.name)
            elif os.path.splitext(e.name)[1].lower() in EXTENSIONS:
                files.append(e.name)
            else:
                ignored += 1
    return sorted(dirs), sorted(files), ignored


def _class_files(folder: Path, classes: list[str]) -> tuple[dict[str, list[str]], int]:
    out, ignored = {}, 0
    for c in classes:
        sub, files, skipped = _scan(folder / c)
        ignored += skipped + len(sub)
        if not files:
            why = f" ({skipped + len(sub)} hidden, non-image or folder entries ignored)" if skipped + len(sub) else ""
            raise DataError(
                f"dataset.root: class folder {folder / c} has no images ({', '.join(EXTENSIONS)}){why}; "
                "add images or remove the folder"
            )
        out[c] = files
    return out, ignored


def split_train(counts: list[int], minival_per_class: int, names: list[str] | None = None):
    """(train rows, minival rows) of the class-ordered train folder: per class, a permutation from SPLIT_SEED;
    its first `minival_per_class` images are minival (docs/methods.md §6.1)."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, minival, start = [], [], 0
    for c, n in enumerate(counts):
        if n <= minival_per_class:
            name = names[c] if names else str(c)
            fix = f"lower dataset.minival_per_class to at most {n - 1}, or add" if n > 1 else "add"
            raise DataError(
                f"dataset.minival_per_class: class {name!r} has {n} train image{'s' if n != 1 else ''}, too few to "
                f"hold out {minival_per_class} for the minival split and keep at least one for training; "
                f"{fix} images to train/{name}/"
            )
        idx = start + rng.permutation(n)
        minival.append(np.sort(idx[:minival_per_class]))
        train.append(np.sort(idx[minival_per_class:]))
        start += n
    return np.concatenate(train), np.concatenate(minival)


@lru_cache(maxsize=4)
def listing(root: str, minival_per_class: int, val_labels: str | None) -> Listing:
    base = Path(root)
    train_dir, val_dir = base / "train", base / "val"
    if not train_dir.is_dir():
        raise DataError(f"dataset.root: {root!r} has no train/ folder; expected {root}/train/<class>/<images>")
    classes, loose, ignored = _scan(train_dir)
    if not classes:
        raise DataError(f"dataset.root: {train_dir} has no class folders; expected {train_dir}/<class>/<images>")
    train_files, skipped = _class_files(train_dir, classes)
    ignored += skipped + len(loose)
    if not val_dir.is_dir():
        raise DataError(
            f"dataset.root: {root!r} has no val/ folder; expected {root}/val/<class>/<images> or a flat "
            f"{root}/val/<images> with dataset.val_labels"
        )
    val_classes, val_loose, skipped = _scan(val_dir)
    ignored += skipped
    index = {c: k for k, c in enumerate(classes)}
    if val_loose and val_classes:
        raise DataError(
            f"dataset.root: {val_dir} holds both class folders ({val_classes[0]}, ...) and images "
            f"({val_loose[0]}, ...); use one layout: val/<class>/<images>, or flat val/<images> with dataset.val_labels"
        )
    if val_classes:
        if val_labels:
            raise DataError(
                f"dataset.val_labels: {val_labels!r} is set but {val_dir} holds class folders; remove val_labels "
                "(it is for a flat val/ folder)"
            )
        extra = [c for c in val_classes if c not in index]
        if extra:
            raise DataError(
                f"dataset.root: train/ and val/ hold different classes: val/ has {extra[:5]} that train/ lacks; "
                "every val class needs its train/<class>/ folder (the class order is train's)"
            )
        files, skipped = _class_files(val_dir, val_classes)
        ignored += skipped
        val_rows = [(f"val/{c}/{f}", index[c]) for c in val_classes for f in files[c]]
    else:
        if not val_loose:
            raise DataError(f"dataset.root: {val_dir} has no class folders and no images")
        if not val_labels:
            raise DataError(
                f"dataset.val_labels: {val_dir} is flat ({len(val_loose)} images, no class folders) and no label "
                "file is given; give dataset.val_labels: the absolute path of Kaggle's LOC_val_solution.csv or of "
                "the ILSVRC2012 devkit folder"
            )
        from workers.data.imagenet import read_val_labels

        wnid = read_val_labels(val_labels)
        val_rows = []
        for f in val_loose:
            label = wnid.get(os.path.splitext(f)[0])
            if label is None:
                raise DataError(f"dataset.val_labels: {val_labels!r} has no label for {val_dir / f}")
            if label not in index:
                raise DataError(
                    f"dataset.val_labels: {val_dir / f} is labelled {label!r}, which is not a class of train/ "
                    f"({classes[0]}, ...); the label file and the train folders must use the same WNIDs"
                )
            val_rows.append((f"val/{f}", index[label]))
    present = {label for _, label in val_rows}
    missing = [c for c in classes if index[c] not in present]
    if missing:
        raise DataError(
            f"dataset.root: train/ and val/ hold different classes: val/ has no images of {missing[:5]}"
            f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''}; every class needs val images"
        )

    flat = [(f"train/{c}/{f}", k) for k, c in enumerate(classes) for f in train_files[c]]
    counts = [len(train_files[c]) for c in classes]
    tr, mv = split_train(counts, minival_per_class, classes)
    rows = {"train": [flat[i] for i in tr], "minival": [flat[i] for i in mv], "val": val_rows}
    h = hashlib.sha256()
    files, labels = {}, {}
    for split in SPLITS:
        for path, label in rows[split]:
            h.update(f"{split}\t{label}\t{path}\t{os.stat(base / path).st_size}\n".encode())
        files[split] = np.asarray([p.encode() for p, _ in rows[split]], dtype=bytes)
        labels[split] = np.asarray([k for _, k in rows[split]], dtype=np.int64)
    return Listing(
        tuple(classes),
        files,
        labels,
        tuple(n - minival_per_class for n in counts),
        ignored,
        h.hexdigest(),
    )


def resolve_sizes(image_size: int, train_resize=None, train_crop=None, val_resize=None, val_crop=None) -> dict:
    """The cache's resolution, nulls filled: train_crop = image_size, train_resize = train_crop, val_crop =
    image_size, val_resize = val_crop (today's rule: shorter side to image_size, centre crop image_size)."""
    train_crop = train_crop or image_size
    val_crop = val_crop or image_size
    return {
        "image_size": image_size,
        "train_resize": train_resize or train_crop,
        "train_crop": train_crop,
        "val_resize": val_resize or val_crop,
        "val_crop": val_crop,
    }


def _size_problems(s: dict) -> None:
    for crop, resize in (("train_crop", "train_resize"), ("val_crop", "val_resize")):
        if s[crop] > s[resize]:
            raise DataError(
                f"dataset.{crop}: {s[crop]} is larger than {resize} = {s[resize]}; the centre crop is cut from the "
                f"resized image, so {crop} <= {resize}"
            )
        if s["image_size"] > s[crop]:
            raise DataError(
                f"dataset.image_size: {s['image_size']} is larger than {crop} = {s[crop]}; the student's views are "
                f"cut from the cached images, so image_size <= {crop}"
            )


def cache_config(
    root: str,
    image_size: int = 32,
    minival_per_class: int = 10,
    train_resize: int | None = None,
    train_crop: int | None = None,
    val_resize: int | None = None,
    val_crop: int | None = None,
    interpolation: str = "bilinear",
    val_labels: str | None = None,
    skip_bad_files: bool = False,
    shard_size: int = 1024,
) -> dict[str, Any]:
    """The `cache` stage's key config: the decode rule (files, sizes, interpolation, shard size) and the rows
    per split. The student's image_size enters only through the defaults of the sizes."""
    if not root:
        raise DataError("dataset.root: imagefolder needs root: /path/with/train/and/val/")
    s = resolve_sizes(image_size, train_resize, train_crop, val_resize, val_crop)
    _size_problems(s)
    lst = listing(root, minival_per_class, val_labels)
    return {
        "rule": {
            "root": str(root),
            "listing": lst.digest,
            "train": [s["train_resize"], s["train_crop"]],
            "val": [s["val_resize"], s["val_crop"]],
            "interpolation": interpolation,
            "skip_bad_files": bool(skip_bad_files),
            "shard_size": int(shard_size),
            "minival_per_class": int(minival_per_class),
            "val_labels": val_labels,
        },
        "splits": {split: len(lst.files[split]) for split in SPLITS},
    }


def describe(root: str | None = None, **options) -> dict:
    """Facts for validation and planning, without decoding an image (and without torch)."""
    cache = cache_config(root, **options)
    lst = listing(root, options.get("minival_per_class", 10), options.get("val_labels"))
    side = int(options.get("image_size", 32))
    rule = cache["rule"]
    split_bytes = {
        split: n * 3 * (rule["val"][1] if split != "train" else rule["train"][1]) ** 2
        for split, n in cache["splits"].items()
    }
    return {
        "class_names": list(lst.class_names),
        "train_class_sizes": list(lst.train_sizes),
        "num_train": int(sum(lst.train_sizes)),
        "image_shape": [3, side, side],
        "cache": cache,
        "cache_bytes": int(sum(split_bytes.values())),
        "ignored_files": lst.ignored,
    }


# ---------------------------------------------------------------- decoding
def decode(path: Path, resize: int, crop: int, interpolation: str = "bilinear") -> np.ndarray:
    """One image as uint8 (3, crop, crop): torchvision's Resize(resize) + CenterCrop(crop) on the RGB PIL image
    (shorter side to `resize`, longer side int(resize * long / short); crop offsets int(round((size - crop) / 2)))."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # reads the whole file: a truncated one fails here
            if im.mode != "RGB":
                im = im.convert("RGB")
            w, h = im.size
            short, long = (w, h) if w <= h else (h, w)
            if short != resize:
                new_long = int(resize * long / short)
                size = (resize, new_long) if w <= h else (new_long, resize)
                im = im.resize(size, Image.BICUBIC if interpolation == "bicubic" else Image.BILINEAR)
            w, h = im.size
            top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
            arr = np.asarray(im.crop((left, top, left + crop, top + crop)))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(
            f"cannot decode image {path}: {type(err).__name__}: {err}; replace or remove the file, or set "
            "dataset.skip_bad_files: true to skip unreadable images (they are counted in the cache manifest)"
        ) from None
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


# ---------------------------------------------------------------- the shard and cache stages
# Other layouts decoded by the same shard and cache stages: a cache rule's "layout" -> "module:function" giving
# the Listing of (root, minival_per_class). A rule without "layout" is this module's (and keeps its key).
LAYOUTS = {"tinyimagenet": "workers.data.tinyimagenet:cache_listing"}


def _rule_listing(rule: dict) -> Listing:
    layout = rule.get("layout")
    if layout is None:
        lst = listing(rule["root"], rule["minival_per_class"], rule["val_labels"])
    else:
        import importlib

        module, _, attr = LAYOUTS[layout].partition(":")
        lst = getattr(importlib.import_module(module), attr)(rule["root"], rule["minival_per_class"])
    if lst.digest != rule["listing"]:
        raise DataError(
            f"dataset.root: the files under {rule['root']} changed since this cache was planned (listing "
            f"{lst.digest[:12]}, planned {rule['listing'][:12]}); run `ddsweep plan`/`run` again on the current files"
        )
    return lst


def build_shard(key: ArtifactKey, store, out: Path) -> dict[str, Any]:
    """Decode images [index * shard_size, (index + 1) * shard_size) of one split into images.npy, one at a time,
    with their labels, validity, digests and pixel sums."""
    cfg = key.cfg
    rule, split, index = cfg["rule"], cfg["split"], int(cfg["index"])
    lst = _rule_listing(rule)
    size = rule["shard_size"]
    files = lst.files[split][index * size : (index + 1) * size]
    labels = lst.labels[split][index * size : (index + 1) * size]
    if len(files) != cfg["rows"]:
        raise DataError(f"shard {key} should hold {cfg['rows']} images of {split}; the listing gives {len(files)}")
    resize, crop = rule["train"] if split == "train" else rule["val"]
    n = len(files)
    digests = np.zeros(n, np.uint32)
    sums = np.zeros((n, 2, 3), np.int64)
    ok = np.ones(n, bool)
    bad: list[str] = []
    with NpyWriter(out / "images.npy", (n, 3, crop, crop), np.uint8) as writer:
        for j, rel in enumerate(files):
            try:
                img = decode(Path(rule["root"]) / rel.decode(), resize, crop, rule["interpolation"])
            except DataError as err:
                if not rule["skip_bad_files"]:
                    raise
                log.warning("skipping %s (dataset.skip_bad_files): %s", rel, err)
                img = np.zeros((3, crop, crop), np.uint8)
                ok[j] = False
                bad.append(rel.decode())
            writer.write(img[None])
            digests[j] = image_digest(img)
            sums[j] = pixel_sums(img)
    np.save(out / "labels.npy", labels)
    np.save(out / "valid.npy", ok)
    np.save(out / "digests.npy", digests)
    np.save(out / "sums.npy", sums)
    return {"class_names": list(lst.class_names), "split": split, "index": index, "n": n, "bad_files": bad}


def build_cache(key: ArtifactKey, store, out: Path) -> dict[str, Any]:
    """Merge the shards of every split: labels and rows of the valid images, per-row digests and pixel sums."""
    from workers.graph import shard_keys

    cfg = key.cfg
    by_split: dict[str, list[ArtifactKey]] = {}
    for sk in shard_keys(key):
        by_split.setdefault(sk.cfg["split"], []).append(sk)
    class_names, bad, splits = None, [], {}
    mean = std = None
    for split in SPLITS:
        parts: dict[str, list[np.ndarray]] = {"labels": [], "valid": [], "digests": [], "sums": []}
        for sk in by_split.get(split, []):
            m = store.manifest(sk)
            if class_names is None:
                class_names = m["class_names"]
            elif m["class_names"] != class_names:
                raise DataError(f"shard {sk} was built for other classes than the rest of the cache {key}")
            bad += m.get("bad_files", [])
            folder = store.path(sk)
            for name in parts:
                parts[name].append(np.load(folder / f"{name}.npy"))
        arrays = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in parts.items()}
        rows = np.flatnonzero(arrays["valid"].astype(bool)) if len(arrays["valid"]) else np.zeros(0, np.int64)
        if len(rows) == 0:
            raise DataError(f"dataset.root: no readable image left in the {split} split of {cfg['rule']['root']}")
        np.save(out / f"{split}_labels.npy", arrays["labels"].astype(np.int64)[rows])
        np.save(out / f"{split}_rows.npy", rows.astype(np.int64))
        np.save(out / f"{split}_digests.npy", arrays["digests"].astype(np.uint32))
        np.save(out / f"{split}_sums.npy", arrays["sums"].astype(np.int64))
        crop = cfg["rule"]["train" if split == "train" else "val"][1]
        splits[split] = {"rows": int(len(rows)), "files": int(len(arrays["valid"])), "shape": [3, crop, crop]}
        if split == "train":
            mean, std = stats_from_sums(arrays["sums"][rows], crop * crop)
    return {
        "class_names": class_names,
        "splits": splits,
        "bytes": int(sum(s["files"] * 3 * s["shape"][1] ** 2 for s in splits.values())),
        "bad_files": len(bad),
        "bad_file_names": bad[:BAD_NAMES_KEPT],
        "train_mean": [float(v) for v in mean],
        "train_std": [float(v) for v in std],
    }


# ---------------------------------------------------------------- reading
def cache_key(root: str, **options) -> ArtifactKey:
    return ArtifactKey.make("cache", cache_config(root, **options))


def _shard_file(store, key: ArtifactKey) -> Path:
    if not store.exists(key):
        store.build(key, lambda tmp: build_shard(key, store, tmp))
    return store.path(key) / "images.npy"


def _rebuild(store, key: ArtifactKey) -> None:
    log.warning("cache shard %s does not match its digests; rebuilding it", key)
    store.invalidate(key)
    store.build(key, lambda tmp: build_shard(key, store, tmp))


def ensure_cache(key: ArtifactKey, store) -> None:
    """Build the shards that are missing (or fail their checksums), then the merged cache."""
    from workers.graph import shard_keys

    if store.ready(key):
        return
    for sk in shard_keys(key):
        store.build(sk, lambda tmp, sk=sk: build_shard(sk, store, tmp))
    store.build(key, lambda tmp: build_cache(key, store, tmp))


_OPEN: dict[tuple[str, str, int], Splits] = {}


def load(root: str | None = None, store=None, **options) -> Splits:
    """The splits as sharded arrays over the cache in `store` (built first if missing): nothing is read until
    it is indexed, and every image read is checked against its digest once per process."""
    if store is None:
        raise DataError("imagefolder reads its cache from the artifact store: load_splits(dataset, store)")
    return open_cache(cache_key(root, **options), store, int(options.get("image_size", 32)))


def open_cache(key: ArtifactKey, store, input_side: int) -> Splits:
    """The splits of the cache `key` in `store` (built first if missing), for a student input of `input_side`."""
    from workers.graph import shard_keys

    ensure_cache(key, store)
    memo = (store.st.uri, key.digest, input_side)  # one cache, several input sides
    if memo in _OPEN and store.ready(key):
        return _OPEN[memo]
    folder = store.path(key)
    manifest = store.manifest(key)
    size = key.cfg["rule"]["shard_size"]
    keys: dict[str, list[ArtifactKey]] = {}
    for sk in shard_keys(key):
        keys.setdefault(sk.cfg["split"], []).append(sk)
    arrays = {}
    for split in SPLITS:
        info = manifest["splits"][split]
        shard_set = ShardSet(
            info["files"],
            tuple(info["shape"]),
            size,
            lambda i, ks=keys[split]: _shard_file(store, ks[i]),
            np.load(folder / f"{split}_digests.npy"),
            on_corrupt=lambda i, ks=keys[split]: _rebuild(store, ks[i]),
            name=split,
        )
        x = ShardedImages(
            shard_set, np.load(folder / f"{split}_rows.npy"), np.load(folder / f"{split}_sums.npy", mmap_mode="r")
        )
        arrays[split] = (x, np.load(folder / f"{split}_labels.npy"))
    splits = Splits(
        *arrays["train"],
        *arrays["minival"],
        *arrays["val"],
        tuple(manifest["class_names"]),
        input_side=input_side,
    )
    _OPEN[memo] = splits
    return splits
