"""Print the digits scalability table: mean test top-1 (%) per (selector, regime, IPC) and the spread.

    python benchmarks/scalability_table.py [STORAGE] [SWEEP.yaml]

Reads the rows of the trials the spec expands to now (rows of older ids in the same folder are
ignored); spread = max - min of the per-selector mean over seeds, once over the real-image selectors
(coresets and random; `full`, the compute-matched full-data reference, excluded) and once over every
selector including the distillers (SRe2L, CDA, RDED, CA2D). Rows made under an older trial-id rule
are re-keyed by `ddsweep migrate SWEEP.yaml`.
"""

import sys

import pandas as pd

from orchestrator.report import current_rows
from orchestrator.spec import load_spec
from workers.catalogue import SELECTORS


def main() -> None:
    args = sys.argv[1:]
    storage = args[0] if args else "./ddsweep-runs"
    spec = load_spec(args[1] if len(args) > 1 else "sweeps/digits_scalability.yaml", storage_override=storage)
    df = current_rows(spec)
    df["top1"] *= 100
    pd.set_option("display.width", 250, "display.max_columns", 40)
    for regime in spec.regimes:
        t = df[df["regime"] == regime].pivot_table(index="selector", columns="ipc", values="top1", aggfunc="mean")
        print(f"\n## {regime}: mean test top-1 (%) over {df['seed'].nunique()} seeds\n")
        print(t.round(1).to_string())
    distillers = {n for n in df["selector"].unique() if SELECTORS[n].distiller}
    for title, keep in (
        ("real-image selectors (coresets + random)", ~df["selector"].isin(distillers | {"full"})),
        ("all selectors incl. distillers", df["selector"] != "full"),
    ):
        sel = df[keep].groupby(["regime", "ipc", "selector"])["top1"].mean()
        spread = sel.groupby(["regime", "ipc"]).agg(lambda s: s.max() - s.min()).unstack("ipc")
        print(f"\n## spread over {title}: max - min of the selector means, points\n")
        print(spread.round(1))
    rnd = df[df["selector"] == "random"].groupby(["regime", "ipc"])["top1"].mean().unstack("ipc")
    print("\n## random by regime\n")
    print(rnd.round(1))


if __name__ == "__main__":
    main()
