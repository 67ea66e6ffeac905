"""SRe2L recover and its CDA variant (docs/methods.md §5.1-5.2): noise optimised to match a BatchNorm teacher."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers.catalogue import sre2l_crop
from workers.distillers import DistillContext
from workers.seeding import torch_generator

CURRICULA = ("none", "step", "linear", "cosine")
NO_BN_MESSAGE = (
    "sre2l needs a teacher with BatchNorm layers (e.g. teacher: {arch: convnet, norm: batch}); this teacher has none"
)
ADAM_BETAS = (0.5, 0.9)  # docs/methods.md §5.1


@dataclass(frozen=True)
class RecoverOptions:
    """The recover hyper-parameters: the resolved options of `sre2l` or `cda` (workers.catalogue holds their
    defaults and bounds; docs/methods.md §5.1). `curriculum`/`milestone` are CDA's; SRe2L has no curriculum."""

    iterations: int
    lr: float
    r_bn: float
    first_bn_multiplier: float
    batch_classes: int
    crop_min_scale: float
    curriculum: str = "none"  # SRe2L
    milestone: float = 0.0  # unused without a curriculum
    crop: str = "rrc"  # rrc: RandomResizedCrop + flip before the roll; none: the roll only; auto: by image size
    jitter: str = "forward"  # the roll's direction: forward only (0 .. side//7), or both signs


# ---------------------------------------------------------------------------------------------------------------
# BatchNorm statistics loss (docs/methods.md §5.1)


def bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    """Every BatchNorm2d layer of the model, in module (= forward, for Sequential/ResNet) order."""
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


class BNStatHooks:
    """Forward hooks on every BatchNorm2d that record ||mu(x) - running_mean||_2 + ||var(x) - running_var||_2.

    x is the layer's INPUT; statistics over (N, H, W); variance biased (docs/methods.md §5.1). Use as a context manager;
    `terms` holds one scalar tensor per BN layer of the last forward pass, in call order.
    """

    def __init__(self, model: nn.Module):
        self.layers = bn_layers(model)
        if not self.layers:
            raise ValueError(NO_BN_MESSAGE)
        self.terms: list[torch.Tensor] = []
        self._handles: list[Any] = []

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        x = inputs[0]
        mu = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        self.terms.append(
            torch.linalg.vector_norm(mu - module.running_mean, 2)
            + torch.linalg.vector_norm(var - module.running_var, 2)
        )

    def __enter__(self) -> BNStatHooks:
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def weighted(self, first_bn_multiplier: float) -> torch.Tensor:
        """Σ_l m_l · term_l with m_1 = first_bn_multiplier, else 1 (docs/methods.md §5.1)."""
        return sum(t * (first_bn_multiplier if i == 0 else 1.0) for i, t in enumerate(self.terms))  # type: ignore


# ---------------------------------------------------------------------------------------------------------------
# augmentation: one RandomResizedCrop box + flip for the whole batch, then a roll (docs/methods.md §5.1)


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen, dtype=torch.float64))


def _randint(gen: torch.Generator, lo: int, hi_inclusive: int) -> int:
    return int(torch.randint(lo, hi_inclusive + 1, (), generator=gen))


def random_resized_box(
    gen: torch.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop box drawn from gen: area fraction ~ U(scale), log aspect ratio
    ~ U(log ratio), up to 10 tries, then the central crop with the aspect ratio clamped to `ratio` (the
    torchvision algorithm, re-implemented on a torch.Generator so it is seeded and leaves global RNG alone)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * _uniform(gen, scale[0], scale[1])
        aspect = math.exp(_uniform(gen, log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return _randint(gen, 0, height - h), _randint(gen, 0, width - w), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def crop_scale_lower(it: int, iterations: int, curriculum: str, min_scale: float, milestone: float) -> float:
    """RRC scale lower bound at iteration `it` (docs/methods.md §5.2).

    "none" (SRe2L): min_scale throughout. CDA: progress p = it / (milestone · iterations), capped at 1; the bound
    goes from 1.0 (p = 0) to min_scale (p = 1) and then stays: `step` holds 1.0 until p = 1 then drops, `linear`
    is 1 − (1 − min)·p, `cosine` is min + (1 − min)·(1 + cos πp)/2. milestone 0 means p = 1 from the start, i.e.
    SRe2L (the CDA argparse-default pitfall of §5.2, reproduced rather than hidden).
    """
    if curriculum not in CURRICULA:
        raise ValueError(f"curriculum must be one of {CURRICULA}, got {curriculum!r}")
    span = milestone * iterations
    if curriculum == "none" or span <= 0:
        return min_scale
    p = min(max(it / span, 0.0), 1.0)
    if curriculum == "step":
        return 1.0 if p < 1.0 else min_scale
    if curriculum == "linear":
        return 1.0 - (1.0 - min_scale) * p
    return min_scale + (1.0 - min_scale) * 0.5 * (1.0 + math.cos(math.pi * p))


def augment(
    x: torch.Tensor, gen: torch.Generator, min_scale: float, crop: str = "rrc", jitter: str = "both"
) -> torch.Tensor:
    """With crop "rrc": RRC back to full size (scale (min_scale, 1), ratio 3/4–4/3) + horizontal flip, one box and
    one flip for the whole batch (SRe2L's ImageNet recover); with "none" neither (its CIFAR recover). Then a
    circular roll by (dy, dx), each uniform in [0, side//7] (jitter "forward", as SRe2L's and CDA's code) or in
    [−side//7, side//7] ("both", as DeepInversion and SRe2L's Tiny-ImageNet script); 32 px at 224, 4 at 32."""
    _, _, height, width = x.shape
    out = x
    if crop == "rrc":
        top, left, h, w = random_resized_box(gen, height, width, (min_scale, 1.0))
        out = F.interpolate(
            x[:, :, top : top + h, left : left + w], size=(height, width), mode="bilinear", align_corners=False
        )
        if float(torch.rand((), generator=gen)) < 0.5:
            out = out.flip(3)
    elif crop != "none":
        raise ValueError(f"crop must be rrc or none, got {crop!r}")
    lo_y, lo_x = (0, 0) if jitter == "forward" else (-(height // 7), -(width // 7))
    dy = _randint(gen, lo_y, height // 7)
    dx = _randint(gen, lo_x, width // 7)
    return torch.roll(out, shifts=(dy, dx), dims=(2, 3))


# ---------------------------------------------------------------------------------------------------------------
# recover


def valid_range(
    mean: np.ndarray, std: np.ndarray, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel bounds (1, C, 1, 1) of normalised pixels: (0 − mean)/std .. (1 − mean)/std."""
    m = torch.as_tensor(np.asarray(mean, np.float32), device=device).view(1, -1, 1, 1)
    s = torch.as_tensor(np.asarray(std, np.float32), device=device).view(1, -1, 1, 1)
    return (0.0 - m) / s, (1.0 - m) / s


def to_uint8(x: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Normalised images -> uint8: (x·std + mean)·255, clamped to [0, 255], rounded."""
    m = torch.as_tensor(np.asarray(mean, np.float32), device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(np.asarray(std, np.float32), device=x.device).view(1, -1, 1, 1)
    return ((x.detach() * s + m) * 255.0).clamp(0, 255).round().to(torch.uint8).cpu().numpy()


def recover_batch(
    teacher: nn.Module,
    targets: torch.Tensor,
    mean: np.ndarray,
    std: np.ndarray,
    image_shape: tuple[int, int, int],
    options: RecoverOptions,
    init_gen: torch.Generator,
    aug_gen: torch.Generator,
    trace: list[dict[str, float]] | None = None,
) -> torch.Tensor:
    """Optimise one batch of synthetic images (one per target) in normalised space (docs/methods.md §5.1-5.2).

    Returns the last iterate (SRe2L's "store best" is dead code), normalised, inside the valid range (the noise
    init is clamped only by the first step; with iterations = 0 the raw init comes back). `trace`, when given, gets
    one dict per iteration: the loss terms on that iteration's augmented view before the step, and the min/max
    margin to the valid range after the step's clamp.
    """
    device = targets.device
    crop = sre2l_crop(options.crop, image_shape[-1])
    lo, hi = valid_range(mean, std, device)
    x = torch.randn((len(targets), *image_shape), generator=init_gen, dtype=torch.float32).to(device)
    x.requires_grad_(True)
    opt = torch.optim.Adam([x], lr=options.lr, betas=ADAM_BETAS, eps=1e-8)
    hooks = BNStatHooks(teacher)
    for it in range(options.iterations):
        lr_it = 0.5 * options.lr * (1.0 + math.cos(math.pi * it / options.iterations))  # cosine to 0, no warm-up
        for group in opt.param_groups:
            group["lr"] = lr_it
        scale_lo = crop_scale_lower(
            it, options.iterations, options.curriculum, options.crop_min_scale, options.milestone
        )
        view = augment(x, aug_gen, scale_lo, crop, options.jitter)
        with hooks:
            hooks.terms = []
            logits = teacher(view)
        ce = F.cross_entropy(logits, targets)
        bn = hooks.weighted(options.first_bn_multiplier)
        loss = ce + options.r_bn * bn
        # grad w.r.t. the pixels only: the teacher stays untouched even if a caller left requires_grad on.
        (x.grad,) = torch.autograd.grad(loss, [x])
        opt.step()
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, hi), lo))
        if trace is not None:
            with torch.no_grad():
                trace.append(
                    {
                        "it": it,
                        "lr": lr_it,
                        "scale_lo": scale_lo,
                        "ce": float(ce),
                        "bn": float(bn),
                        "below": float((x - lo).min()),
                        "above": float((x - hi).max()),
                    }
                )
    return x.detach()


def _teacher_with_bn(ctx: DistillContext) -> nn.Module:
    if ctx.teacher is None:
        raise ValueError("sre2l/cda need a teacher (declare inputs=('teacher',))")
    teacher = ctx.teacher()
    teacher.eval()
    if not bn_layers(teacher):
        raise ValueError(NO_BN_MESSAGE)
    return teacher


def recover(ctx: DistillContext) -> tuple[np.ndarray, np.ndarray]:
    """SRe2L recover (docs/methods.md §5.1); with CDA's options (a crop-scale curriculum) it is CDA (§5.2)."""
    opts = RecoverOptions(**ctx.opts)
    teacher = _teacher_with_bn(ctx)
    device = next(teacher.parameters()).device
    shape = tuple(int(s) for s in ctx.train_x.shape[1:])
    out = np.empty((ctx.num_classes, ctx.ipc, *shape), dtype=np.uint8)
    # SRe2L: one pass per ipc_id; the classes are split into batches of batch_classes, one image per class.
    for ipc_id in range(ctx.ipc):
        for b, start in enumerate(range(0, ctx.num_classes, opts.batch_classes)):
            classes = torch.arange(start, min(ctx.num_classes, start + opts.batch_classes), device=device)
            # The same purposes for sre2l and cda: for one seed both start from the same noise and draw the same
            # augmentation randomness, so they differ only by the crop-scale curriculum.
            x = recover_batch(
                teacher,
                classes,
                ctx.mean,
                ctx.std,
                shape,
                opts,  # type: ignore[arg-type]
                torch_generator(ctx.seed, "distill.sre2l.init", ipc_id, b),
                torch_generator(ctx.seed, "distill.sre2l.augment", ipc_id, b),
            )
            out[classes.cpu().numpy(), ipc_id] = to_uint8(x, ctx.mean, ctx.std)
    images = out.reshape(ctx.num_classes * ctx.ipc, *shape)
    labels = np.repeat(np.arange(ctx.num_classes, dtype=np.int64), ctx.ipc)
    return images, labels
