"""The CUDA fast path: bf16 autocast, channels_last, an opt-in torch.compile (train.precision,
train.channels_last, train.compile). On a CPU `auto` means fp32 and NCHW, so CPU results are
exactly those of the plain loop; on a GPU every row records the precision it ran with.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def _cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def resolve_precision(precision: str, device) -> str:
    """ "bf16" or "fp32": auto is bf16 on a GPU that supports it (Ampere and later), fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if _cuda(device) and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and not _cuda(device):
        log.warning("precision bf16 asked for on %s: bf16 autocast runs on CUDA only; using fp32", device)
        return "fp32"
    return precision


def autocast(precision: str, device) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved precision (bf16 needs no loss scaling)."""
    if precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_channels_last(setting: str, device) -> bool:
    return setting == "yes" or (setting == "auto" and _cuda(device))


def channels_last(model: nn.Module) -> nn.Module:
    """Weights and inputs in NHWC (channels_last): convolutions on tensor cores without layout copies. The
    input is converted by a forward pre-hook, so the state dict and the callers stay as they are."""
    model.to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(
        lambda m, args: (
            (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
            if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4
            else None
        )
    )
    return model


def prepare(model: nn.Module, device, setting: str, compile_: bool) -> nn.Module:
    """The module to call for the forward pass: `model` itself (channels_last when asked), or a compiled
    wrapper of it (its parameters are `model`'s; save and load `model`'s state dict)."""
    if _cuda(device):
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels once
    if use_channels_last(setting, device):
        channels_last(model)
    return torch.compile(model) if compile_ else model
