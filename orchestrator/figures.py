"""The report's figures, drawn from the tables of `orchestrator.tables` (matplotlib, Agg backend).

Every figure puts the label regimes side by side on one shared y-axis, one row of panels per
combination of the other axes the sweep varies (student, teacher, budget). A selector keeps its
colour in every panel; `random` is black, the compute-matched `full` run a dashed grey line,
distillers dashed. Error bars are 95% confidence intervals over seeds.
"""

from __future__ import annotations

import logging

import pandas as pd

REGIME_ORDER = ("hl", "sl", "sl_kd")


def _plt():
    logging.getLogger("matplotlib").setLevel(logging.ERROR)  # its first use says it builds a font cache
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def close(fig) -> None:
    _plt().close(fig)


def _regimes(df: pd.DataFrame) -> list[str]:
    found = list(dict.fromkeys(df["regime"]))
    return sorted(found, key=lambda r: (REGIME_ORDER.index(r) if r in REGIME_ORDER else len(REGIME_ORDER), r))


def _varying(df: pd.DataFrame, cols: tuple[str, ...]) -> list[str]:
    return [c for c in cols if c in df.columns and df[c].nunique(dropna=False) > 1]


def _row_title(key: tuple, cols: list[str]) -> str:
    parts = []
    for c, v in zip(cols, key):
        parts.append(f"budget {v:g}" if c == "budget" else f"{c} {v}")
    return ", ".join(parts)


def _colours(labels: list[str]) -> dict[str, object]:
    plt = _plt()
    cmap = plt.get_cmap("tab20")
    palette = [cmap(i) for i in range(20) if i not in (14, 15)]  # tab20's greys are kept for `full`
    others = [s for s in labels if s not in ("random", "full")]
    out = {s: palette[i % len(palette)] for i, s in enumerate(others)}
    out.update({"random": "black", "full": "0.35"})
    return out


def _style(kind: str) -> dict:
    if kind == "random":
        return {"linewidth": 2.2, "marker": "o"}
    if kind == "full":
        return {"linestyle": (0, (6, 3)), "linewidth": 2.0, "marker": None}
    if kind == "distiller":
        return {"linestyle": "--", "marker": "s", "markersize": 3.5}
    return {"marker": "o", "markersize": 3.5}


def _ipc_axis(ax, ipcs: list[int]) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ipcs))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(i) for i in ipcs])


def _grid(rows: int, cols: int, width: float = 4.2, height: float = 3.3):
    plt = _plt()
    return plt.subplots(rows, cols, figsize=(width * cols + 2.2, height * rows), squeeze=False, sharey=True)


def _limits(axes, values, lo: float | None = None, hi: float | None = None, pad: float = 4.0) -> None:
    """One y-range for every panel, from the means (not the error bars: with two or three seeds a 95% CI can
    be wider than the whole scale), kept within [lo, hi]."""
    vals = [float(v) for v in values if v == v]
    if not vals:
        return
    bottom, top = min(vals) - pad, max(vals) + pad
    axes.flat[0].set_ylim(bottom if lo is None else max(lo, bottom), top if hi is None else min(hi, top))


def _legend(fig, axes) -> None:
    handles, labels = {}, []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if handles:
        fig.legend([handles[lab] for lab in labels], labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    fig.tight_layout()


def _regime_panels(df: pd.DataFrame, row_axes: tuple[str, ...]):
    """A panel per regime (columns) and per value of the `row_axes` the sweep varies (rows): the figure, its
    axes, and [(ax, that panel's rows, its title)]."""
    rowcols = _varying(df, row_axes)
    groups = list(df.groupby(rowcols, sort=True)) if rowcols else [((), df)]
    regimes = _regimes(df)
    fig, axes = _grid(len(groups), len(regimes))
    panels = []
    for r, (key, part) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        for c, regime in enumerate(regimes):
            title = f"regime {regime}" + (f" | {_row_title(key, rowcols)}" if rowcols else "")
            panels.append((axes[r][c], part[part["regime"] == regime], title))
    return fig, axes, panels


def _selector_lines(ax, sub: pd.DataFrame, value: str, err: pd.Series, colours: dict, ipcs: list[int]) -> None:
    """One line per selector of `value` against IPC with error bars `err` (the full run dashed)."""
    for sel, line in sub.groupby("selector", sort=False):
        line = line.sort_values("ipc")
        kind = line["kind"].iloc[0] if "kind" in line else "coreset"
        ax.errorbar(
            line["ipc"],
            line[value],
            yerr=err.loc[line.index].fillna(0),
            capsize=1.5,
            elinewidth=0.7,
            color=colours[sel],
            label="full (compute-matched)" if kind == "full" else sel,
            **_style(kind),
        )
    _ipc_axis(ax, ipcs)
    ax.set_xlabel("images per class")
    ax.grid(alpha=0.3)


def _top1_line(ax, line: pd.DataFrame, x: str, colour, label: str) -> None:
    """Mean test top-1 against column `x` with its 95% CI as error bars."""
    ax.errorbar(
        line[x],
        line["top1_mean"],
        yerr=line["top1_ci95"].fillna(0),
        marker="o",
        markersize=3.5,
        capsize=1.5,
        elinewidth=0.7,
        color=colour,
        label=label,
    )


def _ylabel(axes, text: str) -> None:
    for row in axes:
        row[0].set_ylabel(text)


def accuracy_vs_ipc(acc: pd.DataFrame):
    """Test top-1 against IPC (log scale, the IPCs as ticks): one line per selector, the compute-matched full
    run dashed; panels = regimes; a row per (student, teacher, budget) the sweep varies."""
    ipcs = sorted(set(acc["ipc"]))
    colours = _colours(list(dict.fromkeys(acc["selector"])))
    err = acc["top1_ci95"] if "top1_ci95" in acc else acc["top1_std"]
    fig, axes, panels = _regime_panels(acc, ("student", "teacher", "budget"))
    for ax, sub, title in panels:
        _selector_lines(ax, sub, "top1_mean", err, colours, ipcs)
        ax.set_title(title, fontsize=9)
    _ylabel(axes, "test top-1 (%)")
    _limits(axes, acc["top1_mean"], 0.0, 100.0)
    _legend(fig, axes)
    return fig


def accuracy_vs_budget(acc: pd.DataFrame):
    """Test top-1 against the budget (log scale): a panel per (selector, regime), one line per IPC, the full
    run dashed: one line under a compute-matched unit (the same run at every IPC), else one per IPC in the
    IPC's colour (paper Fig. 1)."""
    plt = _plt()
    rowcols = _varying(acc, ("student", "teacher"))
    selectors = [s for s in dict.fromkeys(acc.loc[acc["kind"] != "full", "selector"])]
    rows = [(key, sel) for key, _ in (acc.groupby(rowcols, sort=True) if rowcols else [((), acc)]) for sel in selectors]
    regimes = _regimes(acc)
    ipcs = sorted(set(acc["ipc"]))
    cmap = plt.get_cmap("viridis")
    colour = {ipc: cmap(i / max(1, len(ipcs) - 1)) for i, ipc in enumerate(ipcs)}
    budgets = sorted(set(acc["budget"]))
    units = set(acc["budget_unit"]) if "budget_unit" in acc else set()
    matched = bool(units) and units <= {"full_epochs", "steps"}  # every IPC gets the same images
    fig, axes = _grid(len(rows), len(regimes), height=3.0)
    for r, (key, sel) in enumerate(rows):
        key = key if isinstance(key, tuple) else (key,)
        part = acc
        for col, v in zip(rowcols, key):
            part = part[part[col] == v]
        for c, regime in enumerate(regimes):
            ax = axes[r][c]
            sub = part[part["regime"] == regime]
            for ipc in ipcs:
                line = sub[(sub["selector"] == sel) & (sub["ipc"] == ipc)].sort_values("budget")
                if not line.empty:
                    _top1_line(ax, line, "budget", colour[ipc], f"IPC {ipc}")
                full = sub[(sub["kind"] == "full") & (sub["ipc"] == ipc)].sort_values("budget")
                if not full.empty and not matched:
                    ax.plot(full["budget"], full["top1_mean"], "--", color=colour[ipc], label=f"full at IPC {ipc}")
            full = sub[sub["kind"] == "full"]
            if matched and not full.empty:  # the same run at every IPC: one line
                line = full.groupby("budget")["top1_mean"].mean()
                ax.plot(line.index, line.values, "--", color="0.3", label="full data, same compute")
            ax.set_xscale("log")
            ax.set_xticks(budgets)
            ax.set_xticklabels([f"{b:g}" for b in budgets])
            ax.minorticks_off()
            unit = acc["budget_unit"].iloc[0] if "budget_unit" in acc and len(acc) else "budget"
            ax.set_xlabel(unit.replace("_", " ") if unit else "budget")
            ax.set_title(f"{sel} | regime {regime}" + (f" | {_row_title(key, rowcols)}" if rowcols else ""), fontsize=9)
            ax.grid(alpha=0.3)
        axes[r][0].set_ylabel("test top-1 (%)")
    _limits(axes, acc["top1_mean"], 0.0, 100.0)
    _legend(fig, axes)
    return fig


def gap_to_random(gap: pd.DataFrame):
    """selector - random (points, paired by seed) against IPC, with 95% CIs; zero marked; panels = regimes."""
    ipcs = sorted(set(gap["ipc"]))
    colours = _colours(list(dict.fromkeys(gap["selector"])))
    fig, axes, panels = _regime_panels(gap, ("student", "teacher", "budget"))
    for ax, sub, title in panels:
        ax.axhline(0, color="black", linewidth=1)
        _selector_lines(ax, sub, "gap_mean", gap["gap_ci95"], colours, ipcs)
        ax.set_title(title, fontsize=9)
    _ylabel(axes, "selector - random (points)")
    _limits(axes, gap["gap_mean"])
    _legend(fig, axes)
    return fig


def spread(sp: pd.DataFrame):
    """max - min of the selector means against IPC, one colour per regime: solid over every selector,
    dashed over the real-image ones, dotted over the distillers; a panel per (student, teacher, budget)."""
    plt = _plt()
    panels = _varying(sp, ("student", "teacher", "budget"))
    groups = list(sp.groupby(panels, sort=True)) if panels else [((), sp)]
    ipcs = sorted(set(sp["ipc"]))
    colour = dict(zip(REGIME_ORDER, ("tab:red", "tab:blue", "tab:green")))
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups) + 2.2, 3.6), squeeze=False, sharey=True)
    for i, (key, part) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        ax = axes[0][i]
        for regime in _regimes(part):
            line = part[part["regime"] == regime].sort_values("ipc")
            col = colour.get(regime)
            ax.plot(line["ipc"], line["spread"], "-o", color=col, markersize=4, label=f"{regime}: all selectors")
            ax.plot(line["ipc"], line["spread_real"], "--", color=col, label=f"{regime}: real-image selectors")
            if line["spread_distillers"].notna().any():
                ax.plot(line["ipc"], line["spread_distillers"], ":", color=col, label=f"{regime}: distillers")
        _ipc_axis(ax, ipcs)
        ax.set_xlabel("images per class")
        ax.set_title("spread over selectors" + (f" | {_row_title(key, panels)}" if panels else ""), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("max - min of selector means (points)")
    _legend(fig, axes)
    return fig


def pareto(par: pd.DataFrame):
    """Test top-1 against the data fraction n / N (log) at each compute-matched budget, one line per budget;
    a star where more data stops paying; panels = regimes, a row per (student, teacher)."""
    plt = _plt()
    budgets = sorted(set(zip(par["budget_unit"], par["budget"])), key=lambda b: b[1])
    cmap = plt.get_cmap("plasma")
    colour = {b: cmap(0.85 * i / max(1, len(budgets) - 1)) for i, b in enumerate(budgets)}
    fig, axes, panels = _regime_panels(par, ("student", "teacher"))
    for ax, sub, title in panels:
        for b in budgets:
            line = sub[(sub["budget_unit"] == b[0]) & (sub["budget"] == b[1])].sort_values("fraction")
            if line.empty:
                continue
            name = f"{b[0].replace('_', ' ')} {b[1]:g}"
            _top1_line(ax, line, "fraction", colour[b], name)
            knee = line[line["stops_paying"]]
            ax.plot(knee["fraction"], knee["top1_mean"], "*", markersize=13, color=colour[b], markeredgecolor="k")
        ax.set_xscale("log")
        ax.set_xlabel("data fraction n / N")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    _ylabel(axes, "test top-1 (%)")
    _limits(axes, par["top1_mean"], 0.0, 100.0)
    axes[0][-1].plot([], [], "*", markersize=11, color="white", markeredgecolor="k", label="more data stops paying")
    _legend(fig, axes)
    return fig


def png(fig, dpi: int = 110) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    close(fig)
    return buf.getvalue()
