"""The sharded cache at scale, in miniature (slow): memory bounded by a shard or a batch, never by the split, measured
in fresh processes; a build killed with SIGKILL resumes at the missing shards.

The tree: 10 classes of 500x375 JPEGs cached at 256 px. Each measured process first imports what it needs and
warms up on one image or one batch (baseline = its RSS then: the interpreter, torch, the allocator's pools),
resets its peak (/proc/self/clear_refs), does the work over the whole split, then reports VmHWM: the increase
must stay under CAP while the data decoded or read is at least 4 x CAP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from imagetrees import dataset, make_tree, wnids

from workers.artifacts import ArtifactStore
from workers.graph import cache_key, shard_keys

pytestmark = pytest.mark.slow

CAP_KB = 20 * 1024  # the cap on a process's peak RSS increase
SIDE = 256

PROBE = """
import json, os


def _kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass
"""


def measure(body: str, work: str, env_extra: dict | None = None) -> dict:
    """Run `body` (imports, warm-up), then `work`, in a fresh Python; return baseline/peak RSS in kB and the
    JSON the work printed last (as `result`)."""
    code = (
        PROBE
        + textwrap.dedent(body)
        + "\n_base = _kb('VmRSS')\n_reset_peak()\n"
        + textwrap.dedent(work)
        + "\nprint(json.dumps({'baseline': _base, 'peak': _kb('VmHWM'), 'result': result}))\n"
    )
    env = {**os.environ, **(env_extra or {})}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cachemem")
    root = make_tree(tmp / "data", classes=wnids(10), per_class=50, val=10, size=(500, 375), ext=".JPEG", seed=5)
    return tmp, root


def options(**kw) -> dict:
    return {"image_size": SIDE, "minival_per_class": 2, "shard_size": 16, **kw}


def test_the_cache_build_holds_a_shard_not_the_data(tree):
    tmp, root = tree
    ds = dataset(root, **options())
    decoded = 600 * 3 * SIDE * SIDE
    assert decoded >= 4 * CAP_KB * 1024
    got = measure(
        f"""
        from workers import stages
        from workers.artifacts import ArtifactStore
        from workers.config import DatasetConfig
        from workers.data import imagefolder
        from workers.graph import cache_key
        import PIL.Image, PIL.JpegImagePlugin
        ds = DatasetConfig.from_json({ds.to_json()!r})
        key = cache_key(ds)  # lists the tree: metadata, not images
        imagefolder.decode({str(root / "train" / wnids(10)[0] / (wnids(10)[0] + "_0.JPEG"))!r}, {SIDE}, {SIDE})
        """,
        f"""
        stages.build(key, ArtifactStore({str(tmp / "store")!r}))
        import sys
        result = {{"torch": "torch" in sys.modules}}
        """,
    )
    assert not got["result"]["torch"]  # building a cache never loads torch
    store = ArtifactStore(tmp / "store")
    assert store.manifest(cache_key(ds))["bytes"] == decoded
    assert got["peak"] - got["baseline"] < CAP_KB, got


def test_evaluation_and_the_feature_stage_stream_in_batches(tree):
    tmp, root = tree
    store_path = tmp / "store"
    ds = dataset(root, **options())
    import torch

    from workers import models, stages
    from workers.config import Named, TeacherConfig
    from workers.graph import features_key, teacher_key

    stages.build(cache_key(ds), ArtifactStore(store_path))  # the cache (reused if the build test ran)
    arch = {"depth": 4, "width": 4, "norm": "instance"}
    weights = tmp / "teacher.pt"
    torch.save(models.build("convnet", arch, 10, (3, SIDE, SIDE), 0).state_dict(), weights)
    from workers.artifacts import sha256_file

    teacher = TeacherConfig(
        Named.make("convnet", arch), weights=str(weights), weights_sha256=sha256_file(weights), min_top1_factor=0.0
    )
    tkey = teacher_key(ds, teacher)
    stages.build(tkey, ArtifactStore(store_path))
    fkey = features_key(tkey)
    train_bytes = 480 * 3 * SIDE * SIDE
    assert train_bytes >= 4 * CAP_KB * 1024
    # 2 images of 256 px per streamed batch; glibc returns freed batch buffers to the system at once instead of
    # keeping them in its heap, so that RSS shows live memory (without it RSS plateaus a few batches higher)
    env = {"DDSWEEP_BATCH_BYTES": str(2 * 3 * 4 * SIDE * SIDE), "MALLOC_MMAP_THRESHOLD_": "65536"}
    setup = f"""
        import torch
        torch.set_num_threads(1)
        from workers import models, stages
        from workers.artifacts import ArtifactStore
        from workers.config import ArtifactKey, DatasetConfig
        from workers.data import load_splits
        from workers.train import Tensors, channel_stats, evaluate
        store = ArtifactStore({str(store_path)!r})
        splits = load_splits(DatasetConfig.from_json({ds.to_json()!r}), store)
        model = models.build("convnet", {arch!r}, 10, (3, {SIDE}, {SIDE}), 0)
        mean, std = channel_stats(splits.train_x, "cpu")
        import numpy as np
        first = splits.train_x.take(np.arange(2))  # warm-up: one streamed batch
        evaluate(model, Tensors.of(first, splits.train_y[:2], mean, std, placement="stream"))
        """
    ev = measure(
        setup,
        """
        data = Tensors.of(splits.train_x, splits.train_y, mean, std, placement="stream")
        result = evaluate(model, data)
        """,
        env,
    )
    assert 0 <= ev["result"]["top1"] <= 1
    assert ev["peak"] - ev["baseline"] < CAP_KB, ev
    feats = measure(
        setup,
        f"""
        key = ArtifactKey({fkey.kind!r}, {fkey.config_json!r})
        stages.build(key, store)
        result = store.manifest(key)["shape"]
        """,
        env,
    )
    assert feats["result"] == [480, 4 * 16 * 16]
    assert feats["peak"] - feats["baseline"] < CAP_KB, feats


def test_a_killed_build_resumes_at_the_missing_shards(tree, tmp_path):
    _, root = tree
    ds = dataset(root, **options(shard_size=4, image_size=128))
    key = cache_key(ds)
    shards = shard_keys(key)
    assert len(shards) == 150
    store_path = tmp_path / "store"
    code = (
        "from workers import stages\nfrom workers.artifacts import ArtifactStore\n"
        "from workers.config import ArtifactKey\n"
        f"stages.build(ArtifactKey('cache', {key.config_json!r}), ArtifactStore({str(store_path)!r}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    store = ArtifactStore(store_path)
    deadline = time.time() + 300
    while sum(store.exists(k) for k in shards[:12]) < 5:
        assert proc.poll() is None and time.time() < deadline, "the build ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {k: store.manifest(k)["build"] for k in shards if store.exists(k)}
    assert 5 <= len(done) < len(shards) and not store.exists(key)
    from workers import stages

    stages.build(key, store)
    assert store.verify(key)
    for k in shards:
        assert store.exists(k)
        if k in done:
            assert store.manifest(k)["build"] == done[k], "a finished shard was built again"
