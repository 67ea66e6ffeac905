"""Data-parallel training for the long full-data runs (score runs, teacher training): the rank's part of
each step and the per-sample records gathered by sample id (docs/design.md §7).

torch.distributed only: whoever starts the processes (Ray Train's TorchTrainer, in
orchestrator/distributed.py) has set up the process group; this module never imports Ray, so the GPU
path still runs from a bare checkout.

The rules, so that N workers train the model one worker would, up to float summation order:
- each epoch's order comes from the seed as before; every step's global batch (the `batch_size` images
  one worker would take) is cut rank::world, so ranks differ by at most one image and no rank waits on
  a shorter share;
- each rank's mean loss is weighted by its share (local / global x world): DDP's gradient average is
  then the gradient of the global batch's mean loss;
- a rank whose share of a (final, short) batch is empty takes the batch's first image at weight 0, so
  every rank runs every step (DDP needs that);
- per-sample records are written by the rank that saw the sample into zero-filled rows, then summed
  over ranks: every sample comes from exactly one rank, and a count per sample checks it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int

    @classmethod
    def current(cls) -> Dist | None:
        """The process group's rank and size, or None outside one (a plain, single-process run)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return None
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def share(self, idx: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's part of a global batch and the weight of its mean loss (see the module docstring)."""
        mine = idx[self.rank :: self.world]
        if len(mine) == 0:
            return idx[:1], 0.0
        return mine, len(mine) * self.world / len(idx)

    def block(self, n: int) -> tuple[int, int]:
        """This rank's contiguous block [start, stop) of n rows (for clean recording passes)."""
        bounds = np.linspace(0, n, self.world + 1).round().astype(int)
        return int(bounds[self.rank]), int(bounds[self.rank + 1])

    def _device(self) -> torch.device:
        import torch.distributed as dist

        return (
            torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        )

    def sum_(self, arr: np.ndarray) -> np.ndarray:
        """The element-wise sum of `arr` over ranks (float32 or int64 on the wire), in `arr`'s dtype."""
        import torch.distributed as dist

        wire = torch.int64 if arr.dtype.kind in "biu" else torch.float32
        t = torch.as_tensor(np.ascontiguousarray(arr)).to(self._device(), wire)
        dist.all_reduce(t)
        return t.cpu().numpy().astype(arr.dtype)

    def broadcast_state(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank, so a clean pass is one model."""
        import torch.distributed as dist

        for b in model.buffers():
            dist.broadcast(b, 0)

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def wrap(self, model: nn.Module, device) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        device = torch.device(device)
        if device.type != "cuda":
            return DDP(model)
        # "cuda" is the current device, which the launcher set to this rank's GPU (orchestrator/distributed.py)
        return DDP(model, device_ids=[torch.cuda.current_device() if device.index is None else device.index])
