"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021), the views of the paper's small-scale
hard- and soft-label recipes (docs/methods.md §2.3): `augment: dsa`.

Behaviour of VICO-UoE/DatasetCondensation `utils.py` (`DiffAugment`, `ParamDiffAug`), re-implemented on a
seeded torch.Generator: strategy `color_crop_cutout_flip_scale_rotate` in its single-op mode ('S'): one of the
six operations is drawn per batch and applied with its own parameters per image (the published constants in
`DSA_PARAMS`):

- color: brightness x + (u - 1/2)·1.0; saturation (x - mean over channels)·2u + that mean; contrast
  (x - image mean)·(u + 0.5) + image mean (three draws, applied in this order);
- crop: a shift by integers in [-s, s] rows and columns, s = round(side·0.125), zero fill;
- cutout: a square of side round(side·0.5) set to 0, centred uniformly (clipped at the border);
- flip: horizontal, probability 1/2;
- scale: x and y scaled by uniforms in [1/1.2, 1.2] about the centre (bilinear, zero padding);
- rotate: by a uniform angle in [-15, 15] degrees about the centre (bilinear, zero padding).

Images are normalised (0 = the train split's mean), as in the reference, so zero fill is the mean colour.
`siamese=True` draws one parameter set for the whole batch, which can then be applied to a second batch
(the reference's Siamese mode, used when it matches real and synthetic batches); training views use
per-image parameters, as the reference's evaluation of a synthetic set does. Differentiable in x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class DSAParams:
    """The published constants (`ParamDiffAug`)."""

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0  # degrees
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


DSA_PARAMS = DSAParams()


def _u(gen: torch.Generator, n: int) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=gen.device, dtype=torch.float64)


def _ints(gen: torch.Generator, lo: int, hi_exclusive: int, n: int) -> torch.Tensor:
    return torch.randint(lo, hi_exclusive, (n,), generator=gen, device=gen.device)


def draw(
    n: int,
    height: int,
    width: int,
    gen: torch.Generator,
    siamese: bool = False,
    op: str | None = None,
    p: DSAParams = DSA_PARAMS,
) -> dict:
    """The parameters of one DSA call for a batch of n images: the operation (drawn uniformly from OPS unless
    given) and its per-image values (one value repeated n times when siamese)."""
    if op is None:
        op = OPS[int(torch.randint(0, len(OPS), (1,), generator=gen, device=gen.device))]
    if op not in OPS:
        raise ValueError(f"unknown DSA operation {op!r}; one of {OPS}")
    m = 1 if siamese else n
    out: dict = {"op": op}
    if op == "color":
        out["brightness"], out["saturation"], out["contrast"] = _u(gen, m), _u(gen, m), _u(gen, m)
    elif op == "crop":
        sh, sw = int(height * p.ratio_crop_pad + 0.5), int(width * p.ratio_crop_pad + 0.5)
        out["dy"], out["dx"] = _ints(gen, -sh, sh + 1, m), _ints(gen, -sw, sw + 1, m)
    elif op == "cutout":
        ch, cw = int(height * p.ratio_cutout + 0.5), int(width * p.ratio_cutout + 0.5)
        out["cy"] = _ints(gen, 0, height + (1 - ch % 2), m)
        out["cx"] = _ints(gen, 0, width + (1 - cw % 2), m)
    elif op == "flip":
        out["flip"] = _u(gen, m) < p.prob_flip
    elif op == "scale":
        r = p.ratio_scale
        out["sx"], out["sy"] = _u(gen, m) * (r - 1 / r) + 1 / r, _u(gen, m) * (r - 1 / r) + 1 / r
    else:
        out["angle"] = (_u(gen, m) - 0.5) * 2 * p.ratio_rotate / 180 * math.pi
    if siamese:
        out = {k: (v.expand(n) if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
    return out


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _affine(x: torch.Tensor, a11, a12, a21, a22) -> torch.Tensor:
    """Resample x at theta·(output coordinates), theta = [[a11, a12, 0], [a21, a22, 0]] per image (the reference's
    affine_grid + grid_sample: normalised coordinates, align_corners False, bilinear, zero padding)."""
    theta = torch.zeros(len(x), 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = (
        t.to(device=x.device, dtype=x.dtype) for t in (a11, a12, a21, a22)
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def apply(x: torch.Tensor, d: dict, p: DSAParams = DSA_PARAMS) -> torch.Tensor:
    """Apply drawn parameters `d` (from `draw`) to the batch x (n, C, H, W); the draw's n must be len(x)."""
    n, _, h, w = x.shape
    op = d["op"]
    if op == "color":
        x = x + (_col(d["brightness"], x) - 0.5) * p.brightness
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (_col(d["saturation"], x) * p.saturation) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * (_col(d["contrast"], x) + p.contrast) + mean
    if op == "crop":
        rows = torch.arange(h, device=x.device)[None, :] + d["dy"].to(x.device)[:, None]  # source row of each row
        cols = torch.arange(w, device=x.device)[None, :] + d["dx"].to(x.device)[:, None]
        inside = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
        b = torch.arange(n, device=x.device)[:, None, None, None]
        c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        moved = x[b, c, rows.clamp(0, h - 1)[:, None, :, None], cols.clamp(0, w - 1)[:, None, None, :]]
        return torch.where(inside, moved, torch.zeros((), dtype=x.dtype, device=x.device))
    if op == "cutout":
        ch, cw = int(h * p.ratio_cutout + 0.5), int(w * p.ratio_cutout + 0.5)
        top, left = d["cy"].to(x.device) - ch // 2, d["cx"].to(x.device) - cw // 2
        r, c = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        in_r = (r[None] >= top[:, None]) & (r[None] < top[:, None] + ch)
        in_c = (c[None] >= left[:, None]) & (c[None] < left[:, None] + cw)
        keep = ~(in_r[:, :, None] & in_c[:, None, :])
        return x * keep[:, None].to(x.dtype)
    if op == "flip":
        return torch.where(d["flip"].to(x.device).view(-1, 1, 1, 1), x.flip(3), x)
    zero = torch.zeros(n, dtype=torch.float64)
    if op == "scale":
        return _affine(x, d["sx"], zero, zero, d["sy"])
    a = d["angle"].to(torch.float64)
    return _affine(x, torch.cos(a), -torch.sin(a), torch.sin(a), torch.cos(a))


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The training views of a batch: one operation drawn for the batch, its parameters drawn per image."""
    return apply(x, draw(len(x), x.shape[2], x.shape[3], gen))
