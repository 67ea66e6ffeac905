"""The trainer's speed against a bare PyTorch loop on the same model, data and batch.

    python benchmarks/trainer.py [--ipc 50] [--epochs 30] [--threads 1]

Both loops train ConvNet-D2 on a digits subset with hard labels, no augmentation, AdamW and a cosine
schedule: the bare loop is the textbook five lines (index, normalise, forward, loss, step); ddsweep's
is workers.train.train (budget plan, seeded order per epoch, regime object, hooks, checkpoint checks).
Prints images/s of each and their ratio (target: >= 0.95).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from workers import models
from workers.budget import plan
from workers.config import BudgetConfig, TrainConfig
from workers.data.digits import load
from workers.regimes import HardLabels
from workers.seeding import torch_generator
from workers.train import Checkpointer, Tensors, channel_stats, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ipc", type=int, default=50)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    s = load(None, 8, 10, 0.2)
    idx = np.concatenate([np.flatnonzero(s.train_y == c)[: args.ipc] for c in range(10)])
    mean, std = channel_stats(s.train_x, "cpu")
    data = Tensors.of(s.train_x[idx], s.train_y[idx], mean, std, ids=idx)
    cfg = TrainConfig(optimizer="adamw", lr=0.01, batch_size=64, schedule="cosine", augment="none", eval_points=1)
    budget = plan(BudgetConfig("epochs", args.epochs), len(idx), len(s.train_y), cfg.batch_size)

    def ddsweep() -> float:
        model = models.build("convnet", {"depth": 2, "width": 32, "norm": "instance"}, 10, (1, 8, 8), 0)
        t0 = time.perf_counter()
        train(model, HardLabels(cfg, 0), data, cfg, budget, 0, {}, Checkpointer(None))
        return budget.images_seen / (time.perf_counter() - t0)

    def bare() -> float:
        model = models.build("convnet", {"depth": 2, "width": 32, "norm": "instance"}, 10, (1, 8, 8), 0)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / budget.steps)))
        n, seen = len(idx), 0
        t0 = time.perf_counter()
        for epoch in range(math.ceil(budget.images_seen / n)):
            order = torch.randperm(n, generator=torch_generator(0, "order", epoch))
            for start in range(0, n, cfg.batch_size):
                b = order[start : start + min(cfg.batch_size, budget.images_seen - seen)]
                if len(b) == 0:
                    break
                x = (data.x[b].float() / 255.0 - mean) / std
                loss = F.cross_entropy(model(x), data.y[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                seen += len(b)
        return seen / (time.perf_counter() - t0)

    ours, theirs = [], []
    for _ in range(3):  # interleaved, best of three: the machine may be busy
        ours.append(ddsweep())
        theirs.append(bare())
    print(f"{budget.images_seen} images ({budget.steps} steps of batch {cfg.batch_size}), {args.threads} thread(s)")
    print(f"  bare PyTorch loop   {max(theirs):10.0f} images/s")
    print(f"  workers.train       {max(ours):10.0f} images/s")
    print(f"  ratio               {max(ours) / max(theirs):10.3f}")


if __name__ == "__main__":
    main()
