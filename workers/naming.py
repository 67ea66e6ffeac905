"""Labels for people: a selector's canonical label and a trial's name. No torch.

The canonical label is the selector's name plus every option whose value differs from its declared
default, sorted: `el2n_window(offset=0.8)`, `rded(mipc=40)`. Two rows with the same label ran the
same method; `report`, `status` and the `selector_label` column of every row use it.
"""

from __future__ import annotations

from workers.catalogue import ARCHS, SELECTORS
from workers.config import Named, TrialConfig

# The optional grid axes a trial name spells out, in this order, when the sweep lists them (TrialConfig.tags).
TAG_AXES = ("budget", "teacher", "student")


def changed_options(selector: Named, registry=SELECTORS) -> list[tuple[str, object]]:
    """The options of `selector` (an entry of `registry`) that differ from the catalogue's defaults (all of
    them if it is unknown)."""
    entry = registry[selector.name] if selector.name in registry else None
    return [
        (k, v) for k, v in selector.options if entry is None or k not in entry.options or entry.options[k].default != v
    ]


def arch_label(arch: Named) -> str:
    """An architecture as people name it: `resnet18`, `convnet(depth=4,width=128)` (non-default options)."""
    changed = changed_options(arch, ARCHS)
    return arch.name if not changed else f"{arch.name}({','.join(f'{k}={v}' for k, v in changed)})"


def budget_tag(unit: str, value: float) -> str:
    """`full_epochs20`, `epochs300`, `steps1000`: a budget of the `budget` axis in a trial's name."""
    return f"{unit}{float(value):g}"


def selector_label(selector: Named) -> str:
    changed = changed_options(selector)
    if not changed:
        return selector.name
    return f"{selector.name}({','.join(f'{k}={v}' for k, v in changed)})"


def trial_name(trial: TrialConfig) -> str:
    """`el2n_window-offset0.8-hl-ipc10-s0`: non-default selector options spelled out (the id covers all); then
    the optional axes the sweep lists (`-full_epochs20-teacher_weak-student_resnet18`)."""
    sel = trial.selector.name
    changed = changed_options(trial.selector)
    if changed:
        sel += "-" + "-".join(f"{k}{v}" for k, v in changed)
    tags = dict(trial.tags)
    extra = "".join(
        f"-{tags[axis]}" if axis == "budget" else f"-{axis}_{tags[axis]}" for axis in TAG_AXES if axis in tags
    )
    return f"{sel}-{trial.regime}-ipc{trial.ipc}-s{trial.seed}{extra}"
