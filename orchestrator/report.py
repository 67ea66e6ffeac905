"""Tables (and later curves) from the results store: accuracy per (selector, regime, IPC) over seeds."""

from __future__ import annotations

from pathlib import Path

from orchestrator.spec import SweepSpec


def current_rows(spec: SweepSpec):
    """Rows of the trials in the current spec only (old rows of changed settings stay in the store)."""
    from orchestrator.grid import expand

    return spec.store().load(trial_ids={t.trial_id for t in expand(spec)})


def selector_labels(df):
    """`el2n_window(offset=0.8)`: a selector's name plus only the options that vary between its rows."""
    import json

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
    """Mean and std of last-epoch test top-1 (in %) over seeds, one row per (selector, regime, ipc)."""
    import pandas as pd

    if df.empty:
        return pd.DataFrame(columns=["selector", "regime", "ipc", "top1_mean", "top1_std", "seeds"])
    g = df.assign(selector=selector_labels(df), top1=df["top1"] * 100).groupby(["selector", "regime", "ipc"])["top1"]
    out = g.agg(top1_mean="mean", top1_std="std", seeds="count").reset_index()
    return out.sort_values(["regime", "ipc", "selector"]).reset_index(drop=True)


def format_table(table) -> str:
    if table.empty:
        return "(no finished trials yet)"
    lines = [f"{'regime':<7} {'ipc':>4}  {'selector':<24} {'top1 %':>14}  seeds"]
    for r in table.itertuples():
        std = "" if r.seeds < 2 else f" ± {r.top1_std:4.1f}"
        lines.append(f"{r.regime:<7} {r.ipc:>4}  {r.selector:<24} {r.top1_mean:>7.2f}{std:<7}  {r.seeds}")
    return "\n".join(lines)


def write_report(spec: SweepSpec) -> str:
    """Writes report/accuracy.csv and report/accuracy_vs_ipc.png in the sweep folder; returns that folder."""
    import tempfile

    store = spec.store()
    table = accuracy_table(current_rows(spec))
    files = {"accuracy.csv": table.to_csv(index=False).encode()}
    if not table.empty:
        with tempfile.TemporaryDirectory() as tmp:
            _plot(table, Path(tmp) / "plot.png")
            files["accuracy_vs_ipc.png"] = (Path(tmp) / "plot.png").read_bytes()
    for name, data in files.items():
        store.st.write_atomic(store.path("report", name), data)
    return store.path("report")


def _plot(table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(dict.fromkeys(table["regime"]))
    fig, axes = plt.subplots(1, len(regimes), figsize=(4.5 * len(regimes), 3.6), squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        sub = table[table["regime"] == regime]
        for sel, part in sub.groupby("selector"):
            ax.errorbar(
                part["ipc"], part["top1_mean"], yerr=part["top1_std"].fillna(0), marker="o", capsize=2, label=sel
            )
        ax.set_xscale("log")
        ax.set_title(f"regime {regime}")
        ax.set_xlabel("images per class")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def best_window(df, selector: str = "el2n_window", option: str = "offset", by=("dataset", "ipc", "regime")):
    """EL2N-Best (docs/methods.md §4.10): per (data set, IPC, regime) the window offset with the best mean
    **minival** top-1 over seeds; its mean test top-1 is reported beside it and never used to choose.
    Ties go to the smaller offset. Returns one row per group: by..., offset, minival_top1, top1, seeds,
    candidates (how many offsets were compared)."""
    import json

    import pandas as pd

    rows = df[df["selector"] == selector].copy()
    cols = [*by, option, "minival_top1", "top1", "seeds", "candidates"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    rows[option] = rows["selector_options"].map(lambda s: json.loads(s)[option])
    g = (
        rows.groupby([*by, option])
        .agg(minival_top1=("minival_top1", "mean"), top1=("top1", "mean"), seeds=("seed", "nunique"))
        .reset_index()
    )
    g = g.sort_values([*by, "minival_top1", option], ascending=[True] * len(by) + [False, True])
    best = g.groupby(list(by), sort=True).head(1).copy()
    best["candidates"] = g.groupby(list(by))[option].transform("count").loc[best.index]
    return best[cols].reset_index(drop=True)
