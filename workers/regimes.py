"""Label regimes (docs/methods.md §1): the same images, different supervision. A regime owns views + loss.

- `hl`: one-hot cross-entropy; no teacher.
- `sl`: ONE soft label per image, softmax(teacher(x)/T) on the un-augmented image, computed once
  before training and reused for every augmented view in every epoch.
- `sl_kd`: a fresh teacher label for every augmented view: per (epoch, sample) a RandomResizedCrop
  + flip view, CutMix with a partner sample, target softmax(teacher(mixed view)/T). Back-ends:
  `online` (teacher forward on every batch) and `stored` (FKD-style: every (epoch, sample) label
  precomputed as fp16 logits, optionally top-k). Every view parameter is a counter-based draw of
  (seed, epoch, sample id), so a view does not depend on the batch it lands in, the batch size or
  the worker count; both back-ends see identical views and targets up to fp16.

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
from workers.config import AUGMENTATIONS, TrainConfig
from workers.seeding import counter_uniform


# ------------------------------------------------------------------ augmentation shared by hl and sl
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


def _shift_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The shift, then a horizontal flip of each image with probability 1/2."""
    out = _shift(x, gen)
    flip = torch.rand(len(x), generator=gen, device=gen.device).to(x.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


_AUGMENT: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "none": lambda x, gen: x,
    "crop": _shift,
    "crop_flip": _shift_flip,
    "dsa": dsa.augment,  # DSA, one operation per batch (docs/methods.md §2.3)
}
assert set(_AUGMENT) == set(AUGMENTATIONS), "workers.config.AUGMENTATIONS and the views here must agree"


def augment(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """The hl/sl training views of a batch (train.augment): none, crop (shift), crop_flip, dsa."""
    return _AUGMENT[kind](x, gen)


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
        logits = student(augment(data.float_batch(pos), self.cfg.augment, aug_gen))
        return F.cross_entropy(logits, data.y[pos]), logits


class TeacherRegime(Regime):
    def __init__(self, cfg: TrainConfig, seed: int, teacher: nn.Module) -> None:
        super().__init__(cfg, seed)
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        return torch.cat([self.teacher(x[i : i + chunk]) for i in range(0, len(x), chunk)])


class FixedSoftLabels(TeacherRegime):
    """`sl`: q_i = softmax(teacher(x_i)/T) once per image on the clean image; never recomputed."""

    name = "sl"

    def prepare(self, data, num_epochs: int) -> None:
        all_pos = torch.arange(len(data.y), device=data.x.device)
        self.q = F.softmax(self.teacher_logits(data.float_batch(all_pos)) / self.cfg.temperature, dim=1)
        self.soft_label_bytes = self.q.numel() * 4

    def loss(self, student, data, pos, epoch, aug_gen):
        logits = student(augment(data.float_batch(pos), self.cfg.augment, aug_gen))
        return kl_loss(logits, self.q[pos], self.cfg.temperature, self.cfg.t2_scale), logits


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
        """RandomResizedCrop + flip of the images x (already float) with the boxes of positions pos."""
        b = len(pos)
        theta = torch.zeros(b, 2, 3, device=x.device)
        theta[:, 0, 0] = p["w"][pos] * p["flip"][pos]
        theta[:, 0, 2] = 2 * p["cx"][pos] - 1
        theta[:, 1, 1] = p["h"][pos]
        theta[:, 1, 2] = 2 * p["cy"][pos] - 1
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

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


class FreshSoftLabels(TeacherRegime):
    """`sl_kd`: a teacher label for every augmented, mixed view; `online` or `stored` back-end."""

    name = "sl_kd"

    def prepare(self, data, num_epochs: int) -> None:
        self.views = KDViews(
            len(data.y), data.x.shape[-1], self.seed, self.cfg.kd_min_scale, data.x.device, ids=data.ids
        )
        self.stored = None
        if self.cfg.kd_backend == "stored":
            self.stored = [self._store_epoch(data, e) for e in range(num_epochs)]
            self.soft_label_bytes = sum(sum(t.numel() * t.element_size() for t in s) for s in self.stored)

    def _store_epoch(self, data, epoch: int, chunk: int = 1024) -> tuple[torch.Tensor, ...]:
        # Views in chunks, labels kept on the CPU: the store can be GBs (docs/methods.md §9), the device is not.
        n = len(data.y)
        logits = torch.cat(
            [
                self.teacher_logits(
                    self.views.mixed(data, torch.arange(s, min(n, s + chunk), device=data.x.device), epoch)
                )
                .half()
                .cpu()
                for s in range(0, n, chunk)
            ]
        )
        k = self.cfg.kd_topk
        if k and k < logits.shape[1]:
            top = logits.topk(k, dim=1)
            return (top.values, top.indices.to(torch.int16))
        return (logits,)

    def _stored_logits(self, pos: torch.Tensor, epoch: int, num_classes: int) -> torch.Tensor:
        entry = self.stored[epoch]
        cpu_pos = pos.cpu()
        if len(entry) == 1:
            return entry[0][cpu_pos].float().to(pos.device)
        values, idx = entry[0][cpu_pos].float().to(pos.device), entry[1][cpu_pos].long().to(pos.device)
        # Missing classes get the smallest stored logit (docs/methods.md §9, reconstruction).
        full = values.min(dim=1, keepdim=True).values.expand(-1, num_classes).clone()
        return full.scatter(1, idx, values)

    def loss(self, student, data, pos, epoch, aug_gen):
        x = self.views.mixed(data, pos, epoch)
        logits = student(x)
        if self.stored is not None:
            t = self._stored_logits(pos, epoch, logits.shape[1])
        else:
            t = self.teacher_logits(x)
        target = F.softmax(t / self.cfg.temperature, dim=1)
        return kl_loss(logits, target, self.cfg.temperature, self.cfg.t2_scale), logits


def hl(cfg: TrainConfig, seed: int, teacher: nn.Module | None = None) -> Regime:
    return HardLabels(cfg, seed)


def sl(cfg: TrainConfig, seed: int, teacher: nn.Module | None = None) -> Regime:
    return FixedSoftLabels(cfg, seed, teacher)


def sl_kd(cfg: TrainConfig, seed: int, teacher: nn.Module | None = None) -> Regime:
    return FreshSoftLabels(cfg, seed, teacher)
