"""Orchestration overhead of a sweep: trial-phase wall time over the sum of trial times / concurrency.

    python benchmarks/overhead.py [SWEEP.yaml] [--storage DIR]   (default sweeps/smoke.yaml, a fresh folder)

Runs the sweep with `ddsweep run` (real embedded Ray), then from its rows: the trial phase lasts from
the first trial's start to the last one's end; with perfect packing it would last sum(total_seconds)
/ concurrency (CPUs / cpus_per_trial). Shared stages run beside the trials, so the CPU-seconds of the
stage builds inside that window (from their manifests) are added to the work before dividing. The ratio
is what scheduling, actor reuse, Tune and the row writes add (1.00 = none; target <= 1.03). Also prints
how long the shared stages took before the first trial started.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrator import results
from orchestrator.spec import load_spec
from workers.catalogue import STAGES


def stage_cpu_seconds(artifacts: Path, start: float, end: float, cpus_per_trial: float) -> tuple[float, int]:
    """CPU-seconds of the stage builds that fall inside [start, end], and how many stages overlap it."""
    total, n = 0.0, 0
    for m in artifacts.glob("*/*/manifest.json"):
        man = json.loads(m.read_text())
        b1 = man["built_at"]
        b0 = b1 - man["build_seconds"]
        inside = max(0.0, min(b1, end) - max(b0, start))
        if inside > 0:
            own = STAGES[man["kind"]].cpus
            total += inside * (cpus_per_trial if own is None else own)
            n += 1
    return total, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", nargs="?", default="sweeps/smoke.yaml")
    p.add_argument("--storage", default=None)
    args = p.parse_args()
    storage = args.storage or tempfile.mkdtemp(prefix="ddsweep-overhead-")
    spec = load_spec(args.sweep, storage_override=storage)
    t0 = time.time()
    ddsweep = Path(sys.executable).parent / "ddsweep"
    subprocess.run([str(ddsweep), "run", args.sweep, "--storage", storage], check=True, env=dict(os.environ))
    wall = time.time() - t0
    df = results.load(spec.storage, spec.name)
    start, end = df["started_at"].min().timestamp(), df["finished_at"].max().timestamp()
    cpus = os.cpu_count() or 1
    concurrency = cpus / spec.resources.cpus_per_trial
    stage_work, overlapping = stage_cpu_seconds(Path(storage) / "artifacts", start, end, spec.resources.cpus_per_trial)
    ideal = df["total_seconds"].sum() / concurrency + stage_work / cpus
    print(f"{len(df)} trials, concurrency {concurrency:g}; whole run {wall:.1f} s")
    print(f"  stages before the first trial started  {start - t0:8.1f} s (incl. Ray start-up)")
    print(f"  trial phase (first start -> last end)  {end - start:8.1f} s")
    print(f"  stage builds inside it                 {stage_work:8.1f} CPU-s ({overlapping} stages)")
    print(f"  (trial times + stage CPU-s) / CPUs      {ideal:8.1f} s")
    print(f"  overhead ratio                         {(end - start) / ideal:8.3f}")


if __name__ == "__main__":
    main()
