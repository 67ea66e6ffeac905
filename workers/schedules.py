"""Learning-rate schedules: name -> multiplier of the base rate at training progress t in [0, 1].

The schedule spans the trial's total steps, so it stretches with the budget (docs/methods.md §2.2).
Declared here, torch-free, so that the sweep validator and the training loop read one table:
adding a schedule is one entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def _cosine(t: float) -> float:
    """Full cosine to 0 (SRe2L)."""
    return 0.5 * (1.0 + math.cos(math.pi * t))


def _half_cosine(t: float) -> float:
    """RDED's 0.5 (1 + cos(pi t / 2)): ends at half the base rate."""
    return 0.5 * (1.0 + math.cos(math.pi * t / 2))


def _step(t: float) -> float:
    """One drop by 10x at the middle (the paper's hard-label recipe: epoch 151 of 300)."""
    return 1.0 if t < 0.5 else 0.1


def _constant(t: float) -> float:
    return 1.0


SCHEDULES: dict[str, Callable[[float], float]] = {
    "cosine": _cosine,
    "half_cosine": _half_cosine,
    "step": _step,
    "constant": _constant,
}


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate after `step` of `total` steps."""
    return SCHEDULES[schedule](step / max(1, total))
