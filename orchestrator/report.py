"""Tables and curves from the results store: accuracy per (selector, regime, IPC) over seeds; EL2N-Best."""

from __future__ import annotations

import io
import json

from orchestrator.grid import expand
from orchestrator.spec import SweepSpec
from workers.storage import Storage


def current_rows(spec: SweepSpec):
    """Rows of the trials in the current spec only (old rows of changed settings stay in the store)."""
    return spec.store().load(trial_ids={t.trial_id for t in expand(spec)})


def accuracy_table(df):
    """Mean and std of last-epoch test top-1 (in %) over seeds, one row per (selector label, regime, ipc):
    the canonical label keeps variants of one method apart (`el2n_window(offset=0.8)`)."""
    import pandas as pd

    if df.empty:
        return pd.DataFrame(columns=["selector", "regime", "ipc", "top1_mean", "top1_std", "seeds"])
    g = df.assign(selector=df["selector_label"], top1=df["top1"] * 100).groupby(["selector", "regime", "ipc"])
    out = g["top1"].agg(top1_mean="mean", top1_std="std", seeds="count").reset_index()
    return out.sort_values(["regime", "ipc", "selector"]).reset_index(drop=True)


def format_table(table) -> str:
    if table.empty:
        return "(no finished trials yet)"
    width = max(24, *(len(s) for s in table["selector"]))
    lines = [f"{'regime':<7} {'ipc':>4}  {'selector':<{width}} {'top1 %':>14}  seeds"]
    for r in table.itertuples():
        std = "" if r.seeds < 2 else f" ± {r.top1_std:4.1f}"
        lines.append(f"{r.regime:<7} {r.ipc:>4}  {r.selector:<{width}} {r.top1_mean:>7.2f}{std:<7}  {r.seeds}")
    return "\n".join(lines)


class ReportNotWritten(Exception):
    """The report folder cannot be written (a read-only archive, a typo): the tables were printed."""


def write_report(table, folder: str) -> str:
    """Writes accuracy.csv and accuracy_vs_ipc.png into `folder` (a path or a storage URI); returns it."""
    files = {"accuracy.csv": table.to_csv(index=False).encode()}
    if not table.empty:
        buf = io.BytesIO()
        fig = plot_accuracy(table)
        fig.savefig(buf, format="png", dpi=110)
        _close(fig)
        files["accuracy_vs_ipc.png"] = buf.getvalue()
    st = Storage(folder)
    try:
        for name, data in files.items():
            st.write_atomic(st.path(name), data)
    except OSError as err:
        raise ReportNotWritten(f"cannot write the report to {st.base}: {err.strerror or err}") from None
    return st.base


def plot_accuracy(table):
    """Accuracy vs IPC, one panel per regime on one shared y-axis, the IPCs themselves as ticks (log x)."""
    import logging

    logging.getLogger("matplotlib").setLevel(logging.ERROR)  # its first use says it builds a font cache
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    regimes = list(dict.fromkeys(table["regime"]))
    ipcs = sorted(set(table["ipc"]))
    fig, axes = plt.subplots(1, len(regimes), figsize=(4.5 * len(regimes), 3.6), squeeze=False, sharey=True)
    for ax, regime in zip(axes[0], regimes):
        sub = table[table["regime"] == regime]
        for sel, part in sub.groupby("selector"):
            ax.errorbar(
                part["ipc"], part["top1_mean"], yerr=part["top1_std"].fillna(0), marker="o", capsize=2, label=sel
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ipcs))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(i) for i in ipcs])
        ax.set_title(f"regime {regime}")
        ax.set_xlabel("images per class")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test top-1 (%)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


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
