"""`ddsweep report`'s tables against hand computations on a store whose rows these tests write themselves
(real Parquet rows under the real trial ids of a real sweep spec), its figures and report.md (issue #13)."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import pytest

from orchestrator import cli, report, tables
from orchestrator.grid import points
from orchestrator.spec import load_spec
from workers.budget import plan
from workers.config import canonical_json

T2 = 4.302652729749462  # Student t, 0.975 quantile, 2 degrees of freedom (3 seeds)
T1 = 12.706204736174694  # 1 degree of freedom (2 seeds)
N = 1338  # digits train split (minival excluded), 10 classes


def ci(values: list[float], t: float) -> float:
    m = sum(values) / len(values)
    std = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return t * std / math.sqrt(len(values))


def write_sweep(folder: Path, name: str, grid: str, extra: str = "") -> Path:
    f = folder / f"{name}.yaml"
    f.write_text(f"""
name: {name}
storage: {folder / "store"}
dataset: {{name: digits}}
student: {{arch: convnet, depth: 2, width: 16}}
grid:
{grid}
train: {{batch_size: 32}}
{extra}
""")
    return f


def fill(spec, values) -> int:
    """Write a row for every trial of `spec` that `values(point, trial)` gives (top1, minival) for."""
    store = spec.store()
    written = set()
    for point, t in points(spec):
        got = values(point, t)
        if got is None or t.trial_id in written:
            continue
        top1, minival = got
        bp = plan(t.budget, t.ipc * 10, N, t.train.batch_size, n_data=N if t.selector.name == "full" else None)

        assert store.write_row(
            {
                "sweep": spec.name,
                "trial_id": t.trial_id,
                "trial_name": t.trial_id,
                "selector": t.selector.name,
                "selector_options": json.dumps(t.selector.opts, sort_keys=True),
                "selector_label": t.selector.label() if t.selector.name == "el2n_window" else t.selector.name,
                "regime": t.regime,
                "ipc": t.ipc,
                "seed": t.seed,
                "dataset": "digits",
                "budget_unit": t.budget.unit,
                "budget_value": float(t.budget.value),
                **bp.to_json(),
                "top1": top1,
                "minival_top1": minival,
                "config_json": canonical_json(t.to_json()),
                "finished_at": datetime.now(timezone.utc),
            }
        )
        written.add(t.trial_id)
    return len(written)


# Known accuracies per (selector, regime, ipc): one value per seed 0, 1, 2.
KNOWN = {
    ("random", "hl", 1): [0.50, 0.60, 0.70],
    ("herding", "hl", 1): [0.62, 0.65, 0.80],  # paired differences 12, 5, 10 points
    ("rded", "hl", 1): [0.30, 0.40, 0.50],
    ("sre2l", "hl", 1): [0.20, 0.20, 0.32],
    ("full", "hl", 1): [0.90, 0.92, 0.94],
    ("random", "sl", 1): [0.74, 0.75, 0.76],
    ("herding", "sl", 1): [0.79, 0.80, 0.81],
    ("rded", "sl", 1): [0.70, 0.72, 0.74],
    ("sre2l", "sl", 1): [0.60, 0.60, 0.60],
    ("full", "sl", 1): [0.91, 0.91, 0.91],
}


@pytest.fixture
def known(tmp_path):
    f = write_sweep(
        tmp_path,
        "known",
        "  selector: [random, herding, rded, sre2l, full]\n  regime: [hl, sl]\n  ipc: [1]\n  seed: [0, 1, 2]",
        "budget: {full_epochs: 2}\nteacher: {arch: convnet, depth: 2, width: 16, norm: batch, epochs: 2}\n"
        "selectors: {rded: {mipc: 20}, sre2l: {iterations: 5}}\n",
    )
    spec = load_spec(f)

    def values(point, t):
        v = KNOWN[(t.selector.name, t.regime, t.ipc)][t.seed]
        return v, v  # minival = test here

    assert fill(spec, values) == 30
    return spec


def test_accuracy_means_and_confidence_intervals_equal_hand_computations(known):
    acc = report.tables(known)["accuracy"].set_index(["regime", "ipc", "selector"])
    assert len(acc) == 10
    r = acc.loc[("hl", 1, "random")]
    assert r["top1_mean"] == pytest.approx(60.0) and r["top1_std"] == pytest.approx(10.0) and r["seeds"] == 3
    assert r["top1_ci95"] == pytest.approx(T2 * 10.0 / math.sqrt(3))
    h = acc.loc[("hl", 1, "herding")]
    assert h["top1_mean"] == pytest.approx(69.0) and h["top1_ci95"] == pytest.approx(ci([62, 65, 80], T2))
    assert acc.loc[("sl", 1, "sre2l"), "top1_ci95"] == pytest.approx(0.0)
    assert list(acc.loc[("hl", 1)]["kind"]) == ["random", "coreset", "distiller", "distiller", "full"]


def test_gap_to_random_is_paired_by_seed(known):
    gap = report.tables(known)["gap_to_random"].set_index(["regime", "ipc", "selector"])
    g = gap.loc[("hl", 1, "herding")]
    assert g["gap_mean"] == pytest.approx(9.0) and g["pairs"] == 3 and g["wins"] == 3
    assert g["gap_std"] == pytest.approx(math.sqrt(13.0))  # differences 12, 5, 10
    assert g["gap_ci95"] == pytest.approx(T2 * math.sqrt(13.0) / math.sqrt(3))
    # paired, not the difference of two independent means: the CI is far narrower than either mean's
    unpaired = math.sqrt(ci([50, 60, 70], T2) ** 2 + ci([62, 65, 80], T2) ** 2)
    assert g["gap_ci95"] < unpaired / 2
    s = gap.loc[("sl", 1, "sre2l")]
    assert s["gap_mean"] == pytest.approx(-15.0) and s["gap_ci95"] == pytest.approx(ci([-14, -15, -16], T2))
    assert s["wins"] == 0
    assert gap.loc[("hl", 1, "full"), "gap_mean"] == pytest.approx(32.0)
    assert "random" not in gap.index.get_level_values("selector")


def test_a_seed_without_both_rows_is_left_out_of_the_pairs(known):
    store = known.store()
    random_s2 = next(t for p, t in points(known) if (t.selector.name, t.regime, t.seed) == ("random", "hl", 2))
    Path(store.row_path(random_s2.trial_id)).unlink()  # random hl seed 2 is gone
    gap = report.tables(known)["gap_to_random"].set_index(["regime", "ipc", "selector"])
    g = gap.loc[("hl", 1, "herding")]
    assert g["pairs"] == 2 and g["gap_mean"] == pytest.approx(8.5)  # (12 + 5) / 2
    assert g["gap_ci95"] == pytest.approx(ci([12, 5], T1))


def test_spread_over_all_real_image_selectors_and_distillers(known):
    sp = report.tables(known)["spread"].set_index("regime")
    hl = sp.loc["hl"]
    # means: random 60, herding 69, rded 40, sre2l 24 (full 92 is a reference, in no spread)
    assert hl["spread"] == pytest.approx(69 - 24) and (hl["best"], hl["worst"]) == ("herding", "sre2l")
    assert hl["spread_real"] == pytest.approx(9.0) and (hl["best_real"], hl["worst_real"]) == ("herding", "random")
    assert hl["spread_distillers"] == pytest.approx(16.0) and hl["distillers"] == 2 and hl["selectors"] == 4
    sl = sp.loc["sl"]
    assert sl["spread"] == pytest.approx(20.0) and sl["spread_real"] == pytest.approx(5.0)
    assert sl["spread_distillers"] == pytest.approx(12.0)


def test_dd_ranking_label_robust_score_from_the_four_rows_that_feed_it(known):
    lrs = report.tables(known)["dd_ranking"].set_index(["selector", "eval_regime"])
    assert set(lrs.index) == {("herding", "sl"), ("rded", "sl"), ("sre2l", "sl")}  # no sl_kd rows in this sweep
    h = lrs.loc[("herding", "sl")]
    hlr, ior = 0.92 - 0.69, 0.80 - 0.75
    a = 0.5 * ior - 0.5 * hlr
    assert h["hlr"] == pytest.approx(hlr) and h["ior"] == pytest.approx(ior)
    assert h["lrs"] == pytest.approx((math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1)))
    assert h["rows"] == "full/hl, herding/hl, herding/sl, random/sl"


def test_augmentation_robust_score_needs_a_second_sweep_without_views(known, tmp_path):
    assert report.tables(known)["augmentation_robust"].empty
    f = write_sweep(
        tmp_path,
        "noaug",
        "  selector: [random, herding]\n  regime: [hl]\n  ipc: [1]\n  seed: [0, 1, 2]",
        "budget: {full_epochs: 2}\nteacher: {arch: convnet, depth: 2, width: 16, norm: batch, epochs: 2}\n",
    )
    f.write_text(f.read_text().replace("train: {batch_size: 32}", "train: {batch_size: 32, augment: none}"))
    other = load_spec(f)
    fill(other, lambda p, t: ({"random": 0.40, "herding": 0.55}[t.selector.name],) * 2)
    import pandas as pd

    both = pd.concat([report.frame(known), report.frame(other)])
    ars = tables.augmentation_robust(both).set_index(["regime", "selector"])
    assert list(ars.index) == [("hl", "herding")]
    beta = 0.5 * (0.69 - 0.60) + 0.5 * (0.55 - 0.40)
    assert ars.loc[("hl", "herding"), "beta"] == pytest.approx(beta)
    assert ars.loc[("hl", "herding"), "ars"] == pytest.approx((math.exp(beta) - math.exp(-1)) / (math.e - math.exp(-1)))
    assert ars.loc[("hl", "herding"), "augment"] == "dsa"  # the hl recipe's default views (issue #14)


def test_a_trial_shared_by_two_teachers_counts_under_each(tmp_path):
    f = write_sweep(
        tmp_path,
        "teachers",
        "  selector: [random, herding]\n  regime: [hl, sl]\n  ipc: [2]\n  seed: [0, 1]\n  teacher: [strong, weak]",
        "budget: {epochs: 3}\nteachers:\n  strong: {arch: convnet, depth: 2, width: 16, epochs: 5}\n"
        "  weak: {arch: convnet, depth: 2, width: 16, epochs: 1}\n",
    )
    spec = load_spec(f)
    base = {("random", "hl"): 0.5, ("herding", "hl"): 0.6, ("random", "sl"): 0.7, ("herding", "sl"): 0.72}

    def values(point, t):
        v = base[(t.selector.name, t.regime)] + 0.01 * t.seed
        if t.teacher is not None and point["teacher"] == "weak":
            v -= 0.1  # every trial that reads the weak teacher loses 10 points
        return v, v

    assert fill(spec, values) == 2 * 7  # random-hl is one trial for both teachers
    frame = report.frame(spec)
    assert len(frame) == 16 and frame["trial_id"].nunique() == 14
    gap = report.tables(spec)["gap_to_random"].set_index(["teacher", "regime", "selector"])
    assert gap.loc[("strong", "hl", "herding"), "gap_mean"] == pytest.approx(10.0)
    assert gap.loc[("weak", "hl", "herding"), "gap_mean"] == pytest.approx(0.0)  # herding reads the weak features
    assert gap.loc[("weak", "sl", "herding"), "gap_mean"] == pytest.approx(2.0)
    acc = report.tables(spec)["accuracy"].set_index(["teacher", "regime", "selector"])
    assert acc.loc[("weak", "hl", "random"), "top1_mean"] == acc.loc[("strong", "hl", "random"), "top1_mean"]


BUDGETS = {  # (selector, budget, ipc) -> test top-1 per seed; minival below
    ("random", 2, 1): [0.50, 0.52],
    ("herding", 2, 1): [0.58, 0.60],
    ("random", 2, 5): [0.78, 0.80],  # best on test at IPC 5 ...
    ("herding", 2, 5): [0.70, 0.72],  # ... but herding is best on minival: the Pareto point is herding
    ("random", 4, 1): [0.55, 0.57],
    ("herding", 4, 1): [0.60, 0.62],
    ("random", 4, 5): [0.85, 0.87],
    ("herding", 4, 5): [0.80, 0.82],
}
FULL = {2: [0.715, 0.725], 4: [0.95, 0.97]}


def test_pareto_chooses_on_minival_and_marks_where_more_data_stops_paying(tmp_path):
    f = write_sweep(
        tmp_path,
        "budgets",
        "  selector: [random, herding, full]\n  regime: [hl]\n  ipc: [1, 5]\n  seed: [0, 1]\n"
        "  budget: {full_epochs: [2, 4]}",
        "teacher: {arch: convnet, depth: 2, width: 16, epochs: 2}\n",
    )
    spec = load_spec(f)

    def values(point, t):
        b = int(t.budget.value)
        if t.selector.name == "full":
            return FULL[b][t.seed], 0.9
        test = BUDGETS[(t.selector.name, b, t.ipc)][t.seed]
        minival = 0.9 if t.selector.name == "herding" else 0.1
        return test, minival

    assert fill(spec, values) == 2 * 2 * (2 * 2 + 2)  # seeds x budgets x (2 selectors x 2 IPCs + full at each IPC)
    par = report.tables(spec)["pareto"]
    b2 = par[par["budget"] == 2].reset_index(drop=True)
    assert list(b2["fraction"]) == pytest.approx([10 / N, 50 / N, 1.0])
    assert list(b2["selector"]) == ["herding", "herding", "full"]
    assert list(b2["top1_mean"]) == pytest.approx([59.0, 71.0, 72.0])
    # IPC 1 -> larger fractions gain 13 points; IPC 5 -> full gains 1 point = tol: more data stops paying at IPC 5
    assert list(b2["gain_beyond"][:2]) == pytest.approx([13.0, 1.0])
    assert list(b2["stops_paying"]) == [False, True, False]
    b4 = par[par["budget"] == 4].reset_index(drop=True)
    assert list(b4["top1_mean"]) == pytest.approx([61.0, 81.0, 96.0])
    assert list(b4["stops_paying"]) == [False, False, True]
    assert b4.loc[2, "seeds"] == 2  # full's rows at IPC 1 and 5 train identically: averaged per seed, not pooled
    assert b4.loc[2, "top1_ci95"] == pytest.approx(ci([95, 97], T1))
    acc = report.tables(spec)["accuracy"]
    assert sorted(set(acc["budget"])) == [2.0, 4.0]


def test_el2n_best_is_chosen_on_minival_per_budget(tmp_path):
    f = write_sweep(
        tmp_path,
        "windows",
        "  selector: [{name: el2n_window, offset: 0.2}, {name: el2n_window, offset: 0.8}]\n  regime: [hl]\n"
        "  ipc: [1]\n  seed: [0, 1]\n  budget: {full_epochs: [2, 4]}",
        "selectors: {el2n_window: {runs: 1, epoch: 2}}\n",
    )
    spec = load_spec(f)

    def values(point, t):
        easy = t.selector.opts["offset"] == 0.8
        if t.budget.value == 2:
            return (0.3, 0.9) if easy else (0.9, 0.3)  # minival says easy, test says hard: easy is chosen
        return (0.5, 0.2) if easy else (0.4, 0.8)

    fill(spec, values)
    best = report.tables(spec)["el2n_best"].set_index("budget")
    assert best.loc[2.0, "offset"] == 0.8 and best.loc[2.0, "top1"] == pytest.approx(0.3)
    assert best.loc[4.0, "offset"] == 0.2 and best.loc[4.0, "top1"] == pytest.approx(0.4)


def test_report_writes_markdown_csv_and_figures_that_are_not_empty(known, capsys):
    import matplotlib.image as mpimg

    sweep = Path(known.source_path)
    assert cli.main(["report", str(sweep)]) == 0
    out = capsys.readouterr().out
    folder = Path(known.storage) / "known" / "report"
    assert f"{folder}/report.md" in out
    md = (folder / "report.md").read_text()
    for heading in ("## Accuracy vs IPC", "## Gap to random", "## Spread over selectors", "## DD-Ranking scores"):
        assert heading in md
    assert "| herding | +9.0 ± 9.0 |" in md  # gap paired by seed: 9 ± t(2) * sqrt(13) / sqrt(3) = 8.96
    assert "full/hl, herding/hl, herding/sl, random/sl" in md
    for name in ("accuracy", "gap_to_random", "spread", "dd_ranking"):
        assert (folder / f"{name}.csv").read_text().count("\n") > 1
    for png in ("accuracy_vs_ipc.png", "gap_to_random.png", "spread.png", "pareto.png"):
        data = (folder / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, png
        assert mpimg.imread(folder / png).std() > 0.05, png  # not a blank canvas
        assert f"({png})" in md


def test_the_budget_figure_shares_the_y_axis_across_regime_panels(tmp_path):
    f = write_sweep(
        tmp_path,
        "fig",
        "  selector: [random, full]\n  regime: [hl, sl]\n  ipc: [1, 5]\n  seed: [0, 1]\n"
        "  budget: {full_epochs: [2, 4]}",
        "teacher: {arch: convnet, depth: 2, width: 16, epochs: 2}\n",
    )
    spec = load_spec(f)
    fill(spec, lambda p, t: (0.3 + 0.1 * t.budget.value + 0.01 * t.ipc + (0.2 if t.regime == "sl" else 0), 0.5))
    from orchestrator import figures

    acc = report.tables(spec)["accuracy"]
    fig = figures.accuracy_vs_budget(acc)
    axes = [a for a in fig.axes if a.get_xlabel()]
    assert len(axes) == 2 and axes[0].get_shared_y_axes().joined(axes[0], axes[1])
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["2", "4"]
    labels = axes[0].get_legend_handles_labels()[1]
    assert "IPC 1" in labels and "full data, same compute" in labels  # full_epochs: one run at every IPC
    figures.close(fig)


def test_cad_best_chooses_j_and_w_on_minival(tmp_path):
    f = write_sweep(
        tmp_path,
        "cad",
        "  selector: [cad_prune, {name: cad_prune, J: 2, W: 3}]\n  regime: [hl]\n  ipc: [1, 2]\n  seed: [0, 1]",
        "budget: {full_epochs: 6}\n",
    )
    spec = load_spec(f)

    def values(point, t):
        auto = t.selector.opts["J"] == "auto"
        if t.ipc == 1:
            return (0.8, 0.2) if auto else (0.4, 0.6)  # test prefers auto, minival (J=2, W=3): J=2 wins
        return (0.5, 0.7) if auto else (0.6, 0.5)

    fill(spec, values)
    t = report.tables(spec)
    best = t["cad_best"].set_index("ipc")
    assert (best.loc[1, "J"], best.loc[1, "W"], best.loc[1, "top1"]) == (2, 3, pytest.approx(0.4))
    assert (best.loc[2, "J"], best.loc[2, "W"], best.loc[2, "top1"]) == ("auto", 2, pytest.approx(0.5))
    assert "el2n_best" not in t  # no el2n_window rows: no table
