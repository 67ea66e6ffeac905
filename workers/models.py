"""Architectures (declared in workers.catalogue): builder(num_classes, image_shape, **options) -> nn.Module."""

from __future__ import annotations

import torch
from torch import nn

from workers.catalogue import ARCHS
from workers.seeding import derive_seed


def pick_device(requested: str | None = None) -> str:
    """The device a stage or trial runs on: the one asked for, else the GPU Ray assigned, else the CPU."""
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "instance":  # the DD literature's "instancenorm" = GroupNorm with one group per channel
        return nn.GroupNorm(width, width, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(width)
    return nn.Identity()


def convnet(
    num_classes: int, image_shape: tuple[int, int, int], depth: int = 3, width: int = 64, norm: str = "instance"
) -> nn.Module:
    channels, side, _ = image_shape
    if side >> depth < 1:
        raise ValueError(
            f"convnet depth {depth} halves a {side}px image below 1px; use depth <= {side.bit_length() - 1}"
        )
    layers: list[nn.Module] = []
    c = channels
    for _ in range(depth):
        layers += [nn.Conv2d(c, width, 3, padding=1), _norm(norm, width), nn.ReLU(inplace=True), nn.AvgPool2d(2)]
        c = width
    feat = width * (side >> depth) ** 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(feat, num_classes))


def resnet18(num_classes: int, image_shape: tuple[int, int, int], small_input_stem: str = "auto") -> nn.Module:
    from torchvision.models import resnet18 as tv_resnet18

    channels, side, _ = image_shape
    model = tv_resnet18(weights=None, num_classes=num_classes)
    small = small_input_stem == "yes" or (small_input_stem == "auto" and side < 64)
    if small:  # the CIFAR-style stem: without it an 8-32px image shrinks to nothing
        model.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif channels != 3:
        model.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
    return model


def mlp(num_classes: int, image_shape: tuple[int, int, int], width: int = 256) -> nn.Module:
    c, h, w = image_shape
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(c * h * w, width),
        nn.ReLU(inplace=True),
        nn.Linear(width, width),
        nn.ReLU(inplace=True),
        nn.Linear(width, num_classes),
    )


def build(name: str, options: dict, num_classes: int, image_shape: tuple[int, int, int], seed: int) -> nn.Module:
    """Build with weights drawn from a generator seeded by (seed, "init"), leaving global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        return ARCHS[name].load()(num_classes, image_shape, **options)
