"""The imagefolder cache build: images/s against a bare PIL loop, scaling with workers, peak memory.

    python benchmarks/cache.py [--root TREE] [--images 600] [--side 256] [--workers 1,2] [--shard-size 128] [--repeat 2]

Without --root it writes a 10-class tree of 500x375 JPEGs (quality 90) into a temporary folder. Figures:
1. a bare loop on one core: PIL open + RGB + shorter side to `side` + centre crop, over the same files (the same
   work as the cache's decode, which makes the same bytes);
2. the cache build on one core (every shard in one process: decode, digests, pixel sums, .npy writes,
   sha256 of every file, atomic publish), and its ratio to 1 (target >= 0.9);
3. the build spread over W processes, each building whole shards as the driver's Ray tasks do;
4. peak RSS (VmHWM) of the one-core build process over its RSS before the build, and of the workers.
Targets, not tests: the numbers depend on the machine and on what else runs on it.
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

import numpy as np


def make_tree(root: Path, images: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    classes = [f"n{1440764 + 37 * k:08d}" for k in range(10)]
    per_class = max(1, images // len(classes))
    for split, n in (("train", per_class), ("val", 2)):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.linspace(0, 255, 500, dtype=np.float32)[None, :, None] * (k + 1) / 10
                arr = np.clip(base + rng.normal(0, 40, (375, 500, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{c}_{i}.JPEG", quality=90)
    return root


def bare_loop(files: list[Path], side: int) -> float:
    """The decode alone, as simply as PIL does it: open, RGB, shorter side to `side` (bilinear), centre crop,
    as a (3, side, side) array. The cache's decode does the same work, so its bytes are these."""
    from PIL import Image

    t0 = time.perf_counter()
    for f in files:
        with Image.open(f) as im:
            im.load()
            if im.mode != "RGB":
                im = im.convert("RGB")
            w, h = im.size
            if min(w, h) != side:
                im = im.resize((side, int(side * h / w)) if w <= h else (int(side * w / h), side), Image.BILINEAR)
            w, h = im.size
            left, top = int(round((w - side) / 2.0)), int(round((h - side) / 2.0))
            np.ascontiguousarray(np.asarray(im.crop((left, top, left + side, top + side))).transpose(2, 0, 1))
    return time.perf_counter() - t0


WORKER = """
import json, sys, time
from workers.artifacts import ArtifactStore
from workers.config import ArtifactKey
from workers.data.imagefolder import build_shard, listing
keys = [ArtifactKey.make("shard", c) for c in json.loads(sys.argv[2])]
rule = keys[0].cfg["rule"]
listing(rule["root"], rule["minival_per_class"], rule["val_labels"])
store = ArtifactStore(sys.argv[1])
t0 = time.time()
for k in keys:
    store.build(k, lambda tmp, k=k: build_shard(k, store, tmp))
print(json.dumps([t0, time.time()]))
"""

ONE_CORE = """
import json, sys, time
from workers import stages
from workers.artifacts import ArtifactStore
from workers.config import ArtifactKey
import PIL.Image, PIL.JpegImagePlugin
key = ArtifactKey("cache", sys.argv[2])
from workers.graph import shard_keys
shard_keys(key)
def kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
base = kb("VmRSS")
t0 = time.perf_counter()
stages.build(key, ArtifactStore(sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - t0, "baseline_kb": base, "peak_kb": kb("VmHWM")}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", help="an existing imagefolder tree (default: write one)")
    ap.add_argument("--images", type=int, default=600, help="train images of the written tree")
    ap.add_argument("--side", type=int, default=256, help="shorter side and centre crop of the cache")
    ap.add_argument("--workers", default="1,2", help="process counts for the scaling figure")
    ap.add_argument("--shard-size", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=2, help="best of this many runs (the machine may be shared)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ddsweep-cache-bench-"))
    root = Path(args.root) if args.root else make_tree(tmp / "tree", args.images)

    from workers.artifacts import ArtifactStore
    from workers.config import ArtifactKey
    from workers.data import imagefolder
    from workers.graph import shard_keys

    opts = {"image_size": args.side, "minival_per_class": 2, "shard_size": args.shard_size}
    cfg = imagefolder.cache_config(str(root), **opts)
    key = ArtifactKey.make("cache", cfg)
    lst = imagefolder.listing(str(root), 2, None)
    files = [root / f.decode() for split in imagefolder.SPLITS for f in lst.files[split]]
    n = len(files)
    print(f"tree {root}: {n} images ({cfg['splits']}), cached at {args.side} px, shards of {args.shard_size}")

    bare = min(bare_loop(files, args.side) for _ in range(args.repeat))
    print(f"bare PIL decode + resize + crop, 1 core : {n / bare:8.1f} images/s")

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), *sys.path])}
    runs = []
    for r in range(args.repeat):
        out = subprocess.run(
            [sys.executable, "-c", ONE_CORE, str(tmp / f"store1_{r}"), key.config_json],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    one = min(runs, key=lambda r: r["seconds"])
    rate1 = n / one["seconds"]
    print(
        f"cache build (shards + cache stage), 1 core: {rate1:8.1f} images/s = {rate1 / (n / bare):.2f} x the bare loop"
    )
    decoded = ArtifactStore(tmp / "store1_0").manifest(key)["bytes"]
    print(
        f"  peak RSS of the build process: +{(one['peak_kb'] - one['baseline_kb']) / 1024:.1f} MiB over "
        f"{one['baseline_kb'] / 1024:.0f} MiB after imports; decoded data {decoded / 2**20:.0f} MiB"
    )
    shards = [k.cfg for k in shard_keys(key)]
    for w in [int(x) for x in args.workers.split(",")]:
        store = tmp / f"store_w{w}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, str(store), json.dumps(shards[i::w])],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for i in range(w)
        ]
        spans = []
        for p in procs:
            out, err = p.communicate()
            if p.returncode != 0:
                raise SystemExit(err.decode()[-2000:])
            spans.append(json.loads(out.decode().strip().splitlines()[-1]))
        seconds = max(e for _, e in spans) - min(s for s, _ in spans)  # from the first start to the last end
        import resource

        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(
            f"shard builds in {w} process(es)           : {n / seconds:8.1f} images/s "
            f"(x{(n / seconds) / rate1:.2f} of 1 core; largest worker peak RSS so far {peak:.0f} MiB)"
        )
    print(f"(cores on this machine: {os.cpu_count()}; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
