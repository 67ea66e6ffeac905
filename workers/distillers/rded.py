"""RDED and CA2D (docs/methods.md §5.3-5.4): observer-scored real crops, the most realistic stitched factor x factor."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers.catalogue import rded_factor
from workers.distillers import DistillContext
from workers.distillers.sre2l import random_resized_box
from workers.seeding import torch_generator
from workers.selectors import algorithms as alg
from workers.selectors import derived_rng

POOLS = ("cad_top", "cad_coreset")


# ---------------------------------------------------------------------------------------------------------------
# pools (docs/methods.md §5.3 step 1; §5.4)


def draw_pool(labels: np.ndarray, c: int, mipc: int, seed: int) -> np.ndarray:
    """RDED's per-class pool: mipc train indices of class c drawn without replacement by a generator seeded from
    (seed, "distill.rded.pool", c); all of the class when it has <= mipc images. Sorted."""
    idx = np.flatnonzero(np.asarray(labels) == c)
    if len(idx) <= mipc:
        return idx
    perm = torch.randperm(len(idx), generator=torch_generator(seed, "distill.rded.pool", c)).numpy()
    return np.sort(idx[perm[:mipc]])


def cad_pool(cad: np.ndarray, labels: np.ndarray, c: int, size: int, seed: int) -> np.ndarray:
    """CA2D's pool (docs/methods.md §5.4): the `size` highest-CAD train indices of class c (ties broken by a generator
    from (seed, "distill.ca2d.pool", c), as the selectors do); all of the class when it has <= size. Sorted."""
    cad = np.asarray(cad)
    labels = np.asarray(labels)
    if cad.shape != labels.shape:
        raise ValueError(f"CAD scores have shape {cad.shape}, labels {labels.shape}")
    idx = np.flatnonzero(labels == c)
    if len(idx) <= size:
        return idx
    return idx[alg.top_k(cad[idx], size, True, derived_rng(seed, "distill.ca2d.pool", c))]


# ---------------------------------------------------------------------------------------------------------------
# crops, scoring, selection, stitching (docs/methods.md §5.3 steps 2-5)


def random_crops(
    images: torch.Tensor, crops: int, out_size: tuple[int, int], min_scale: float, gen: torch.Generator
) -> torch.Tensor:
    """`crops` RandomResizedCrop patches per image: (P, C, H, W) float -> (P, crops, C, h, w).

    Box: area fraction ~ U(min_scale, 1), ratio (1, 1), from `gen` in image-major, crop-minor order; resized
    bilinearly with antialiasing (torchvision's tensor default).
    """
    p_count, _, height, width = images.shape
    out = images.new_empty((p_count, crops, images.shape[1], *out_size))
    for p in range(p_count):
        for k in range(crops):
            top, left, h, w = random_resized_box(gen, height, width, (min_scale, 1.0), (1.0, 1.0))
            out[p, k] = F.interpolate(
                images[p : p + 1, :, top : top + h, left : left + w],
                size=out_size,
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )[0]
    return out


def pad_to_canvas(patches: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad (n, C, h, w) patches, centred (extra pixel bottom/right), onto (n, C, height, width)."""
    n, ch, h, w = patches.shape
    if (h, w) == (height, width):
        return patches
    canvas = patches.new_zeros((n, ch, height, width))
    top, left = (height - h) // 2, (width - w) // 2
    canvas[:, :, top : top + h, left : left + w] = patches
    return canvas


@torch.no_grad()
def observer_ce(
    observer: nn.Module, patches: torch.Tensor, label: int, canvas: tuple[int, int], batch_size: int = 1024
) -> torch.Tensor:
    """−log p(label | patch) under the observer for normalised patches (n, C, h, w) (docs/methods.md §5.3 step 3).

    Patches smaller than the canvas are zero-padded, centred, first. (reconstruction) "zero" is 0 in normalised
    space, i.e. the per-channel mean colour: the padding is applied to the normalised tensor the observer sees.
    """
    device = next(observer.parameters()).device
    out = []
    for start in range(0, len(patches), batch_size):
        x = pad_to_canvas(patches[start : start + batch_size].to(device), *canvas)
        y = torch.full((len(x),), int(label), dtype=torch.int64, device=device)
        out.append(F.cross_entropy(observer(x), y, reduction="none").float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def select_patches(ce: np.ndarray | torch.Tensor, n_keep: int) -> tuple[np.ndarray, np.ndarray]:
    """(P, crops) observer CE -> (image positions, crop positions) of the n_keep chosen patches, lowest CE first.

    Per image the lowest-CE crop (first on ties), then the n_keep images whose best crop has the lowest CE
    (stable: ties keep pool order) (docs/methods.md §5.3 step 4).
    """
    ce = np.asarray(ce.detach().cpu() if isinstance(ce, torch.Tensor) else ce, dtype=np.float64)
    if ce.ndim != 2:
        raise ValueError(f"ce must be (images, crops), got shape {ce.shape}")
    if not 0 <= n_keep <= ce.shape[0]:
        raise ValueError(f"cannot keep {n_keep} patches from {ce.shape[0]} images (one patch per image)")
    best_crop = ce.argmin(axis=1)
    best = ce[np.arange(ce.shape[0]), best_crop]
    order = np.argsort(best, kind="stable")[:n_keep]
    return order.astype(np.int64), best_crop[order].astype(np.int64)


def stitch(patches: torch.Tensor | np.ndarray, ipc: int, factor: int) -> torch.Tensor:
    """(ipc·factor², C, h, w) -> (ipc, C, factor·h, factor·w): patch k·ipc + i fills cell k of image i, cells in
    row-major order (cell k at row k // factor, column k % factor) (docs/methods.md §5.3 step 5: ranks mixed)."""
    p = torch.as_tensor(patches)
    n, ch, h, w = p.shape
    if n != ipc * factor * factor:
        raise ValueError(f"stitch needs ipc·factor² = {ipc * factor * factor} patches, got {n}")
    grid = p.reshape(factor, factor, ipc, ch, h, w)  # [row, col, i] = patch (row·factor + col)·ipc + i
    return grid.permute(2, 3, 0, 4, 1, 5).reshape(ipc, ch, factor * h, factor * w)


def distill_class(
    observer: nn.Module,
    images: np.ndarray,
    label: int,
    ipc: int,
    factor: int,
    crops: int,
    min_scale: float,
    mean: np.ndarray,
    std: np.ndarray,
    gen: torch.Generator,
) -> np.ndarray:
    """RDED steps 2-5 for one class's pool images (uint8 (P, C, H, W)) -> uint8 (ipc, C, H, W)."""
    _, ch, height, width = images.shape
    if height % factor or width % factor:
        raise ValueError(f"factor {factor} does not divide the {height}x{width} image; choose another factor")
    n_keep = ipc * factor * factor
    if len(images) < n_keep:
        raise ValueError(
            f"class {label}: the pool has {len(images)} images, fewer than ipc·factor² = {n_keep} "
            f"(one patch per image); raise mipc or lower ipc/factor"
        )
    x = torch.as_tensor(np.ascontiguousarray(images)).float() / 255.0
    patches = random_crops(x, crops, (height // factor, width // factor), min_scale, gen)  # in [0, 1]
    m = torch.as_tensor(np.asarray(mean, np.float32)).view(1, ch, 1, 1)
    s = torch.as_tensor(np.asarray(std, np.float32)).view(1, ch, 1, 1)
    flat = patches.flatten(0, 1)
    ce = observer_ce(observer, (flat - m) / s, label, (height, width)).view(len(images), crops)
    img_pos, crop_pos = select_patches(ce, n_keep)
    chosen = patches[torch.as_tensor(img_pos), torch.as_tensor(crop_pos)]
    return (stitch(chosen, ipc, factor) * 255.0).clamp(0, 255).round().to(torch.uint8).numpy()


# ---------------------------------------------------------------------------------------------------------------
# distillers


def _observer(ctx: DistillContext) -> nn.Module:
    if ctx.teacher is None:
        raise ValueError("rded/ca2d need an observer (the teacher input)")
    observer = ctx.teacher()
    observer.eval()
    return observer


def _run(ctx: DistillContext, pool: Callable[[int, int], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    opts = ctx.opts
    shape = tuple(int(v) for v in ctx.train_x.shape[1:])
    factor = rded_factor(opts["factor"], min(shape[1], shape[2]))
    crops, min_scale = opts["crops"], opts["crop_min_scale"]
    observer = _observer(ctx)
    out = []
    for c in range(ctx.num_classes):
        idx = pool(c, factor)
        # The crop generator depends on (seed, class) only, not on the method: on one seed RDED and CA2D differ
        # only through their pools.
        out.append(
            distill_class(
                observer,
                ctx.train_x[idx],
                c,
                ctx.ipc,
                factor,
                crops,
                min_scale,
                ctx.mean,
                ctx.std,
                torch_generator(ctx.seed, "distill.rded.crops", c),
            )
        )
    images = np.concatenate(out).reshape(ctx.num_classes * ctx.ipc, *shape)
    labels = np.repeat(np.arange(ctx.num_classes, dtype=np.int64), ctx.ipc)
    return images, labels


def rded(ctx: DistillContext) -> tuple[np.ndarray, np.ndarray]:
    """RDED (docs/methods.md §5.3), with the options declared in workers.catalogue (mipc, crops, factor, ...)."""
    return _run(ctx, lambda c, factor: draw_pool(ctx.train_y, c, ctx.opts["mipc"], ctx.seed))


def ca2d_pool(
    cad: np.ndarray, labels: np.ndarray, c: int, mode: str, mipc: int, ipc: int, factor: int, seed: int
) -> np.ndarray:
    """The CA2D pool of class c (docs/methods.md §5.4, reconstruction): `cad_top` = the top-mipc by CAD (mirrors RDED's
    mipc = 300); `cad_coreset` = the CAD-Prune coreset of the patch budget, top ipc·factor² by CAD, one patch each."""
    if mode not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {mode!r}")
    return cad_pool(cad, labels, c, mipc if mode == "cad_top" else ipc * factor * factor, seed)


def ca2d(ctx: DistillContext) -> tuple[np.ndarray, np.ndarray]:
    """CA2D (paper §5; docs/methods.md §5.4): RDED (same observer, crops, factor) on a CAD-ranked pool.

    Options: RDED's plus pool ("cad_top" | "cad_coreset"); the CAD options reach ctx.cad_scores, not this code.
    (reconstruction) With cad_coreset every pool image gives its best crop and all of them are stitched (the pool
    size equals the patch budget); with cad_top the RDED selection runs on the larger CAD pool.
    """
    if ctx.cad_scores is None:
        raise ValueError("ca2d needs CAD scores (inputs=('teacher', 'dynamics')); none were given")
    cad = np.asarray(ctx.cad_scores())
    mode, mipc = ctx.opts["pool"], ctx.opts["mipc"]
    return _run(ctx, lambda c, factor: ca2d_pool(cad, ctx.train_y, c, mode, mipc, ctx.ipc, factor, ctx.seed))
