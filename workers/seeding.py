"""Every random choice derives from (trial seed, purpose, extra...) (DESIGN.md §8). No torch."""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, purpose: str, *extra: int) -> int:
    h = hashlib.sha256(f"{seed}|{purpose}|{'|'.join(map(str, extra))}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def torch_generator(seed: int, purpose: str, *extra: int, device: str = "cpu"):
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, purpose, *extra))
    return g
