"""Labels for people: a selector's canonical label and a trial's name. No torch.

The canonical label is the selector's name plus every option whose value differs from its declared
default, sorted: `el2n_window(offset=0.8)`, `rded(mipc=40)`. Two rows with the same label ran the
same method; `report`, `status` and the `selector_label` column of every row use it.
"""

from __future__ import annotations

from workers.catalogue import SELECTORS
from workers.config import Named, TrialConfig


def changed_options(selector: Named) -> list[tuple[str, object]]:
    """The options of `selector` that differ from the catalogue's defaults (all of them if it is unknown)."""
    entry = SELECTORS[selector.name] if selector.name in SELECTORS else None
    return [
        (k, v) for k, v in selector.options if entry is None or k not in entry.options or entry.options[k].default != v
    ]


def selector_label(selector: Named) -> str:
    changed = changed_options(selector)
    if not changed:
        return selector.name
    return f"{selector.name}({','.join(f'{k}={v}' for k, v in changed)})"


def trial_name(trial: TrialConfig) -> str:
    """`el2n_window-offset0.8-hl-ipc10-s0`: non-default selector options spelled out (the id covers all)."""
    sel = trial.selector.name
    changed = changed_options(trial.selector)
    if changed:
        sel += "-" + "-".join(f"{k}{v}" for k, v in changed)
    return f"{sel}-{trial.regime}-ipc{trial.ipc}-s{trial.seed}"
