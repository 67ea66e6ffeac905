"""ImageNet's validation labels when `val/` is flat (`val/ILSVRC2012_val_00000001.JPEG`, ...). No torch.

`dataset.val_labels` points at one of:
- Kaggle's `LOC_val_solution.csv` (ImageNet Object Localization Challenge): `ImageId,PredictionString`, the
  WNID is the first token of PredictionString;
- the ILSVRC2012 devkit folder (`ILSVRC2012_devkit_t12/`, holding `data/ILSVRC2012_validation_ground_truth.txt`
  and `data/meta.mat`), or that ground-truth file itself with `meta.mat` beside it: line k holds the
  ILSVRC2012_ID (1..1000) of `ILSVRC2012_val_<k, 8 digits>`, and meta.mat's `synsets` map IDs to WNIDs.

Returns {image file stem: WNID}.
"""

from __future__ import annotations

import csv
from pathlib import Path

from workers.data import DataError

GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META = "meta.mat"
HINT = (
    "give dataset.val_labels: the absolute path of Kaggle's LOC_val_solution.csv, or of the ILSVRC2012 devkit "
    "folder (ILSVRC2012_devkit_t12, with data/ILSVRC2012_validation_ground_truth.txt and data/meta.mat)"
)


def read_val_labels(path: str | Path) -> dict[str, str]:
    p = Path(path)
    if p.is_dir():
        for folder in (p / "data", p):
            if (folder / GROUND_TRUTH).is_file():
                return _devkit(folder / GROUND_TRUTH, folder / META)
        raise DataError(
            f"dataset.val_labels: {str(p)!r} is a folder without {GROUND_TRUTH} (or data/{GROUND_TRUTH}); {HINT}"
        )
    if not p.is_file():
        raise DataError(f"dataset.val_labels: {str(p)!r} does not exist; {HINT}")
    if p.suffix.lower() == ".csv":
        return _kaggle(p)
    if p.name == GROUND_TRUTH or p.suffix.lower() == ".txt":
        return _devkit(p, p.parent / META)
    raise DataError(f"dataset.val_labels: {str(p)!r} is neither a .csv nor the devkit's {GROUND_TRUTH}; {HINT}")


def _kaggle(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise DataError(
                f"dataset.val_labels: {str(path)!r} does not start with the header ImageId,PredictionString "
                f"(Kaggle's LOC_val_solution.csv); got {header!r}"
            )
        for line, row in enumerate(reader, 2):
            if not row:
                continue
            tokens = row[1].split() if len(row) > 1 else []
            if not tokens:
                raise DataError(f"dataset.val_labels: {path}:{line}: no WNID in PredictionString for {row[0]!r}")
            out[row[0].strip()] = tokens[0]
    return out


def _devkit(truth: Path, meta: Path) -> dict[str, str]:
    if not meta.is_file():
        raise DataError(
            f"dataset.val_labels: {str(meta)!r} is missing; the devkit's ground truth holds ILSVRC2012 ids, and "
            f"meta.mat maps them to WNIDs (it sits beside {GROUND_TRUTH} in the devkit's data/ folder)"
        )
    try:
        from scipy.io import loadmat

        synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
        wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
    except Exception as err:  # not a MAT file, no synsets table, ...
        raise DataError(
            f"dataset.val_labels: cannot read the synsets of {str(meta)!r} ({type(err).__name__}: {err}); it must be "
            "the ILSVRC2012 devkit's data/meta.mat"
        ) from None
    out: dict[str, str] = {}
    for k, line in enumerate(truth.read_text().split(), 1):
        try:
            out[f"ILSVRC2012_val_{k:08d}"] = wnid[int(line)]
        except (KeyError, ValueError):
            raise DataError(
                f"dataset.val_labels: {truth}:{k}: {line!r} is not an ILSVRC2012_ID listed in {meta}"
            ) from None
    return out
