"""`ddsweep report`: report.md with its figures and tables, the same tables as CSV, and the DataFrame API.

`frame(spec)` joins the store's rows to the sweep's grid points (a trial shared by several points, e.g.
one that never reads the teacher under a teacher axis, appears under each); `tables(spec)` computes
every table of the report from it (`orchestrator.tables`, docs/methods.md §6.2); `write_report` writes
`report.md`, one CSV per table and the figures (`orchestrator.figures`) into `<storage>/<sweep>/report/`.
EL2N-Best and CAD-Best (`best_window`, `cad_best`) choose on minival, never on test.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from orchestrator import tables as T
from orchestrator.grid import expand, points
from orchestrator.spec import SweepSpec
from workers.naming import arch_label
from workers.storage import Storage


def current_rows(spec: SweepSpec):
    """Rows of the trials in the current spec only (old rows of changed settings stay in the store)."""
    return spec.store().load(trial_ids={t.trial_id for t in expand(spec)})


def frame(spec: SweepSpec, rows=None):
    """One row per grid point whose trial has a row: the row's columns, and the point's axes `student`
    (arch label), `teacher` (its name under a teacher axis, else ""), `budget` (the value; `budget_unit`
    beside it). `rows` defaults to the store's rows of the spec's trials."""
    import pandas as pd

    pts = points(spec)
    if rows is None:
        rows = spec.store().load(trial_ids={t.trial_id for _, t in pts})
    axes = pd.DataFrame(
        {
            "trial_id": [t.trial_id for _, t in pts],
            "student": [arch_label(p["student"]) for p, _ in pts],
            "teacher": [p["teacher"] or "" for p, _ in pts],
            "budget": [float(p["budget"].value) for p, _ in pts],
            "budget_unit": [p["budget"].unit for p, _ in pts],
        }
    )
    if rows.empty:
        return rows.assign(**{c: pd.Series(dtype=axes[c].dtype) for c in axes.columns if c != "trial_id"})
    rows = rows.drop(columns=[c for c in ("student", "teacher", "budget", "budget_unit") if c in rows.columns])
    return axes.merge(rows, on="trial_id", how="inner").reset_index(drop=True)


def selector_labels(df):
    """`el2n_window(offset=0.8)`: a selector's name plus only the options that vary between its rows."""
    opts = df["selector_options"].fillna("{}").map(json.loads)
    labels = df["selector"].copy()
    for name in df["selector"].unique():
        rows = df["selector"] == name
        dicts = list(opts[rows])
        varying = sorted(k for k in set().union(*dicts) if len({json.dumps(d.get(k)) for d in dicts}) > 1)
        if varying:
            labels[rows] = [name + "(" + ",".join(f"{k}={d.get(k)}" for k in varying) + ")" for d in dicts]
    return labels


def accuracy_table(df):
    """Test top-1 (%) over seeds per (student, teacher, budget, regime, IPC) and canonical selector label
    (`el2n_window(offset=0.8)` keeps variants apart): top1_mean, top1_std, top1_ci95, seeds (tables.accuracy)."""
    return T.accuracy(df)


def format_table(table) -> str:
    """The accuracy table as `ddsweep report` prints it; the axes the sweep varies get a column each."""
    if table.empty:
        return "(no finished trials yet)"
    extra = [c for c in ("student", "teacher", "budget") if c in table and table[c].nunique(dropna=False) > 1]
    width = max(24, *(len(s) for s in table["selector"]))
    head = "".join(f"{c:<{_width(table, c)}} " for c in extra)
    lines = [f"{head}{'regime':<7} {'ipc':>4}  {'selector':<{width}} {'top1 %':>14}  seeds"]
    for r in table.itertuples():
        std = "" if r.seeds < 2 else f" ± {r.top1_std:4.1f}"
        pre = "".join(f"{_shown(getattr(r, c)):<{_width(table, c)}} " for c in extra)
        lines.append(f"{pre}{r.regime:<7} {r.ipc:>4}  {r.selector:<{width}} {r.top1_mean:>7.2f}{std:<7}  {r.seeds}")
    return "\n".join(lines)


def _shown(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _width(table, col: str) -> int:
    return max(len(col), *(len(_shown(v)) for v in table[col]))


class ReportNotWritten(Exception):
    """The report folder cannot be written (a read-only archive, a typo): the tables were printed."""


@dataclass
class Report:
    """Everything `ddsweep report` writes: the tables (DataFrames, by CSV name) and what report.md says."""

    spec: SweepSpec
    frame: object  # the DataFrame of `frame(spec)`
    tables: dict = field(default_factory=dict)  # name -> DataFrame

    @property
    def accuracy(self):
        return self.tables["accuracy"]


def tables(spec: SweepSpec, rows=None) -> dict:
    """Every table of the report as a DataFrame, by name: accuracy, gap_to_random, spread, pareto,
    el2n_best, cad_best, dd_ranking (LRS) and augmentation_robust (ARS); see orchestrator.tables."""
    return build(spec, rows).tables


def build(spec: SweepSpec, rows=None) -> Report:
    df = frame(spec, rows)
    by = ("dataset", *T.cells(T.prepare(df))) if not df.empty else ("dataset", *T.CELL)
    out = {
        "accuracy": T.accuracy(df),
        "gap_to_random": T.gap_to_random(df),
        "spread": T.spread(df),
        "pareto": T.pareto(df),
        "el2n_best": best_window(df, by=by) if _variants(df, "el2n_window") else None,
        "cad_best": cad_best(df, by=by) if not df.empty and _variants(df, "cad_prune") > 1 else None,
        "dd_ranking": T.dd_ranking(df),
        "augmentation_robust": T.augmentation_robust(df),
    }
    return Report(spec, df, {k: v for k, v in out.items() if v is not None})


def _variants(df, selector: str) -> int:
    """How many option variants of `selector` the rows hold (0 without rows of it)."""
    if df.empty:
        return 0
    return df.loc[df["selector"] == selector, "selector_options"].nunique()


def write_report(rep: Report, folder: str) -> str:
    """Writes report.md, a CSV per table and the figures into `folder` (a path or a storage URI), each file
    atomically; returns the folder."""
    from orchestrator import figures as F

    files = {f"{name}.csv": t.to_csv(index=False).encode() for name, t in rep.tables.items()}
    figs = {}
    acc = rep.accuracy
    if not acc.empty:
        figs["accuracy_vs_ipc.png"] = F.accuracy_vs_ipc(acc)
        if acc["budget"].nunique() > 1:
            figs["accuracy_vs_budget.png"] = F.accuracy_vs_budget(acc)
    if not rep.tables["gap_to_random"].empty:
        figs["gap_to_random.png"] = F.gap_to_random(rep.tables["gap_to_random"])
    if not rep.tables["spread"].empty and rep.tables["spread"]["spread"].notna().any():
        figs["spread.png"] = F.spread(rep.tables["spread"])
    if not rep.tables["pareto"].empty:
        figs["pareto.png"] = F.pareto(rep.tables["pareto"])
    files.update({name: F.png(fig) for name, fig in figs.items()})
    files["report.md"] = markdown(rep, figures=list(figs)).encode()
    st = Storage(folder)
    try:
        for name, data in files.items():
            st.write_atomic(st.path(name), data)
    except OSError as err:
        raise ReportNotWritten(f"cannot write the report to {st.base}: {err.strerror or err}") from None
    return st.base


def plot_accuracy(table):
    """Accuracy vs IPC, one panel per regime on one shared y-axis, the IPCs themselves as ticks (log x)."""
    from orchestrator import figures as F

    return F.accuracy_vs_ipc(table)


# ---------------------------------------------------------------- report.md
def _md(df, cols: list[str] | None = None) -> str:
    """A DataFrame as a Markdown table (values already formatted as text)."""
    cols = cols or list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df[cols].itertuples(index=False)]
    return "\n".join(lines)


def _pm(mean: float, ci: float, sign: bool = False) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    text = f"{mean:+.1f}" if sign else f"{mean:.1f}"
    return text + (f" ± {ci:.1f}" if isinstance(ci, float) and not math.isnan(ci) else "")


def _panels(t, cols=("student", "teacher", "budget")):
    """(title, part) per combination of the axes that vary in `t` (one untitled part when none does)."""
    varying = [c for c in cols if c in t and t[c].nunique(dropna=False) > 1]
    if not varying:
        return [("", t)]
    out = []
    for key, part in t.groupby(varying, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        out.append((", ".join(f"{c} {_shown(v)}" for c, v in zip(varying, key)), part))
    return out


def _pivot(t, value, index="selector", columns="ipc"):
    order = list(dict.fromkeys(t[index]))
    p = t.pivot_table(index=index, columns=columns, values=value, aggfunc="first").reindex(order)
    p.columns = [f"{columns} {_shown(c)}" if columns != "ipc" else f"IPC {c}" for c in p.columns]
    return p.reset_index().fillna("")


def markdown(rep: Report, figures: list[str]) -> str:
    spec, df, tb = rep.spec, rep.frame, rep.tables
    trials = expand(spec)
    done = df["trial_id"].nunique() if not df.empty else 0
    seeds = sorted(df["seed"].unique()) if not df.empty else []
    out = [f"# Report: sweep `{spec.name}`", ""]
    out.append(
        f"{done} of {len(trials)} trials have a row ({len(df)} of {len(points(spec))} grid points); data set "
        f"{spec.dataset.name}; seeds {', '.join(map(str, seeds)) or '-'}; budget "
        + ", ".join(f"{b.unit}={b.value:g}" for b in (spec.budgets or (spec.budget,)))
        + "."
    )
    out += [
        "",
        "Accuracies are last-epoch **test** top-1 in %, the mean over seeds ± the half-width of its 95% "
        "confidence interval (Student t with n - 1 degrees of freedom; none for one seed). Every choice below "
        "(EL2N-Best, CAD-Best, the selector of a Pareto point) reads **minival**, never test. The tables are "
        "also CSV files in this folder, and DataFrames from Python: `orchestrator.report.tables(spec)`.",
        "",
    ]
    if df.empty:
        return "\n".join(out + ["(no finished trials yet)", ""])
    acc = tb["accuracy"]
    out += ["## Accuracy vs IPC", ""]
    if "accuracy_vs_ipc.png" in figures:
        out += ["![accuracy vs IPC](accuracy_vs_ipc.png)", ""]
    if (acc["kind"] == "full").any():
        out += [
            "`full` trains on the whole train split with the compute of the IPC it is paired with (compute-matched).",
            "",
        ]
    for title, part in _panels(acc):
        for regime, sub in part.groupby("regime", sort=False):
            sub = sub.assign(cell=[_pm(m, c) for m, c in zip(sub["top1_mean"], sub["top1_ci95"])])
            out += [f"**{regime}**{' | ' + title if title else ''} (accuracy.csv)", "", _md(_pivot(sub, "cell")), ""]
    if "accuracy_vs_budget.png" in figures:
        out += ["## Accuracy vs budget", "", "![accuracy vs budget](accuracy_vs_budget.png)", ""]
        for title, part in _panels(acc, ("student", "teacher")):
            for regime, sub in part.groupby("regime", sort=False):
                sub = sub.assign(
                    cell=[_pm(m, c) for m, c in zip(sub["top1_mean"], sub["top1_ci95"])],
                    row=[f"{s} @ IPC {i}" for s, i in zip(sub["selector"], sub["ipc"])],
                )
                out += [
                    f"**{regime}**{' | ' + title if title else ''}",
                    "",
                    _md(_pivot(sub, "cell", "row", "budget")),
                    "",
                ]
    out += _gap_section(tb["gap_to_random"], "gap_to_random.png" in figures)
    out += _spread_section(tb["spread"], "spread.png" in figures)
    out += _pareto_section(tb["pareto"], "pareto.png" in figures, spec)
    out += _best_section(tb)
    out += _dd_ranking_section(tb, df)
    out += ["## Files", "", ", ".join(f"`{n}.csv`" for n in tb) + ("; " + ", ".join(f"`{f}`" for f in figures))]
    return "\n".join(out) + "\n"


def _intro(text: str, image: str | None) -> list[str]:
    """A section's explanation, then its figure when there is one."""
    return [text, ""] + ([image, ""] if image else [])


def _gap_section(gap, fig: bool) -> list[str]:
    out = ["## Gap to random", ""]
    if gap.empty:
        return out + ["(needs `random` in the grid)", ""]
    out += _intro(
        "Selector minus random in test top-1 points, per regime, IPC and budget, **paired by seed** (the mean of "
        "the per-seed differences ± its 95% CI; `wins` in gap_to_random.csv counts the seeds the selector won). "
        "Real-image selectors, distillers and the compute-matched `full` run are listed apart.",
        "![gap to random](gap_to_random.png)" if fig else None,
    )
    for title, part in _panels(gap):
        for regime, sub in part.groupby("regime", sort=False):
            sub = sub.assign(cell=[_pm(m, c, sign=True) for m, c in zip(sub["gap_mean"], sub["gap_ci95"])])
            for kind, name in (("coreset", "real-image selectors"), ("distiller", "distillers"), ("full", "full data")):
                k = sub[sub["kind"] == kind]
                if not k.empty:
                    head = f"**{regime}**, {name}{' | ' + title if title else ''}"
                    out += [head, "", _md(_pivot(k, "cell")), ""]
    return out


def _spread_section(sp, fig: bool) -> list[str]:
    out = ["## Spread over selectors", ""]
    if sp.empty or sp["spread"].isna().all():
        return out + ["(needs two selectors besides `full`)", ""]
    out += _intro(
        "max - min of the selectors' mean test top-1 (points) per regime, IPC and budget: over every selector "
        "but `full` (all), over the real-image selectors (random and coresets) and over the distillers. A "
        "small spread means the choice of images hardly matters.",
        "![spread](spread.png)" if fig else None,
    )
    for title, part in _panels(sp):
        rows = part.assign(
            cell=[
                "/".join("-" if isinstance(v, float) and math.isnan(v) else f"{v:.1f}" for v in vals)
                for vals in zip(part["spread"], part["spread_real"], part["spread_distillers"])
            ]
        )
        p = rows.pivot_table(index="regime", columns="ipc", values="cell", aggfunc="first")
        p.columns = [f"IPC {c}" for c in p.columns]
        out += [f"all / real-image / distillers{' | ' + title if title else ''} (spread.csv)", ""]
        out += [_md(p.reset_index()), ""]
        best = part.assign(best=[f"{b} > {w}" for b, w in zip(part["best"], part["worst"])])
        p = best.pivot_table(index="regime", columns="ipc", values="best", aggfunc="first")
        p.columns = [f"IPC {c}" for c in p.columns]
        out += ["best > worst selector", "", _md(p.reset_index()), ""]
    return out


def _pareto_section(par, fig: bool, spec: SweepSpec) -> list[str]:
    out = ["## Data fraction at fixed compute (Pareto view)", ""]
    units = {b.unit for b in (spec.budgets or (spec.budget,))}
    if par.empty:
        why = (
            "the budget is in epochs over the subset, so compute grows with IPC"
            if units == {"epochs"}
            else "no rows yet"
        )
        return out + [f"(needs a compute-matched budget, full_epochs or steps: {why})", ""]
    out += _intro(
        "At each budget every IPC sees the same number of images; the x-axis is the data fraction n / N (IPC "
        "x classes / train split; `full` = 1). At each fraction the point is the selector with the best mean "
        "**minival** top-1 (test shown). More data **stops paying** at the smallest fraction beyond which no "
        "larger fraction gains more than 1 point (★, `stops_paying` in pareto.csv).",
        "![pareto](pareto.png)" if fig else None,
    )
    for (regime, unit, budget), part in par.groupby(["regime", "budget_unit", "budget"], sort=True):
        for title, sub in _panels(part, ("student", "teacher")):
            rows = sub.assign(
                fraction=[f"{f:.4g}" for f in sub["fraction"]],
                ipc=[
                    ("" if v is None or (isinstance(v, float) and math.isnan(v)) else str(int(v))) for v in sub["ipc"]
                ],
                top1=[_pm(m, c) for m, c in zip(sub["top1_mean"], sub["top1_ci95"])],
                knee=["★" if k else "" for k in sub["stops_paying"]],
            )
            head = f"**{regime}**, {unit} {budget:g}{' | ' + title if title else ''}"
            out += [head, "", _md(rows, ["fraction", "ipc", "selector", "top1", "knee"]), ""]
    return out


def _best_section(tb) -> list[str]:
    out = []
    for name, title, option in (
        ("el2n_best", "EL2N-Best (el2n_window offset chosen on minival)", ["offset"]),
        ("cad_best", "CAD-Best (CAD-Prune's J, W, shift chosen on minival)", ["J", "W", "shift"]),
    ):
        t = tb.get(name)
        if t is None or t.empty:
            continue
        out += [f"## {title}", "", "Chosen per IPC (and regime, budget) on mean minival top-1; test beside it.", ""]
        rows = t.assign(
            minival=[f"{100 * v:.1f}" for v in t["minival_top1"]],
            test=[f"{100 * v:.1f}" for v in t["top1"]],
        )
        cols = [c for c in ("student", "teacher", "budget") if c in t and t[c].nunique(dropna=False) > 1]
        cols += ["regime", "ipc", *option, "minival", "test", "seeds", "candidates"]
        out += [_md(rows, cols), f"({name}.csv)", ""]
    return out


def _dd_ranking_section(tb, df) -> list[str]:
    out = ["## DD-Ranking scores", ""]
    lrs, ars = tb["dd_ranking"], tb["augmentation_robust"]
    out += [
        "Label-robust score LRS = (e^a - e^-1) / (e - e^-1), a = 0.5 IOR - 0.5 HLR, with HLR = Acc(full, hl) - "
        "Acc(selector, hl) and IOR = Acc(selector, r) - Acc(random, r) for a soft-label regime r; accuracies as "
        "fractions, means over seeds (docs/methods.md §6.4). ddsweep's `full` run is compute-matched; DD-Ranking's "
        "full-data accuracy is not.",
        "",
    ]
    if lrs.empty:
        have = set(df["selector"]) if not df.empty else set()
        regimes = set(df["regime"]) if not df.empty else set()
        missing = [
            what
            for what, ok in (
                ("`full` under hl", "full" in have and "hl" in regimes),
                ("`random` under sl or sl_kd", "random" in have and bool(regimes & {"sl", "sl_kd"})),
                ("a selector under hl and a soft-label regime", bool(have - {"random", "full"})),
            )
            if not ok
        ]
        out += [f"LRS: not computed; the sweep lacks {', '.join(missing) or 'matching rows'}.", ""]
    else:
        rows = lrs.assign(
            **{c: [f"{100 * v:.1f}" for v in lrs[c]] for c in ("hlr", "ior")},
            LRS=[f"{v:.3f}" for v in lrs["lrs"]],
        )
        cols = [c for c in ("student", "teacher", "budget") if c in lrs and lrs[c].nunique(dropna=False) > 1]
        cols += ["ipc", "selector", "eval_regime", "hlr", "ior", "LRS", "rows"]
        out += ["HLR and IOR in points; `rows` names the four rows (selector/regime) each score is computed from.", ""]
        out += [_md(rows, cols), "(dd_ranking.csv)", ""]
    if ars.empty:
        out += [
            "ARS (augmentation-robust): not computed; it needs the same selectors and random trained with views "
            "and without (`train.augment: none`), which one sweep does not hold. Run the sweep again under another "
            "name with `train: {augment: none}` and call `orchestrator.tables.augmentation_robust` on "
            "`pd.concat([report.frame(spec_a), report.frame(spec_b)])`.",
            "",
        ]
    else:
        rows = ars.assign(ARS=[f"{v:.3f}" for v in ars["ars"]])
        out += [_md(rows, ["regime", "ipc", "selector", "augment", "ARS", "rows"]), "(augmentation_robust.csv)", ""]
    return out


def best_window(df, selector: str = "el2n_window", option: str = "offset", by=("dataset", "ipc", "regime")):
    """EL2N-Best (docs/methods.md §4.10): per (data set, IPC, regime) the window offset with the best mean
    **minival** top-1 over seeds; its mean test top-1 is reported beside it and never used to choose.
    Ties go to the smaller offset. Returns one row per group: by..., offset, minival_top1, top1, seeds,
    candidates (how many offsets were compared)."""
    return best_variant(df, selector, (option,), by)


def cad_best(df, by=("dataset", "ipc", "regime")):
    """CAD-Best (docs/methods.md §4.11): CAD-Prune's (J, W, shift) chosen per (data set, IPC, regime) on minival,
    as EL2N-Best chooses its window; its test top-1 beside it. One row per group: by..., J, W, shift,
    minival_top1, top1, seeds, candidates."""
    return best_variant(df, "cad_prune", ("J", "W", "shift"), by)


def _order(value):
    """A sort key for option values of mixed types (J is an integer or "auto"): numbers first, by value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return (1, str(value))
    return (0, value)


def best_variant(df, selector: str, options: tuple[str, ...], by=("dataset", "ipc", "regime")):
    """The variant of `selector` (its values of `options`) with the best mean **minival** top-1 over seeds, per
    group `by`; its mean test top-1 beside it, never used to choose. Ties go to the smallest option values (in
    the order of `options`; numbers before strings). Returns one row per group: by..., options...,
    minival_top1, top1, seeds, candidates (how many variants were compared)."""
    import pandas as pd

    rows = df[df["selector"] == selector].copy()
    cols = [*by, *options, "minival_top1", "top1", "seeds", "candidates"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    parsed = rows["selector_options"].map(json.loads)
    for option in options:
        rows[option] = parsed.map(lambda o, option=option: o.get(option))
    rows["_variant"] = rows[list(options)].apply(lambda r: json.dumps(list(r), default=str), axis=1)
    g = (
        rows.groupby([*by, "_variant"])
        .agg(
            **{o: (o, "first") for o in options},
            minival_top1=("minival_top1", "mean"),
            top1=("top1", "mean"),
            seeds=("seed", "nunique"),
        )
        .reset_index()
    )
    g["_key"] = g[list(options)].apply(lambda r: tuple(_order(v) for v in r), axis=1)
    out = []
    for _, part in g.groupby(list(by), sort=True):
        part = part.assign(_neg=-part["minival_top1"]).sort_values(["_neg", "_key"], kind="stable")
        out.append(part.head(1).assign(candidates=len(part)))
    return pd.concat(out)[cols].reset_index(drop=True)
