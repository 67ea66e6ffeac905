"""Why SRe2L is weak here (issue #14, item 6): the teacher on recovered images, the BN loss over iterations, and
students trained on them, for recover variants one change at a time.

    python benchmarks/sre2l_study.py digits [STORAGE] [--ipc 10] [--seeds 0 1]
    python benchmarks/sre2l_study.py digits-resnet [STORAGE]            # a deeper BatchNorm teacher (ResNet-18)
    python benchmarks/make_digits_folder.py /tmp/digits32
    python benchmarks/sre2l_study.py folder [STORAGE] --root /tmp/digits32

`digits` uses the teacher and student recipe of sweeps/digits_scalability.yaml (ConvNet-D2 width 32, BatchNorm
teacher, 10 full-data epochs per trial); `digits-resnet` swaps in a ResNet-18 teacher (20 BatchNorm layers);
`folder` a 32-px ImageFolder with a ConvNet-D3 BatchNorm teacher. Per variant (--variants picks some) it prints:
teacher top-1 on the recovered images (uint8, clean); the BN loss (first layer x10, as recovered) of the final
images and the CE, as a ratio to a batch of real images (one per class); the BN loss of batch 0 along its
iterations; student top-1 (test) under hl and sl_kd, mean over seeds, beside random real images of the same IPC.
Everything runs through ddsweep's own stages and trials (no Ray); artifacts go under STORAGE (default a
temporary folder), so a rerun reuses them.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from orchestrator.grid import expand
from orchestrator.spec import parse_spec
from workers import stages
from workers.artifacts import ArtifactStore
from workers.catalogue import SELECTORS
from workers.config import Named
from workers.data import load_splits
from workers.distillers import sre2l as S
from workers.graph import subset_key, teacher_key
from workers.seeding import torch_generator
from workers.teacher import load_teacher
from workers.trial import TrialContext, run_trial

SETUPS = {
    "digits": dict(
        dataset="{name: digits}",
        teacher="{arch: convnet, depth: 2, width: 32, norm: batch, epochs: 30}",
        student="{arch: convnet, depth: 2, width: 32}",
        budget="{full_epochs: 10}",
        ipc=10,
    ),
    "digits-resnet": dict(
        dataset="{name: digits}",
        teacher="{arch: resnet18, epochs: 15}",
        student="{arch: convnet, depth: 2, width: 32}",
        budget="{full_epochs: 10}",
        ipc=10,
    ),
    "folder": dict(
        dataset="{{name: imagefolder, root: {root}, image_size: 32}}",
        teacher="{arch: convnet, depth: 3, width: 32, norm: batch, epochs: 20}",
        student="{arch: convnet, depth: 3, width: 32}",
        budget="{full_epochs: 5}",
        ipc=5,
    ),
}
# One change at a time from ddsweep's recover before issue #14 (crop rrc, jitter both, r_bn 0.01, 1000 iterations).
VARIANTS = {
    "before": "{iterations: 1000, crop: rrc, jitter: both}",
    "it300": "{iterations: 300, crop: rrc, jitter: both}",
    "it4000": "{iterations: 4000, crop: rrc, jitter: both}",
    "rbn0.1": "{iterations: 1000, crop: rrc, jitter: both, r_bn: 0.1}",
    "rbn1": "{iterations: 1000, crop: rrc, jitter: both, r_bn: 1.0}",
    "rbn10": "{iterations: 1000, crop: rrc, jitter: both, r_bn: 10.0}",
    "forward": "{iterations: 1000, crop: rrc, jitter: forward}",
    "nocrop": "{iterations: 1000, crop: none, jitter: both}",
    "cifar": "{iterations: 1000, crop: none, jitter: forward}",  # SRe2L's own CIFAR recover script
    "cifar-rbn1": "{iterations: 1000, crop: none, jitter: forward, r_bn: 1.0}",
    "cifar-rbn0.1": "{iterations: 1000, crop: none, jitter: forward, r_bn: 0.1}",
    "cifar-it300": "{iterations: 300, crop: none, jitter: forward}",
    "cifar-it4000": "{iterations: 4000, crop: none, jitter: forward}",
}
SWEEP = """
name: sre2l-study
dataset: {dataset}
teacher: {teacher}
student: {student}
budget: {budget}
grid: {{selector: [{selectors}], regime: [hl, sl_kd], ipc: [{ipc}], seed: [{seeds}]}}
train: {{optimizer: adamw, lr: 0.01, weight_decay: 0.0005, batch_size: 64, schedule: cosine, augment: crop,
        temperature: 20, kd_min_scale: 0.5}}
"""


def normalise(images: np.ndarray, splits) -> torch.Tensor:
    x = splits.train_x.astype(np.float32) / 255.0
    mean, std = x.mean(axis=(0, 2, 3)), np.maximum(x.std(axis=(0, 2, 3)), 1e-3)
    m, s = torch.as_tensor(mean).view(1, -1, 1, 1), torch.as_tensor(std).view(1, -1, 1, 1)
    return (torch.as_tensor(np.ascontiguousarray(images)).float() / 255.0 - m) / s


@torch.no_grad()
def bn_and_ce(teacher, x: torch.Tensor, y: torch.Tensor, per_batch: int) -> tuple[float, float]:
    """Mean over batches of `per_batch` images (one per class, as recovered) of the weighted BN loss and the CE."""
    bn, ce = [], []
    for s in range(0, len(x), per_batch):
        with S.BNStatHooks(teacher) as hooks:
            logits = teacher(x[s : s + per_batch])
        bn.append(float(hooks.weighted(10.0)))
        ce.append(float(F.cross_entropy(logits, y[s : s + per_batch])))
    return float(np.mean(bn)), float(np.mean(ce))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("setup", choices=tuple(SETUPS))
    ap.add_argument("storage", nargs="?", default=None)
    ap.add_argument("--root", help="the ImageFolder root (setup folder)")
    ap.add_argument("--ipc", type=int, default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=tuple(VARIANTS))
    ap.add_argument("--no-students", action="store_true", help="recover and measure only")
    a = ap.parse_args()
    torch.set_num_threads(1)  # small models: one thread is faster, and CPU results depend on the count
    setup = dict(SETUPS[a.setup])
    if a.setup == "folder":
        setup["dataset"] = setup["dataset"].format(root=Path(a.root).resolve())
    ipc = a.ipc or setup.pop("ipc")
    setup.pop("ipc", None)
    storage = Path(a.storage or tempfile.mkdtemp(prefix="sre2l-study-"))
    store = ArtifactStore(storage / "artifacts")
    selectors = ["random"] + [f"{{name: sre2l, {VARIANTS[v][1:]}" for v in a.variants]
    text = SWEEP.format(**setup, selectors=", ".join(selectors), ipc=ipc, seeds=", ".join(map(str, a.seeds)))
    trials = expand(parse_spec(text))
    variant_of = {}  # the resolved selector of each variant -> its name
    for v in a.variants:
        opts, problems = SELECTORS["sre2l"].resolve(yaml.safe_load(VARIANTS[v]), v)
        assert not problems, problems
        variant_of[Named.make("sre2l", opts)] = v
    t0 = next(t for t in trials if t.teacher is not None)
    tkey = teacher_key(t0.dataset, t0.teacher)
    stages.build(tkey, store)
    teacher = load_teacher(tkey, store, "cpu")
    splits = load_splits(t0.dataset)
    n_cls = splits.num_classes
    print(f"storage {storage}; setup {a.setup}; teacher minival top-1 {store.manifest(tkey)['minival_top1']:.3f}")
    test_x, test_y = normalise(splits.test_x, splits), torch.as_tensor(splits.test_y)
    print(f"teacher test top-1 {float((teacher(test_x).argmax(1) == test_y).float().mean()):.3f}")
    rng = np.random.default_rng(0)
    real_idx = np.concatenate([rng.permutation(np.flatnonzero(splits.train_y == c))[:ipc] for c in range(n_cls)])
    real = real_idx.reshape(n_cls, ipc).T.ravel()  # one image per class per batch, as recovered
    real_x, real_y = normalise(splits.train_x[real], splits), torch.as_tensor(splits.train_y[real])
    real_bn, real_ce = bn_and_ce(teacher, real_x, real_y, n_cls)
    print(f"real images, batches of one per class: BN loss {real_bn:.3f}, CE {real_ce:.4f}\n")

    for sel, v in variant_of.items():
        t = next(t for t in trials if t.selector == sel)
        key = subset_key(t)
        stages.build(key, store)
        images = np.load(store.path(key) / "images.npy")
        labels = np.load(store.path(key) / "labels.npy")
        by_batch = np.lexsort((labels, np.tile(np.arange(ipc), n_cls)))  # ipc_id major, class minor
        x, y = normalise(images[by_batch], splits), torch.as_tensor(labels[by_batch])
        acc = float((teacher(x).argmax(1) == y).float().mean())
        bn, ce = bn_and_ce(teacher, x, y, n_cls)
        opts = S.RecoverOptions(**sel.opts)
        trace: list[dict] = []
        S.recover_batch(
            teacher,
            torch.arange(n_cls),
            *(np.asarray(m) for m in _stats(splits)),
            splits.image_shape,
            opts,
            torch_generator(t.seed, "distill.sre2l.init", 0, 0),
            torch_generator(t.seed, "distill.sre2l.augment", 0, 0),
            trace,
        )
        marks = sorted({0, opts.iterations // 10, opts.iterations // 2, opts.iterations - 1})
        path = ", ".join(f"it {m}: {trace[m]['bn'] / real_bn:.2f}" for m in marks)
        print(f"{v:<11} teacher top-1 {acc:.3f}  BN/real {bn / real_bn:6.2f}  CE {ce:.4f}  (batch 0, view: {path})")

    if a.no_students:
        return
    print("\nstudents (test top-1 %, mean over seeds):")
    ctx = TrialContext(artifacts_root=storage / "artifacts", num_threads=1)
    acc: dict[tuple[str, str], list[float]] = {}
    for t in trials:
        v = "random real" if t.selector.name == "random" else variant_of[t.selector]
        acc.setdefault((v, t.regime), []).append(run_trial(t, ctx)["top1"])
    for v in ["random real", *variant_of.values()]:
        hl, kd = (100 * np.mean(acc[v, r]) for r in ("hl", "sl_kd"))
        print(f"  {v:<11} hl {hl:5.1f}   sl_kd {kd:5.1f}")


def _stats(splits):
    x = splits.train_x.astype(np.float32) / 255.0
    return x.mean(axis=(0, 2, 3)), np.maximum(x.std(axis=(0, 2, 3)), 1e-3)


if __name__ == "__main__":
    main()
