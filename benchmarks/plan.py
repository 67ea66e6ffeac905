"""How fast the planner is on large grids: `plan` and `status` of ~100k trials, loading 10k rows.

    python benchmarks/plan.py [--trials 100000] [--rows 10000]

Targets (issue #10): expand and plan 100k trials in under 2 s, `status` of 100k in under 3 s,
loading 10k result rows in under 1 s. Rows are read through a cache (`results/.rows.cache`), so a
row is parsed once, the first time any command meets it; that first read is timed separately.
Uses only the CLI and `orchestrator.results.load`, so the
same script times an older checkout (`PYTHONPATH=/path/to/old/checkout python benchmarks/plan.py`).
The grid is digits with random, herding and el2n_window at many offsets x 3 regimes x IPCs x seeds;
the store holds `--rows` finished rows of it (written straight with pyarrow, no training).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import resource
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator import cli, results
from orchestrator.grid import expand
from orchestrator.spec import load_spec


def sweep_file(folder: Path, trials: int) -> Path:
    """A digits grid of about `trials` trials: (2 + offsets) selectors x 3 regimes x 20 IPCs x seeds."""
    offsets = 23
    per_seed = (2 + offsets) * 3 * 20
    seeds = max(1, math.ceil(trials / per_seed))
    selectors = ", ".join(["random", "herding"] + [f"{{name: el2n_window, offset: {i / 100}}}" for i in range(offsets)])
    path = folder / "big.yaml"
    path.write_text(f"""
name: big
storage: {folder / "store"}
dataset: {{name: digits}}
teacher: {{arch: convnet, depth: 2, width: 16, epochs: 2, norm: batch}}
student: {{arch: convnet, depth: 2, width: 16}}
budget: {{full_epochs: 2}}
grid:
  selector: [{selectors}]
  regime: [hl, sl, sl_kd]
  ipc: [{", ".join(str(i) for i in range(1, 21))}]
  seed: [{", ".join(str(s) for s in range(seeds))}]
selectors: {{el2n_window: {{runs: 2, epoch: 3}}}}
""")
    return path


def write_rows(sweep: Path, n: int) -> None:
    spec = load_spec(sweep)
    folder = Path(spec.storage) / spec.name / "results"
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)
    for t in expand(spec)[:n]:
        row = {name: None for name in results.SCHEMA.names}
        row.update(
            sweep=spec.name,
            trial_id=t.trial_id,
            trial_name=t.trial_id,
            selector=t.selector.name,
            selector_options=json.dumps(t.selector.opts),
            regime=t.regime,
            ipc=t.ipc,
            seed=t.seed,
            top1=0.5,
            minival_top1=0.5,
            finished_at=now,
            started_at=now,
        )
        pq.write_table(pa.Table.from_pylist([row], schema=results.SCHEMA), folder / f"{t.trial_id}.parquet")


def timed(label: str, fn) -> float:
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        fn()
    dt = time.perf_counter() - t0
    print(f"  {label:<44} {dt:8.2f} s")
    return dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=100_000)
    p.add_argument("--rows", type=int, default=10_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweep = sweep_file(Path(tmp), args.trials)
        n = len(expand(load_spec(sweep)))
        print(f"grid: {n} trials; store: {args.rows} rows")
        write_rows(sweep, args.rows)
        load_spec(sweep)  # the digits data set loads once per process (scikit-learn)
        timed(f"first read of {args.rows} new rows", lambda: results.load(str(Path(tmp) / "store"), "big"))
        timed(f"expand + plan ({n} trials)", lambda: cli.main(["plan", str(sweep)]))
        timed(f"status ({n} trials, first call)", lambda: cli.main(["status", str(sweep)]))
        timed(f"status ({n} trials, again)", lambda: cli.main(["status", str(sweep)]))
        timed(f"load {args.rows} rows", lambda: results.load(str(Path(tmp) / "store"), "big"))
        print(f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
