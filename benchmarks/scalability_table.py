"""Print the digits scalability table: mean test top-1 (%) per (selector, regime, IPC), the spread and random.

    python benchmarks/scalability_table.py [STORAGE] [SWEEP.yaml]

The numbers are `ddsweep report`'s (orchestrator.report.tables, from the rows of the trials the spec
expands to now; rows of older ids in the same folder are ignored): the spread is max - min of the
per-selector means over seeds, once over the real-image selectors (coresets and random; `full`, the
compute-matched full-data reference, excluded) and once over every selector including the distillers
(SRe2L, CDA, RDED, CA2D). Rows made under an older trial-id rule are re-keyed by `ddsweep migrate SWEEP.yaml`.
"""

import sys

import pandas as pd

from orchestrator.report import tables
from orchestrator.spec import load_spec


def main() -> None:
    args = sys.argv[1:]
    storage = args[0] if args else "./ddsweep-runs"
    spec = load_spec(args[1] if len(args) > 1 else "sweeps/digits_scalability.yaml", storage_override=storage)
    t = tables(spec)
    acc, spread = t["accuracy"], t["spread"]
    pd.set_option("display.width", 250, "display.max_columns", 40)
    for regime in spec.regimes:
        part = acc[acc["regime"] == regime]
        seeds = int(part["seeds"].max()) if len(part) else 0
        print(f"\n## {regime}: mean test top-1 (%) over {seeds} seeds\n")
        print(part.pivot_table(index="selector", columns="ipc", values="top1_mean").round(1).to_string())
    for title, col in (
        ("real-image selectors (coresets + random)", "spread_real"),
        ("all selectors incl. distillers", "spread"),
    ):
        print(f"\n## spread over {title}: max - min of the selector means, points\n")
        print(spread.pivot_table(index="regime", columns="ipc", values=col).round(1))
    print("\n## random by regime\n")
    rnd = acc[acc["selector"] == "random"]
    print(rnd.pivot_table(index="regime", columns="ipc", values="top1_mean").round(1))


if __name__ == "__main__":
    main()
