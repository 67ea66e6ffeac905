"""best_window chooses EL2N-Best offsets on minival, never on test."""

import json

import pandas as pd

from orchestrator.report import best_window


def rows(spec):
    out = []
    for ipc, regime, offset, seed, minival, test in spec:
        out.append(
            {
                "selector": "el2n_window",
                "selector_options": json.dumps({"offset": offset, "runs": 2}),
                "dataset": "digits",
                "ipc": ipc,
                "regime": regime,
                "seed": seed,
                "minival_top1": minival,
                "top1": test,
            }
        )
    out.append(
        {
            "selector": "random",
            "selector_options": "{}",
            "dataset": "digits",
            "ipc": 1,
            "regime": "hl",
            "seed": 0,
            "minival_top1": 0.99,
            "top1": 0.99,
        }
    )
    return pd.DataFrame(out)


def test_the_choice_follows_minival_even_when_test_disagrees():
    df = rows(
        [
            (1, "hl", 0.0, 0, 0.30, 0.90),
            (1, "hl", 0.0, 1, 0.30, 0.90),  # best on test, worse on minival
            (1, "hl", 0.9, 0, 0.60, 0.50),
            (1, "hl", 0.9, 1, 0.50, 0.50),  # best on minival (mean 0.55)
            (1, "hl", 0.5, 0, 0.50, 0.60),
            (1, "hl", 0.5, 1, 0.50, 0.60),
            (10, "hl", 0.0, 0, 0.80, 0.70),
            (10, "hl", 0.9, 0, 0.70, 0.95),
            (10, "sl", 0.0, 0, 0.70, 0.70),
            (10, "sl", 0.9, 0, 0.70, 0.80),  # tie on minival -> smaller offset
        ]
    )
    best = best_window(df).set_index(["ipc", "regime"])
    assert best.loc[(1, "hl"), "offset"] == 0.9 and best.loc[(1, "hl"), "top1"] == 0.50
    assert best.loc[(1, "hl"), "minival_top1"] == 0.55 and best.loc[(1, "hl"), "seeds"] == 2
    assert best.loc[(1, "hl"), "candidates"] == 3
    assert best.loc[(10, "hl"), "offset"] == 0.0
    assert best.loc[(10, "sl"), "offset"] == 0.0
    assert len(best) == 3


def test_changing_test_accuracies_never_changes_the_choice():
    spec = [(5, "hl", o, s, 0.5 + 0.1 * (o == 0.3), 0.5) for o in (0.0, 0.3, 0.6) for s in (0, 1)]
    a = best_window(rows(spec))
    spec2 = [(i, r, o, s, m, 1.0 - o) for i, r, o, s, m, _ in spec]
    b = best_window(rows(spec2))
    assert list(a["offset"]) == list(b["offset"]) == [0.3]


def test_no_window_rows_gives_an_empty_table():
    df = rows([])
    assert best_window(df).empty
