"""Print the digits DD-under-hard-labels table: mean test top-1 (%) per method and IPC, and EL2N-Best.

    python benchmarks/dd_table.py [STORAGE] [SWEEP.yaml]

EL2N-Best is the el2n_window offset with the best mean **minival** top-1 per IPC
(orchestrator.results.best_window); its test accuracy is shown, the choice never reads test.
"""

import json
import sys

import pandas as pd

from orchestrator import results
from orchestrator.spec import load_spec


def main() -> None:
    storage = sys.argv[1] if len(sys.argv) > 1 else "./ddsweep-runs"
    spec = load_spec(sys.argv[2] if len(sys.argv) > 2 else "sweeps/digits_dd_hl.yaml", storage_override=storage)
    df = results.load(spec.storage, spec.name)
    opts = df["selector_options"].map(json.loads)
    label = df["selector"].copy()
    label[df["selector"] == "el2n_window"] = [f"el2n_window({o['offset']})" for o in opts[df["selector"] == "el2n_window"]]
    label[df["selector"] == "ca2d"] = [f"ca2d({o['pool']})" for o in opts[df["selector"] == "ca2d"]]
    t = df.assign(method=label, top1=df["top1"] * 100).pivot_table(index="method", columns="ipc", values="top1",
                                                                   aggfunc="mean")
    best = results.best_window(df).set_index("ipc")
    t.loc["EL2N-Best (minival)"] = best["top1"] * 100
    pd.set_option("display.width", 200)
    print(f"## {spec.name}: mean test top-1 (%) over {df['seed'].nunique()} seeds, regime hl\n")
    print(t.round(1).to_string())
    print("\nEL2N-Best offsets chosen on minival:", best["offset"].to_dict())
    std = df.assign(method=label, top1=df["top1"] * 100).pivot_table(index="method", columns="ipc", values="top1",
                                                                     aggfunc="std")
    print("\nstd over seeds (points):\n")
    print(std.round(1).to_string())


if __name__ == "__main__":
    main()
