"""The CUDA path's figures: student training and teacher inference images/s, and peak memory, on one GPU.

    PYTHONPATH=. python3 benchmarks/gpu.py [--images 10000] [--side 224] [--batch 256] [--epochs 2] [--compile]

Needs only torch, torchvision and numpy (no Ray, no install), so it runs from a bare checkout on a GPU
box. Without CUDA it says so and exits 0. Measures, for ResNet-18 at side x side px and 1000 classes:

- student training through workers.train.train (hard labels, crop+flip, SGD, cosine) from the GPU-resident
  subset (placement device) and from pinned host memory copied per batch (placement host), each with
  fp32 / bf16 autocast and NCHW / channels_last: images/s after one warm-up epoch, peak GPU memory;
- teacher inference (the frozen teacher of the sl / sl_kd regimes: inference_mode, bf16 autocast,
  channels_last): images/s and peak memory.

The images are random uint8 (speed does not depend on content); every figure is the best of `--repeats`.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from workers import models
from workers.budget import plan
from workers.config import BudgetConfig, TrainConfig
from workers.regimes import FixedSoftLabels, HardLabels
from workers.train import Checkpointer, Tensors, train

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CASES = (("fp32", "no"), ("fp32", "yes"), ("bf16", "no"), ("bf16", "yes"))


def gib(b: float) -> float:
    return b / 2**30


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def peak_bytes(dev: torch.device) -> float:
    return torch.cuda.max_memory_allocated() if dev.type == "cuda" else float("nan")


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def student(args, dev, x, y, placement: str, precision: str, layout: str) -> tuple[float, float]:
    mean = torch.tensor(MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=dev).view(1, 3, 1, 1)
    data = Tensors.of(x, y, mean, std, ids=np.arange(len(y)), placement=placement)
    cfg = TrainConfig(
        optimizer="sgd",
        lr=0.1,
        weight_decay=5e-5,
        batch_size=args.batch,
        schedule="cosine",
        augment="crop_flip",
        eval_points=1,
        precision=precision,
        channels_last=layout,
        compile=args.compile,
    )
    best = 0.0
    reset_peak(dev)
    for _ in range(args.repeats):
        model = models.build("resnet18", {}, args.classes, (3, args.side, args.side), 0).to(dev)
        warm = plan(BudgetConfig("epochs", 1), len(y), len(y), cfg.batch_size)
        train(model, HardLabels(cfg, 0), data, cfg, warm, 0, {}, Checkpointer(None))  # cuDNN choice, compile
        budget = plan(BudgetConfig("epochs", args.epochs), len(y), len(y), cfg.batch_size)
        sync(dev)
        t0 = time.perf_counter()
        train(model, HardLabels(cfg, 1), data, cfg, budget, 1, {}, Checkpointer(None))
        sync(dev)
        best = max(best, budget.images_seen / (time.perf_counter() - t0))
    peak = peak_bytes(dev)
    del data
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return best, peak


def teacher(args, dev, x_dev: torch.Tensor, precision: str, layout: str) -> tuple[float, float]:
    cfg = TrainConfig(precision=precision, channels_last=layout, batch_size=args.batch)
    net = models.build("resnet18", {}, args.classes, (3, args.side, args.side), 0).to(dev)
    regime = FixedSoftLabels(cfg, 0, net)
    chunk = 512
    xs = [(x_dev[i : i + chunk].float() / 255.0 - 0.45) / 0.225 for i in range(0, len(x_dev), chunk)]
    regime.teacher_logits(xs[0])  # warm-up
    reset_peak(dev)
    best = 0.0
    for _ in range(args.repeats):
        sync(dev)
        t0 = time.perf_counter()
        for b in xs:
            regime.teacher_logits(b, chunk=chunk)
        sync(dev)
        best = max(best, len(x_dev) / (time.perf_counter() - t0))
    return best, peak_bytes(dev)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--side", type=int, default=224)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per case (after one warm-up epoch)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="also torch.compile the student (train.compile)")
    p.add_argument("--skip-host", action="store_true", help="only the GPU-resident placement")
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of this script's code path (tests use it)")
    args = p.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(
            f"benchmarks/gpu.py: CUDA is not available here (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none'}); nothing to measure. Run it on a GPU machine: "
            "PYTHONPATH=. python3 benchmarks/gpu.py"
        )
        return 0
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(
            f"{torch.cuda.get_device_name(0)}, {gib(props.total_memory):.0f} GiB, torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, bf16 {torch.cuda.is_bf16_supported()}"
        )
    else:
        print(f"{dev} (a smoke run: bf16 falls back to fp32 off CUDA), torch {torch.__version__}")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.images, 3, args.side, args.side), dtype=torch.uint8, generator=g).numpy()
    y = np.arange(args.images) % args.classes
    print(
        f"ResNet-18, {args.images} images of 3x{args.side}x{args.side} ({gib(x.nbytes):.2f} GiB uint8), "
        f"{args.classes} classes, batch {args.batch}, {args.epochs} timed epoch(s)"
        + (", torch.compile" if args.compile else "")
    )
    print(f"{'student training':<18}{'placement':<11}{'precision':<11}{'layout':<15}{'images/s':>10}{'peak GiB':>10}")
    placements = ("device",) if args.skip_host else ("device", "host")
    for placement in placements:
        for precision, layout in CASES:
            ips, peak = student(args, dev, x, y, placement, precision, layout)
            name = "channels_last" if layout == "yes" else "NCHW"
            print(f"{'':<18}{placement:<11}{precision:<11}{name:<15}{ips:>10.0f}{gib(peak):>10.2f}", flush=True)
    x_dev = torch.from_numpy(x).to(dev)
    print(f"{'teacher inference':<29}{'precision':<11}{'layout':<15}{'images/s':>10}{'peak GiB':>10}")
    for precision, layout in CASES:
        ips, peak = teacher(args, dev, x_dev, precision, layout)
        name = "channels_last" if layout == "yes" else "NCHW"
        print(f"{'':<29}{precision:<11}{name:<15}{ips:>10.0f}{gib(peak):>10.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
