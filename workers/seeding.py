"""Every random choice derives from (trial seed, purpose, extra...) (docs/design.md §8). No torch."""

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


_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z):
    """splitmix64's finaliser on a numpy uint64 array (wrapping arithmetic)."""
    import numpy as np

    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def counter_uniform(seed: int, purpose: str, epoch: int, ids, stream: int):
    """Uniforms in [0, 1), one per id: a counter-based generator of (seed, purpose, epoch, stream, id).

    Each value is a pure function of its coordinates (a hash, not a sequence), so a sample's draw
    is the same whatever else is drawn, in whatever order, batch size or process.
    """
    import numpy as np

    key = np.uint64(derive_seed(seed, purpose, epoch, stream))
    ids = np.asarray(ids, dtype=np.uint64)
    with np.errstate(over="ignore"):  # element id + 1 of the SplitMix64 sequence started at `key`
        z = _mix64(key + (ids + np.uint64(1)) * np.uint64(_GOLDEN))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
