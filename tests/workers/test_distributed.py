"""Data-parallel shares (workers.distributed): every image of a global batch goes to exactly one rank, shares
differ by at most one image, and the loss weights make the ranks' mean gradient the global batch's."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from workers.budget import epoch_batches
from workers.distributed import Dist


def test_every_image_of_every_step_goes_to_exactly_one_rank():
    for n, batch, world in [(1000, 64, 2), (1001, 64, 3), (37, 8, 4), (5, 4, 8), (1281, 256, 8)]:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
        pos = 0
        for _, sizes in epoch_batches(n, batch, 2 * n):
            for size in sizes:
                idx = order[pos % n : pos % n + size]
                pos += size
                shares = [Dist(r, world).share(idx) for r in range(world)]
                real = [s for s, w in shares if w > 0]
                got = torch.cat(real).sort().values
                assert torch.equal(got, idx.sort().values), (n, batch, world)  # each once, none lost
                lens = [len(s) for s in real]
                assert max(lens) - min(lens) <= 1
                assert all(len(s) == 1 for s, w in shares if w == 0)  # an empty share runs one image at weight 0
                assert abs(sum(w for _, w in shares) - world) < 1e-9  # the weights average to one


def test_weighted_rank_losses_average_to_the_global_mean_loss():
    """DDP averages the ranks' gradients; with weight local*world/global, that average is the gradient of the
    global batch's mean loss (checked on the losses, which the gradients are linear in)."""
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(13, 5, generator=g), torch.randint(0, 5, (13,), generator=g)
    idx = torch.arange(13)
    for world in (2, 3, 4):
        ranks = [Dist(r, world).share(idx) for r in range(world)]
        mean_of_ranks = sum(w * F.cross_entropy(logits[s], labels[s]) for s, w in ranks) / world
        torch.testing.assert_close(mean_of_ranks, F.cross_entropy(logits, labels))


def test_blocks_cover_the_rows_once_in_order():
    for n, world in [(10, 3), (1, 2), (1281167, 8)]:
        blocks = [Dist(r, world).block(n) for r in range(world)]
        assert blocks[0][0] == 0 and blocks[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))
        assert max(b - a for a, b in blocks) - min(b - a for a, b in blocks) <= 1
    assert np.isclose(sum(b - a for a, b in [Dist(r, 7).block(100) for r in range(7)]), 100)
