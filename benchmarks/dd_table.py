"""Print the digits DD-under-hard-labels table: mean test top-1 (%) per method and IPC, EL2N-Best and CAD-Best.

    python benchmarks/dd_table.py [STORAGE] [SWEEP.yaml]   (default sweeps/digits_dd_hl.yaml)

EL2N-Best is the el2n_window offset with the best mean **minival** top-1 per IPC
(orchestrator.report.best_window), CAD-Best the cad_prune (J, W, shift) chosen the same way
(orchestrator.report.cad_best); their test accuracy is shown, the choice never reads test.
"""

import sys

import pandas as pd

from orchestrator.report import best_window, cad_best, current_rows, selector_labels
from orchestrator.spec import load_spec


def main() -> None:
    storage = sys.argv[1] if len(sys.argv) > 1 else "./ddsweep-runs"
    spec = load_spec(sys.argv[2] if len(sys.argv) > 2 else "sweeps/digits_dd_hl.yaml", storage_override=storage)
    df = current_rows(spec)
    label = selector_labels(df)  # e.g. cad_prune(J=2,shift=False): the options that vary within the sweep
    t = df.assign(method=label, top1=df["top1"] * 100).pivot_table(
        index="method", columns="ipc", values="top1", aggfunc="mean"
    )
    pd.set_option("display.width", 200)
    best = cad = None
    if (df["selector"] == "el2n_window").any():
        best = best_window(df).set_index("ipc")
        t.loc["EL2N-Best (minival)"] = best["top1"] * 100
    if df.loc[df["selector"] == "cad_prune", "selector_options"].nunique() > 1:
        cad = cad_best(df).set_index("ipc")
        t.loc["CAD-Best (minival)"] = cad["top1"] * 100
    print(f"## {spec.name}: mean test top-1 (%) over {df['seed'].nunique()} seeds, regime hl\n")
    print(t.round(1).to_string())
    if best is not None:
        print("\nEL2N-Best offsets chosen on minival:", best["offset"].to_dict())
    if cad is not None:
        chosen = {ipc: f"J={r.J},W={r.W},shift={r.shift}" for ipc, r in cad.iterrows()}
        print("CAD-Best (J, W, shift) chosen on minival:", chosen)
    mv = df.assign(method=label, m=df["minival_top1"] * 100).pivot_table(
        index="method", columns="ipc", values="m", aggfunc="mean"
    )
    print("\nminival top-1 (%), the split to choose variants on:\n")
    print(mv.round(1).to_string())
    std = df.assign(method=label, top1=df["top1"] * 100).pivot_table(
        index="method", columns="ipc", values="top1", aggfunc="std"
    )
    print("\nstd over seeds (points):\n")
    print(std.round(1).to_string())


if __name__ == "__main__":
    main()
