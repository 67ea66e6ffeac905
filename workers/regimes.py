"""Label regimes (docs/methods.md §1): the same images, different supervision. A regime owns views + loss.

- `hl`: one-hot cross-entropy; no teacher.
- `sl`: ONE soft label per image, softmax(teacher(x)/T) on the un-augmented image, computed once
  before training and reused for every augmented view in every epoch.
- `sl_kd`: a fresh teacher label for every augmented view: per (epoch, sample) a RandomResizedCrop
  + flip view, CutMix with a partner sample, target softmax(teacher(mixed view)/T). Back-ends:
  `online` (teacher forward on every batch) and `stored` (FKD-style: every (epoch, sample) label
  precomputed as fp16 logits, optionally top-k, in the `kd_labels` artifact on disk, a file per
  epoch: workers.kd_labels). Every view parameter is a counter-based draw of (seed, epoch, sample
  id), so a view does not depend on the batch it lands in, the batch size or the worker count; both
  back-ends see identical views and targets up to fp16.

Loss convention (docs/methods.md §1.4): kl_div(log_softmax(s/T), softmax(t/T), "batchmean"), times T^2
only when `t2_scale` is set. Default off, as SRe2L/RDED/DD-Ranking: with Adam/AdamW (the soft-label
recipes) a constant loss scale changes nothing; with SGD it divides the effective LR by T^2, so the
spec warns about SGD + soft labels + t2_scale=false.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers import dsa
from workers.accel import autocast, channels_last, resolve_precision, use_channels_last
from workers.config import AUGMENTATIONS, TrainConfig
from workers.seeding import counter_uniform


# ------------------------------------------------------------------ augmentation shared by hl and sl
def center_crop(x: torch.Tensor, side: int) -> torch.Tensor:
    """The centre side x side crop of (B, C, H, W) images (torchvision's CenterCrop offsets); unchanged when
    they already have that side. The un-augmented view of an image cached larger than the model's input."""
    h, w = x.shape[-2:]
    if (h, w) == (side, side):
        return x
    if side > h or side > w:
        raise ValueError(f"cannot centre-crop {h}x{w} images to {side}x{side}; the cache must be at least image_size")
    top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
    return x[..., top : top + side, left : left + side]


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to side/8 px per image, zero padding."""
    b, c, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=gen.device).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=gen.device).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=gen, device=gen.device).to(x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _shift_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The shift, then a horizontal flip of each image with probability 1/2."""
    return _flip(_shift(x, gen), gen)


RRC_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults
RRC_RATIO = (3 / 4, 4 / 3)


def resized_crops(x: torch.Tensor, w, h, cx, cy, flip, side: int) -> torch.Tensor:
    """Boxes (width w, height h, centre cx, cy as fractions of the image; flip -1/+1) of the images x, resampled
    bilinearly to side x side (reflection padding at the border)."""
    b = len(x)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = 2 * cx - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * cy - 1
    grid = F.affine_grid(theta, [b, x.shape[1], side, side], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _rrc_flip(x: torch.Tensor, gen: torch.Generator, side: int) -> torch.Tensor:
    """RandomResizedCrop(side, scale (0.08, 1), ratio (3/4, 4/3)) + horizontal flip, cut on the device from the
    stored image: area and log-ratio uniform, the box clamped inside the image (as the SL+KD views), one draw
    per image from `gen`."""
    u = torch.rand(5, len(x), generator=gen, device=gen.device, dtype=torch.float64).to(x.device)
    area = RRC_SCALE[0] + (RRC_SCALE[1] - RRC_SCALE[0]) * u[0]
    log_r = math.log(RRC_RATIO[0]) + (math.log(RRC_RATIO[1]) - math.log(RRC_RATIO[0])) * u[1]
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx, cy = w / 2 + (1 - w) * u[2], h / 2 + (1 - h) * u[3]
    flip = torch.where(u[4] < 0.5, -1.0, 1.0).to(torch.float64)
    return resized_crops(x, *(v.float() for v in (w, h, cx, cy, flip)), side)


# name -> view of a batch (x, generator, output side); the same-size views are centre-cropped to the side after.
_AUGMENT: dict[str, Callable[[torch.Tensor, torch.Generator, int], torch.Tensor]] = {
    "none": lambda x, gen, side: center_crop(x, side),
    "crop": lambda x, gen, side: center_crop(_shift(x, gen), side),
    "crop_flip": lambda x, gen, side: center_crop(_shift_flip(x, gen), side),
    "rrc_flip": _rrc_flip,
    "dsa": lambda x, gen, side: center_crop(
        dsa.augment(x, gen), side
    ),  # DSA, one operation per batch (docs/methods.md §2.3)
}
assert set(_AUGMENT) == set(AUGMENTATIONS), "workers.config.AUGMENTATIONS and the views here must agree"


def augment(x: torch.Tensor, kind: str, gen: torch.Generator, side: int | None = None) -> torch.Tensor:
    """The hl/sl training views of a batch (train.augment): none, crop (shift), crop_flip, rrc_flip, dsa; `side`
    is the model's input side (default: the images' own)."""
    return _AUGMENT[kind](x, gen, side or int(x.shape[-1]))


def kl_loss(student_logits: torch.Tensor, target_probs: torch.Tensor, T: float, t2_scale: bool) -> torch.Tensor:
    loss = F.kl_div(F.log_softmax(student_logits / T, dim=1), target_probs, reduction="batchmean")
    return loss * (T * T) if t2_scale else loss


# ------------------------------------------------------------------ the regimes
class Regime(ABC):
    """loss(student, data, pos, epoch, aug_gen) -> (loss, student logits): `pos` are positions in the
    training subset; the logits are the student's on this step's views (workers.train.TrainHooks)."""

    name = "base"
    soft_label_bytes = 0

    def __init__(self, cfg: TrainConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, seed

    def prepare(self, data, num_epochs: int) -> None:  # noqa: B027 (optional: hl prepares nothing)
        """Work done once before training (soft labels, stored KD labels)."""

    @abstractmethod
    def loss(
        self, student: nn.Module, data, pos: torch.Tensor, epoch: int, aug_gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss of the batch at positions `pos`, and the student's logits on its views."""


class HardLabels(Regime):
    name = "hl"

    def loss(self, student, data, pos, epoch, aug_gen):
        logits = student(augment(data.float_batch(pos), self.cfg.augment, aug_gen, data.input_side))
        return F.cross_entropy(logits, data.labels(pos)), logits


class TeacherRegime(Regime):
    def __init__(self, cfg: TrainConfig, seed: int, teacher: nn.Module) -> None:
        super().__init__(cfg, seed)
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        device = next(self.teacher.parameters()).device
        if use_channels_last(cfg.channels_last, device):
            channels_last(self.teacher)

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """The frozen teacher's logits under torch.inference_mode (and bf16 autocast when the trial trains in
        bf16), returned as a float32 tensor autograd may use as a target."""
        with torch.inference_mode(), autocast(resolve_precision(self.cfg.precision, x.device), x.device):
            out = torch.cat([self.teacher(x[i : i + chunk]) for i in range(0, len(x), chunk)])
        return out.float().clone()  # outside inference mode: a normal tensor


class FixedSoftLabels(TeacherRegime):
    """`sl`: q_i = softmax(teacher(x_i)/T) once per image on the clean image; never recomputed."""

    name = "sl"

    def prepare(self, data, num_epochs: int, chunk: int = 1024) -> None:
        n = len(data.y)
        logits = [
            self.teacher_logits(data.clean_batch(data.positions(s, min(n, s + chunk)))) for s in range(0, n, chunk)
        ]
        self.q = F.softmax(torch.cat(logits) / self.cfg.temperature, dim=1)
        self.soft_label_bytes = self.q.numel() * 4

    def loss(self, student, data, pos, epoch, aug_gen):
        logits = student(augment(data.float_batch(pos), self.cfg.augment, aug_gen, data.input_side))
        return kl_loss(logits, self.q[pos.to(self.q.device)], self.cfg.temperature, self.cfg.t2_scale), logits


# ------------------------------------------------------------------ SL+KD views
class KDViews:
    """Per (seed, epoch) and sample id: an RRC box + flip, a CutMix partner, lambda and box.

    Every parameter of a sample's view is a counter-based draw of (seed, epoch, sample id, parameter)
    (`workers.seeding.counter_uniform`): it does not depend on the batch, the batch size, the worker
    count, the order of visits, nor on which other images are in the subset, except for the CutMix
    partner, which is one of them (its position is drawn per id among the n - 1 others).
    `ids` are the samples' indices in the train split (default: their positions).
    """

    STREAMS = ("area", "ratio", "cx", "cy", "flip", "partner", "lam", "by", "bx")

    def __init__(self, n: int, side: int, seed: int, min_scale: float, device, ids=None) -> None:
        self.n, self.side, self.seed, self.min_scale, self.device = n, side, seed, min_scale, device
        self.ids = np.arange(n) if ids is None else np.asarray(torch.as_tensor(ids).cpu(), dtype=np.int64)
        if len(self.ids) != n:
            raise ValueError(f"KDViews: {len(self.ids)} ids for {n} images")
        self._epoch, self._params = None, None

    def params(self, epoch: int) -> dict[str, torch.Tensor]:
        if self._epoch != epoch:
            # float64 until the end: a float32 cast rounds u in [1 - 2^-25, 1) up to 1.0 (a box off the edge)
            u = {
                k: torch.as_tensor(counter_uniform(self.seed, "kd_views", epoch, self.ids, i), dtype=torch.float64)
                for i, k in enumerate(self.STREAMS)
            }
            n = self.n
            area = self.min_scale + (1 - self.min_scale) * u["area"]
            log_r = (u["ratio"] * 2 - 1) * math.log(4 / 3)
            w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
            h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
            cx = w / 2 + (1 - w) * u["cx"]
            cy = h / 2 + (1 - h) * u["cy"]
            flip = torch.where(u["flip"] < 0.5, -1.0, 1.0)
            # The partner: one of the n - 1 other positions, never the sample itself (n = 1: itself).
            me = torch.arange(n)
            other = (u["partner"] * max(n - 1, 1)).floor().long().clamp(max=max(n - 2, 0))
            partner = torch.where(other >= me, other + 1, other) if n > 1 else me
            lam = u["lam"]  # Beta(1, 1)
            cut = torch.sqrt(1 - lam)
            bh = (cut * self.side).floor().long()
            by = (u["by"] * (self.side - bh + 1)).floor().long()
            bx = (u["bx"] * (self.side - bh + 1)).floor().long()
            p = dict(
                w=w.float(),
                h=h.float(),
                cx=cx.float(),
                cy=cy.float(),
                flip=flip.float(),
                partner=partner,
                bh=bh,
                by=by,
                bx=bx,
            )
            self._params = {k: v.to(self.device) for k, v in p.items()}
            self._epoch = epoch
        return self._params

    def crops(self, x: torch.Tensor, pos: torch.Tensor, p: dict) -> torch.Tensor:
        """RandomResizedCrop + flip of the images x (already float, any stored side) with the boxes of positions
        pos, resampled to the views' side."""
        return resized_crops(x, p["w"][pos], p["h"][pos], p["cx"][pos], p["cy"][pos], p["flip"][pos], self.side)

    def mixed(self, data, pos: torch.Tensor, epoch: int) -> torch.Tensor:
        p = self.params(epoch)
        mine = self.crops(data.float_batch(pos), pos, p)
        other_pos = p["partner"][pos]
        other = self.crops(data.float_batch(other_pos), other_pos, p)
        rows = torch.arange(self.side, device=mine.device)
        by, bx, bh = p["by"][pos], p["bx"][pos], p["bh"][pos]
        in_y = (rows[None, :] >= by[:, None]) & (rows[None, :] < (by + bh)[:, None])
        in_x = (rows[None, :] >= bx[:, None]) & (rows[None, :] < (bx + bh)[:, None])
        mask = (in_y[:, :, None] & in_x[:, None, :])[:, None, :, :]
        return torch.where(mask, other, mine)


@torch.no_grad()
def view_logits(teacher: nn.Module, views: KDViews, data, epoch: int, topk: int = 0, chunk: int = 1024):
    """The stored SL+KD labels of one epoch, `chunk` subset positions at a time: (fp16 logits,) of every mixed
    view, or (fp16 values, int16 class ids) of its `topk` largest logits when 0 < topk < C. On the CPU."""
    n = len(data.y)
    for s in range(0, n, chunk):
        x = views.mixed(data, torch.arange(s, min(n, s + chunk), device=data.device), epoch)
        logits = torch.cat([teacher(x[i : i + 1024]) for i in range(0, len(x), 1024)]).half().cpu()
        if topk and topk < logits.shape[1]:
            top = logits.topk(topk, dim=1)
            yield (top.values, top.indices.to(torch.int16))
        else:
            yield (logits,)


def reconstruct_topk(values: torch.Tensor, idx: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Full logits from the k stored ones of each view (docs/methods.md §9): every missing class gets the smallest
    stored logit of its view. (The target is then softmax(z/T) as for full logits.)"""
    full = values.min(dim=1, keepdim=True).values.expand(-1, num_classes).clone()
    return full.scatter(1, idx, values)


def topk_uniform(logits: torch.Tensor, k: int, T: float) -> torch.Tensor:
    """The alternative reconstruction compared in benchmarks/soft_labels.py: the exact softmax(z/T) probabilities of
    the k largest logits, and the rest of the probability spread evenly over the other classes (storing it takes
    the k values, their ids and the remaining mass per view)."""
    p = F.softmax(logits / T, dim=1)
    top = p.topk(k, dim=1)
    rest = (1 - top.values.sum(dim=1, keepdim=True)).clamp_min(0) / max(p.shape[1] - k, 1)
    return rest.expand_as(p).clone().scatter(1, top.indices, top.values)


class FreshSoftLabels(TeacherRegime):
    """`sl_kd`: a teacher label for every augmented, mixed view; `online` or `stored` back-end.

    `stored` replays the labels of the `kd_labels` artifact (workers.kd_labels), one epoch at a time: `labels`
    is its reader (`epoch(e)` -> the stored tensors of epoch e, `bytes`)."""

    name = "sl_kd"

    def __init__(self, cfg: TrainConfig, seed: int, teacher: nn.Module, labels=None) -> None:
        super().__init__(cfg, seed, teacher)
        self.labels = labels

    def prepare(self, data, num_epochs: int) -> None:
        self.views = KDViews(len(data.y), data.input_side, self.seed, self.cfg.kd_min_scale, data.device, ids=data.ids)
        if self.cfg.kd_backend == "stored":
            if self.labels is None:
                raise ValueError("kd_backend stored replays the kd_labels artifact; pass its reader as labels=")
            if self.labels.epochs < num_epochs or self.labels.n != len(data.y):
                raise ValueError(
                    f"the stored SL+KD labels cover {self.labels.epochs} epochs of {self.labels.n} images; this "
                    f"training needs {num_epochs} epochs of {len(data.y)}"
                )
            self.soft_label_bytes = self.labels.bytes

    def _stored_logits(self, pos: torch.Tensor, epoch: int, num_classes: int) -> torch.Tensor:
        """The stored logits of positions pos (top-k: missing classes at the smallest stored logit)."""
        entry = self.labels.epoch(epoch)
        cpu_pos = pos.cpu()
        if len(entry) == 1:
            return entry[0][cpu_pos].float().to(pos.device)
        values, idx = entry[0][cpu_pos].float().to(pos.device), entry[1][cpu_pos].long().to(pos.device)
        return reconstruct_topk(values, idx, num_classes)

    def _stored_targets(self, pos: torch.Tensor, epoch: int, num_classes: int) -> torch.Tensor:
        return F.softmax(self._stored_logits(pos, epoch, num_classes) / self.cfg.temperature, dim=1)

    def loss(self, student, data, pos, epoch, aug_gen):
        x = self.views.mixed(data, pos, epoch)
        logits = student(x)
        if self.cfg.kd_backend == "stored":
            target = self._stored_targets(pos, epoch, logits.shape[1])
        else:
            target = F.softmax(self.teacher_logits(x) / self.cfg.temperature, dim=1)
        return kl_loss(logits, target, self.cfg.temperature, self.cfg.t2_scale), logits


def hl(cfg: TrainConfig, seed: int, teacher: nn.Module | None = None) -> Regime:
    return HardLabels(cfg, seed)


def sl(cfg: TrainConfig, seed: int, teacher: nn.Module | None = None) -> Regime:
    return FixedSoftLabels(cfg, seed, teacher)


def sl_kd(cfg: TrainConfig, seed: int, teacher: nn.Module | None = None, labels=None) -> Regime:
    return FreshSoftLabels(cfg, seed, teacher, labels)
