"""The report's tables as DataFrames, computed from result rows (pandas only; docs/methods.md §6.2).

Every function takes rows as `orchestrator.report.frame(spec)` gives them (one row per grid point with a
finished trial, the point's axes as columns) or as `results.load` gives them (the axes are then read from
the rows). Accuracies are last-epoch test top-1 in percent. A **cell** is one combination of the axes
other than the selector and the seed: student, teacher, budget, regime, IPC. Over seeds every table
gives the mean, the sample standard deviation and the half-width of the 95% confidence interval of
the mean, t(0.975, n - 1) * std / sqrt(n) (Student t; none for one seed). Choices (the selector of a
Pareto point) read minival, never test.

- `accuracy`: per cell and selector.
- `gap_to_random`: selector - random per cell, paired by seed: the mean, std and CI of the per-seed
  differences (a seed without both rows is left out).
- `spread`: max - min of the selector means per cell, over every selector, over the real-image ones
  (random and coresets) and over the distillers; `full` is a reference, in none of them.
- `pareto`: at each compute-matched budget, accuracy against the data fraction n / N, and where more
  data stops paying.
- `dd_ranking` and `augmentation_robust`: DD-Ranking's LRS and ARS (docs/methods.md §6.4) from the rows
  that feed them.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from workers.catalogue import ARCHS, SELECTORS
from workers.config import Named

CELL = ("student", "teacher", "budget_unit", "budget", "regime", "ipc")
KINDS = ("random", "coreset", "distiller", "full")  # the order tables list them in
REAL = ("random", "coreset")  # real-image selectors
COMPUTE_MATCHED = ("full_epochs", "steps")  # budget units that give every IPC the same images


def kind(selector: str) -> str:
    """random, full, distiller (synthetic images) or coreset (every other selector of real images)."""
    if selector in ("random", "full"):
        return selector
    return "distiller" if selector in SELECTORS and SELECTORS[selector].distiller else "coreset"


def t975(n: int) -> float:
    """The two-sided 95% quantile of Student's t with n - 1 degrees of freedom (NaN below 2 samples)."""
    if n < 2:
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1))


def ci95(std: float, n: int) -> float:
    """Half-width of the 95% confidence interval of a mean of n samples with sample std `std`."""
    return t975(n) * std / math.sqrt(n) if n >= 2 else math.nan


def _config(row_json: Any) -> dict:
    return json.loads(row_json) if isinstance(row_json, str) else {}


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with every column the tables read: the cell axes (from the row's config where the frame does not
    carry them), `label` (the canonical selector label), `kind`, and `augment` (the recipe's views)."""
    df = df.copy()
    configs = df["config_json"].map(_config) if "config_json" in df else pd.Series([{}] * len(df), index=df.index)
    if "selector_label" not in df:
        df["selector_label"] = df["selector"]
    df["label"] = df["selector_label"].fillna(df["selector"])
    df["kind"] = df["selector"].map(kind)
    if "budget" not in df:
        df["budget"] = df["budget_value"] if "budget_value" in df else math.nan
    if "budget_unit" not in df:
        df["budget_unit"] = ""
    if "teacher" not in df:
        df["teacher"] = configs.map(lambda c: (c.get("tags") or {}).get("teacher", ""))
    if "student" not in df:
        df["student"] = [
            _student(c, df.at[i, "student_arch"] if "student_arch" in df else "") for i, c in configs.items()
        ]
    if "augment" not in df:
        df["augment"] = configs.map(lambda c: (c.get("train") or {}).get("augment", ""))
    for col in ("teacher", "student", "augment", "budget_unit"):
        df[col] = df[col].fillna("").astype(str)
    df["budget"] = df["budget"].astype(float)
    return df


def _student(config: dict, arch: Any) -> str:
    s = config.get("student")
    if not s:
        return arch if isinstance(arch, str) else ""
    from workers.naming import arch_label

    return arch_label(Named.make(s["name"], s.get("options"))) if s["name"] in ARCHS else s["name"]


def cells(df: pd.DataFrame, without: tuple[str, ...] = ()) -> list[str]:
    return [c for c in CELL if c in df.columns and c not in without]


def _stats(values: pd.Series) -> pd.Series:
    n = int(values.count())
    std = float(values.std()) if n >= 2 else math.nan
    return pd.Series({"mean": float(values.mean()), "std": std, "ci95": ci95(std, n), "n": n})


def _order(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows in cell order, then random, coresets, distillers, full, then by label."""
    rank = df["kind"].map({k: i for i, k in enumerate(KINDS)})
    return df.assign(_rank=rank).sort_values([*keys, "_rank", "selector"]).drop(columns="_rank").reset_index(drop=True)


ACCURACY_COLUMNS = [*CELL, "selector", "kind", "top1_mean", "top1_std", "top1_ci95", "seeds", "minival_mean"]


def accuracy(df: pd.DataFrame) -> pd.DataFrame:
    """Test top-1 (%) over seeds per cell and selector label: mean, std, CI, seeds; and mean minival top-1."""
    if df.empty:
        return pd.DataFrame(columns=ACCURACY_COLUMNS)
    df = prepare(df)
    keys = cells(df)
    rows = []
    for key, part in df.groupby([*keys, "label"], dropna=False, sort=False):
        s = _stats(part["top1"] * 100)
        minival = part["minival_top1"].mean() * 100 if "minival_top1" in part else math.nan
        rows.append(
            (*key, part["kind"].iloc[0], s["mean"], s["std"], s["ci95"], int(s["n"]), minival),
        )
    cols = [*keys, "selector", "kind", "top1_mean", "top1_std", "top1_ci95", "seeds", "minival_mean"]
    return _order(pd.DataFrame(rows, columns=cols), keys)


GAP_COLUMNS = [*CELL, "selector", "kind", "gap_mean", "gap_std", "gap_ci95", "pairs", "wins"]


def gap_to_random(df: pd.DataFrame, reference: str = "random") -> pd.DataFrame:
    """selector - `reference` in test top-1 points per cell, paired by seed: mean, std and 95% CI of the
    per-seed differences, the number of pairs and how many of them the selector won."""
    if df.empty:
        return pd.DataFrame(columns=GAP_COLUMNS)
    df = prepare(df)
    keys = cells(df)
    ref = df[df["label"] == reference][[*keys, "seed", "top1"]].rename(columns={"top1": "_ref"})
    ref = ref.groupby([*keys, "seed"], dropna=False, as_index=False)["_ref"].mean()
    pairs = df[df["label"] != reference].merge(ref, on=[*keys, "seed"], how="inner")
    if pairs.empty:
        return pd.DataFrame(columns=[*keys, *GAP_COLUMNS[len(CELL) :]])
    pairs["_d"] = (pairs["top1"] - pairs["_ref"]) * 100
    rows = []
    for key, part in pairs.groupby([*keys, "label"], dropna=False, sort=False):
        s = _stats(part["_d"])
        rows.append(
            (*key, part["kind"].iloc[0], s["mean"], s["std"], s["ci95"], int(s["n"]), int((part["_d"] > 0).sum()))
        )
    return _order(pd.DataFrame(rows, columns=[*keys, *GAP_COLUMNS[len(CELL) :]]), keys)


SPREAD_COLUMNS = [
    *CELL,
    "spread",
    "best",
    "worst",
    "selectors",
    "spread_real",
    "best_real",
    "worst_real",
    "spread_distillers",
    "distillers",
]


def spread(df: pd.DataFrame) -> pd.DataFrame:
    """max - min of the selectors' mean test top-1 (points) per cell: over every selector but `full`, over the
    real-image selectors (random and coresets) and over the distillers (NaN with fewer than two)."""
    acc = accuracy(df)
    keys = cells(acc)
    if acc.empty:
        return pd.DataFrame(columns=[*keys, *SPREAD_COLUMNS[len(CELL) :]])

    def ends(part: pd.DataFrame) -> tuple[float, str, str]:
        if len(part) < 2:
            return math.nan, "", ""
        part = part.sort_values(["top1_mean", "selector"])
        return (
            part["top1_mean"].iloc[-1] - part["top1_mean"].iloc[0],
            part["selector"].iloc[-1],
            part["selector"].iloc[0],
        )

    rows = []
    for key, part in acc[acc["kind"] != "full"].groupby(keys, dropna=False, sort=False):
        real, dist = part[part["kind"].isin(REAL)], part[part["kind"] == "distiller"]
        rows.append((*key, *ends(part), len(part), *ends(real), ends(dist)[0], len(dist)))
    return pd.DataFrame(rows, columns=[*keys, *SPREAD_COLUMNS[len(CELL) :]])


PARETO_COLUMNS = [
    "student",
    "teacher",
    "regime",
    "budget_unit",
    "budget",
    "fraction",
    "ipc",
    "selector",
    "top1_mean",
    "top1_ci95",
    "seeds",
    "minival_mean",
    "gain_beyond",
    "stops_paying",
]


def pareto(df: pd.DataFrame, tol: float = 1.0, selector: str | None = None) -> pd.DataFrame:
    """Accuracy against the data fraction n / N at each compute-matched budget (`full_epochs`, `steps`: every
    IPC sees the same images), per student, teacher and regime. At each fraction below 1 the point is the
    selector with the best mean **minival** top-1 (or `selector`, when given); at fraction 1 it is `full`
    (its rows at every IPC it is paired with train identically, so they are averaged per seed first).
    `gain_beyond` = the best mean test top-1 at any larger fraction minus this one; more data `stops_paying`
    at the smallest fraction whose gain_beyond is at most `tol` points (marked on that row only)."""
    if df.empty:
        return pd.DataFrame(columns=PARETO_COLUMNS)
    df = prepare(df)
    df = df[df["budget_unit"].isin(COMPUTE_MATCHED)]
    if df.empty or "full_epochs" not in df or "subset_epochs" not in df:
        return pd.DataFrame(columns=PARETO_COLUMNS)
    df = df.assign(fraction=(df["full_epochs"] / df["subset_epochs"]).round(12))
    group = ["student", "teacher", "regime", "budget_unit", "budget"]
    rows = []
    for key, part in df.groupby(group, dropna=False, sort=True):
        curve = []
        sub = part[part["kind"] != "full"]
        if selector is not None:
            sub = sub[sub["label"] == selector]
        for (ipc, fraction), at in sub.groupby(["ipc", "fraction"], sort=True):
            minival = at.groupby("label")["minival_top1"].mean().sort_index()  # ties: the first label
            chosen = minival.sort_values(ascending=False, kind="stable").index[0]
            s = _stats(at.loc[at["label"] == chosen, "top1"] * 100)
            mv = at.loc[at["label"] == chosen, "minival_top1"].mean() * 100
            curve.append([fraction, ipc, chosen, s["mean"], s["ci95"], int(s["n"]), mv])
        full = part[part["kind"] == "full"]
        if not full.empty:
            per_seed = full.groupby("seed")[["top1", "minival_top1"]].mean()
            s = _stats(per_seed["top1"] * 100)
            curve.append([1.0, None, "full", s["mean"], s["ci95"], int(s["n"]), per_seed["minival_top1"].mean() * 100])
        curve.sort(key=lambda r: r[0])
        knee_found = False
        for i, r in enumerate(curve):
            beyond = max((c[3] for c in curve[i + 1 :]), default=math.nan)
            gain = beyond - r[3] if not math.isnan(beyond) else math.nan
            knee = not knee_found and (math.isnan(gain) or gain <= tol)
            knee_found |= knee
            rows.append([*key[:3], key[3], key[4], *r, gain, knee])
    cols = [*group[:3], "budget_unit", "budget", *PARETO_COLUMNS[5:]]
    return pd.DataFrame(rows, columns=cols)[PARETO_COLUMNS]


def _robust(x: float) -> float:
    """DD-Ranking's map of a score in [-1, 1] onto [0, 1]: (e^x - e^-1) / (e - e^-1)."""
    return (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))


DD_RANKING_COLUMNS = [
    "student",
    "teacher",
    "budget_unit",
    "budget",
    "ipc",
    "selector",
    "kind",
    "eval_regime",
    "full_hl",
    "sel_hl",
    "sel_eval",
    "random_eval",
    "hlr",
    "ior",
    "lrs",
    "rows",
]


def _means(df: pd.DataFrame, keys: list[str]) -> dict[tuple, float]:
    """Mean test top-1 (a fraction, as DD-Ranking's formulas need) per keys."""
    return df.groupby(keys, dropna=False)["top1"].mean().to_dict()


def dd_ranking(df: pd.DataFrame, w: float = 0.5) -> pd.DataFrame:
    """DD-Ranking's label-robust score (docs/methods.md §6.4) per selector, IPC and soft-label regime r, in
    fractions: HLR = Acc(full, hl) - Acc(sel, hl), IOR = Acc(sel, r) - Acc(random, r), LRS = (e^a - e^-1) /
    (e - e^-1) with a = w IOR - (1 - w) HLR. Fed by four rows' means over seeds, named in `rows`: `full` under
    hl at the same student, teacher, budget and IPC (ddsweep's full-data run is compute-matched, DD-Ranking's
    is not), the selector under hl and under r, random under r. A selector without all four is left out."""
    if df.empty:
        return pd.DataFrame(columns=DD_RANKING_COLUMNS)
    df = prepare(df)
    keys = cells(df, without=("regime",))
    m = _means(df, [*keys, "regime", "label"])
    rows = []
    for key, part in df[~df["kind"].isin(("random", "full"))].groupby([*keys, "label"], dropna=False, sort=True):
        *cell, label = key
        cell = tuple(cell)
        for r in ("sl", "sl_kd"):
            need = {
                "full_hl": (*cell, "hl", "full"),
                "sel_hl": (*cell, "hl", label),
                "sel_eval": (*cell, r, label),
                "random_eval": (*cell, r, "random"),
            }
            if not all(k in m for k in need.values()):
                continue
            v = {k: m[need[k]] for k in need}
            hlr, ior = v["full_hl"] - v["sel_hl"], v["sel_eval"] - v["random_eval"]
            fed = f"full/hl, {label}/hl, {label}/{r}, random/{r}"
            rows.append(
                [*cell, label, part["kind"].iloc[0], r, *v.values(), hlr, ior, _robust(w * ior - (1 - w) * hlr), fed]
            )
    out = pd.DataFrame(rows, columns=[*keys, *DD_RANKING_COLUMNS[DD_RANKING_COLUMNS.index("selector") :]])
    return out


ARS_COLUMNS = [*CELL, "selector", "kind", "augment", "beta", "ars", "rows"]


def augmentation_robust(df: pd.DataFrame, gamma: float = 0.5) -> pd.DataFrame:
    """DD-Ranking's augmentation-robust score (docs/methods.md §6.4) per cell and selector, in fractions:
    b = gamma (Acc(sel, aug) - Acc(random, aug)) + (1 - gamma) (Acc(sel, none) - Acc(random, none)), ARS = (e^b
    - e^-1) / (e - e^-1). Needs, in one cell, rows of the selector and of random trained with views (`augment`
    of hl and sl recipes other than none) and without (`train.augment: none`): one sweep holds only one, so
    pass the frames of two sweeps that differ only in `train.augment` concatenated. sl_kd's views are its own
    and never read `augment`: it has no ARS."""
    if df.empty:
        return pd.DataFrame(columns=ARS_COLUMNS)
    df = prepare(df)
    df = df[(df["regime"] != "sl_kd") & (df["augment"] != "")]
    keys = cells(df)
    m = _means(df.assign(_none=df["augment"] == "none"), [*keys, "_none", "label"])
    rows = []
    for key, part in df[~df["kind"].isin(("random", "full"))].groupby([*keys, "label"], dropna=False, sort=True):
        *cell, label = key
        aug = sorted(a for a in part["augment"].unique() if a != "none")
        need = [(*cell, False, label), (*cell, False, "random"), (*cell, True, label), (*cell, True, "random")]
        if not aug or not all(k in m for k in need):
            continue
        a_sel, a_rdm, n_sel, n_rdm = (m[k] for k in need)
        beta = gamma * (a_sel - a_rdm) + (1 - gamma) * (n_sel - n_rdm)
        fed = f"{label} and random, each with augment {'/'.join(aug)} and none"
        rows.append([*cell, label, part["kind"].iloc[0], "/".join(aug), beta, _robust(beta), fed])
    return pd.DataFrame(rows, columns=[*keys, *ARS_COLUMNS[len(CELL) :]])
