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


def cad_rows(spec):
    """Rows of cad_prune variants: (ipc, J, W, shift, seed, minival, test)."""
    return pd.DataFrame(
        [
            {
                "selector": "cad_prune",
                "selector_options": json.dumps({"J": j, "W": w, "shift": shift, "score_seed": "fixed"}),
                "dataset": "digits",
                "ipc": ipc,
                "regime": "hl",
                "seed": seed,
                "minival_top1": minival,
                "top1": test,
            }
            for ipc, j, w, shift, seed, minival, test in spec
        ]
    )


def test_cad_best_chooses_j_w_and_shift_on_minival_per_ipc():
    """CAD-Best (docs/methods.md §4.11): like EL2N-Best, the variant with the best mean minival top-1 per IPC."""
    from orchestrator.report import cad_best

    df = cad_rows(
        [
            (1, "auto", 2, False, 0, 0.40, 0.90),  # best on test, never chosen for it
            (1, "auto", 2, False, 1, 0.40, 0.90),
            (1, 2, 2, False, 0, 0.60, 0.50),
            (1, 2, 2, False, 1, 0.50, 0.50),  # mean minival 0.55: the choice at IPC 1
            (1, "auto", 2, True, 0, 0.50, 0.70),
            (1, "auto", 2, True, 1, 0.50, 0.70),
            (10, "auto", 2, False, 0, 0.70, 0.60),
            (10, 2, 2, False, 0, 0.70, 0.80),  # tie with auto on minival: numbers before "auto"
            (10, "auto", 2, True, 0, 0.80, 0.65),  # the choice at IPC 10
            (10, 2, 4, False, 0, 0.10, 0.99),
        ]
    )
    best = cad_best(df).set_index("ipc")
    assert (best.loc[1, "J"], best.loc[1, "W"], best.loc[1, "shift"]) == (2, 2, False)
    assert best.loc[1, "minival_top1"] == 0.55 and best.loc[1, "top1"] == 0.50 and best.loc[1, "candidates"] == 3
    assert (best.loc[10, "J"], best.loc[10, "shift"], best.loc[10, "top1"]) == ("auto", True, 0.65)
    assert best.loc[10, "candidates"] == 4 and best.loc[10, "seeds"] == 1
    tie = cad_best(df[~df["selector_options"].str.contains('"shift": true')]).set_index("ipc")
    assert tie.loc[10, "J"] == 2  # the tie on minival goes to the integer J
    assert cad_best(rows([])).empty  # no cad_prune rows


def test_best_window_is_best_variant_of_the_offset():
    from orchestrator.report import best_variant

    df = rows([(5, "hl", o, s, 0.5 + 0.1 * (o == 0.3), 0.5) for o in (0.0, 0.3, 0.6) for s in (0, 1)])
    pd.testing.assert_frame_equal(best_window(df), best_variant(df, "el2n_window", ("offset",)))
