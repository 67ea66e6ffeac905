"""Print the digits scalability table: mean test top-1 (%) per (selector, regime, IPC) and the spread.

    python benchmarks/scalability_table.py [STORAGE] [SWEEP.yaml]

Reads every row of the sweep's folder (re-running a changed spec adds rows under new ids: use a
fresh storage for a clean table); spread = max - min over selectors (excluding `full`,
the compute-matched full-data reference) of the per-selector mean over seeds.
"""

import sys

import pandas as pd

from orchestrator import results
from orchestrator.spec import load_spec


def main() -> None:
    storage = sys.argv[1] if len(sys.argv) > 1 else "./ddsweep-runs"
    spec = load_spec(sys.argv[2] if len(sys.argv) > 2 else "sweeps/digits_scalability.yaml", storage_override=storage)
    df = results.load(spec.storage, spec.name)
    df["top1"] *= 100
    pd.set_option("display.width", 250, "display.max_columns", 40)
    for regime in spec.regimes:
        t = df[df["regime"] == regime].pivot_table(index="selector", columns="ipc", values="top1", aggfunc="mean")
        print(f"\n## {regime}: mean test top-1 (%) over {df['seed'].nunique()} seeds\n")
        print(t.round(1).to_string())
    sel = df[df["selector"] != "full"].groupby(["regime", "ipc", "selector"])["top1"].mean()
    spread = sel.groupby(["regime", "ipc"]).agg(lambda s: s.max() - s.min()).unstack("ipc")
    print("\n## spread (max - min over selectors, full excluded), points\n")
    print(spread.round(1))
    rnd = df[df["selector"] == "random"].groupby(["regime", "ipc"])["top1"].mean().unstack("ipc")
    print("\n## random by regime\n")
    print(rnd.round(1))


if __name__ == "__main__":
    main()
