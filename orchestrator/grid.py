"""SweepSpec -> [TrialConfig] (Cartesian product minus `exclude`), and the shared stages they need."""

from __future__ import annotations

import itertools

from orchestrator.spec import SweepSpec, excluded
from workers.config import ArtifactKey, TrialConfig
from workers.graph import needs_teacher, reads_dynamics, requires, stage_deps


def expand(spec: SweepSpec) -> list[TrialConfig]:
    """Trials in a deterministic order: seed slowest, then IPC, selector, regime (regimes of a subset adjacent)."""
    trials = []
    for seed, ipc, selector, regime in itertools.product(spec.seeds, spec.ipcs, spec.selectors, spec.regimes):
        if excluded({"selector": selector, "regime": regime, "ipc": ipc, "seed": seed}, spec.exclude):
            continue
        # The teacher is part of a trial (and of its id) only when the trial uses it.
        teacher = spec.teacher if needs_teacher(selector, regime) else None
        # Score runs train with hard labels on full data: their recipe never depends on the trial's regime,
        # so the subset (and its key) is the same for hl, sl and sl_kd.
        scoring = spec.train if reads_dynamics(selector) else None
        trials.append(
            TrialConfig(
                dataset=spec.dataset,
                student=spec.student,
                selector=selector,
                regime=regime,
                ipc=ipc,
                seed=seed,
                budget=spec.budget,
                train=spec.recipes[regime],
                teacher=teacher,
                scoring=scoring,
            )
        )
    return trials


def stages_for(trials: list[TrialConfig]) -> list[ArtifactKey]:
    """Every artifact the trials need, de-duplicated, dependencies before dependants."""
    ordered: dict[ArtifactKey, None] = {}

    def visit(key: ArtifactKey) -> None:
        if key in ordered:
            return
        for dep in stage_deps(key):
            visit(dep)
        ordered[key] = None

    for t in trials:
        for key in requires(t):
            visit(key)
    return list(ordered)
