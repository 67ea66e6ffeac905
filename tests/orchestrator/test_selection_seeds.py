"""`ddsweep report` says which rows' seed spread includes selection noise (docs/methods.md §4; issue #14, item 4)."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd

from orchestrator import cli
from orchestrator.grid import expand
from orchestrator.spec import load_spec
from workers.catalogue import seed_use
from workers.config import Named

SWEEP = """
name: seeds
dataset: {{name: digits}}
teacher: {{arch: convnet, depth: 2, width: 8, epochs: 1}}
student: {{arch: convnet, depth: 2, width: 8}}
budget: {{epochs: 2}}
grid:
  selector: [random, herding, el2n, {{name: el2n, score_seed: trial}}, ccs]
  regime: [hl]
  ipc: [1]
  seed: [0, 1]
storage: {storage}
"""


def test_seed_use_follows_the_options():
    assert seed_use(Named.make("random")) == "draw" and seed_use(Named.make("herding")) == "none"
    assert seed_use(Named.make("el2n", {"score_seed": "fixed"})) == "ties"
    assert seed_use(Named.make("el2n", {"score_seed": "trial"})) == "draw"
    assert seed_use(Named.make("el2n", {})) == "ties"  # a row written before the option: fixed
    assert seed_use(Named.make("kcenter", {"first": "medoid"})) == "ties"
    assert seed_use(Named.make("kcenter", {"first": "random"})) == "draw"
    assert seed_use(Named.make("sre2l", {})) == "draw"


def test_report_names_the_rows_whose_seed_draws_the_subset(tmp_path, capsys):
    from orchestrator.trainable import build_row

    sweep = tmp_path / "seeds.yaml"
    sweep.write_text(SWEEP.format(storage=tmp_path / "store"))
    spec = load_spec(sweep)
    for t in expand(spec):
        metrics = {"top1": 0.5 + 0.1 * t.seed, "minival_top1": 0.5, "history": []}
        spec.store().write_row(build_row("seeds", t, metrics, 1, datetime.now(timezone.utc)))
    assert cli.main(["report", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "the spread includes selection noise: ccs, el2n(score_seed=trial), random\n" in out
    assert "training noise only: el2n\n" in out and "one subset for every seed: herding" in out
    csv = pd.read_csv(tmp_path / "store" / "seeds" / "report" / "accuracy.csv")
    assert dict(zip(csv["selector"], csv["selection_seed"])) == {
        "random": "draw",
        "herding": "none",
        "el2n": "ties",
        "el2n(score_seed=trial)": "draw",
        "ccs": "draw",
    }
