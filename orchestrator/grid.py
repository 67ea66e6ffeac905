"""SweepSpec -> [TrialConfig] (Cartesian product minus `exclude`), and the shared stages they need.

A grid point is one combination of the axes: the four required ones (selector, regime, IPC, seed) and
the optional ones the sweep lists (budget, teacher, student). Points that compute the same thing are
one trial: a trial that never reads the teacher (hard labels, a selector without teacher inputs) is
the same trial under every teacher of a `grid.teacher` axis, so `expand` lists it once and `points`
maps each of those points to it (a report shows its row under every teacher).
"""

from __future__ import annotations

import itertools
from typing import Any

from orchestrator.spec import SweepSpec, excluded
from workers.config import ArtifactKey, TrialConfig
from workers.graph import needs_teacher, reads_dynamics, requires, stage_deps
from workers.naming import arch_label, budget_tag


def _axis_values(spec: SweepSpec) -> dict[str, tuple]:
    """The axes in `points` order (slowest first) with their values; budget, teacher and student hold their
    one top-level value when the grid does not list them."""
    return {
        "seed": spec.seeds,
        "ipc": spec.ipcs,
        "student": spec.students or (spec.student,),
        "teacher": spec.teachers or ((None, spec.teacher),),
        "budget": spec.budgets or (spec.budget,),
        "selector": spec.selectors,
        "regime": spec.regimes,
    }


def _combinations(spec: SweepSpec):
    """(point, teacher config) for every grid point not excluded; `point["teacher"]` is the teacher's name."""
    axes = _axis_values(spec)
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values))
        tname, tcfg = point["teacher"]
        point["teacher"] = tname
        if not spec.exclude or not excluded(point, spec.exclude):
            yield point, tcfg


def points(spec: SweepSpec) -> list[tuple[dict[str, Any], TrialConfig]]:
    """Every grid point {axis: value} with its trial, in a deterministic order: seed slowest, then IPC,
    student, teacher, budget, selector, regime (the regimes of a subset adjacent). `budget` is a
    BudgetConfig, `teacher` a name (None without a teacher axis), `student` a Named."""
    out = []
    for point, tcfg in _combinations(spec):
        selector, regime, budget, student = point["selector"], point["regime"], point["budget"], point["student"]
        # The teacher is part of a trial (and of its id) only when the trial uses it.
        uses_teacher = needs_teacher(selector, regime)
        # Score runs train with hard labels on full data: their recipe never depends on the trial's regime,
        # so the subset (and its key) is the same for hl, sl and sl_kd.
        scoring = spec.train if reads_dynamics(selector) else None
        tags = []
        if "budget" in spec.extra_axes:
            tags.append(("budget", budget_tag(budget.unit, budget.value)))
        if "teacher" in spec.extra_axes and uses_teacher:
            tags.append(("teacher", point["teacher"]))
        if "student" in spec.extra_axes:
            tags.append(("student", arch_label(student)))
        trial = TrialConfig(
            dataset=spec.dataset,
            student=student,
            selector=selector,
            regime=regime,
            ipc=point["ipc"],
            seed=point["seed"],
            budget=budget,
            train=spec.recipes[regime],
            teacher=tcfg if uses_teacher else None,
            scoring=scoring,
            tags=tuple(sorted(tags)),
        )
        out.append((point, trial))
    return out


def expand(spec: SweepSpec) -> list[TrialConfig]:
    """The sweep's trials, each once, in the order of `points` (see the module doc)."""
    return unique(points(spec))


def unique(pts: list[tuple[dict[str, Any], TrialConfig]]) -> list[TrialConfig]:
    """The trials of `points`, each once, in order."""
    seen: dict[str, TrialConfig] = {}
    for _, t in pts:
        seen.setdefault(t.trial_id, t)
    return list(seen.values())


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


def grid_size(spec: SweepSpec, trials: int) -> str:
    """'36 trials = 3 selectors x 2 regimes x 2 IPCs x 3 seeds x 2 teachers, minus 4 excluded, 6 shared ...'"""
    sizes = [
        (len(spec.selectors), "selectors"),
        (len(spec.regimes), "regimes"),
        (len(spec.ipcs), "IPCs"),
        (len(spec.seeds), "seeds"),
    ]
    sizes += [(len(getattr(spec, f"{a}s")), f"{a}s") for a in spec.extra_axes]
    product = 1
    for n, _ in sizes:
        product *= n
    kept = sum(1 for _ in _combinations(spec)) if spec.exclude else product
    text = f"{trials} trials = " + " x ".join(f"{n} {what}" for n, what in sizes)
    if kept < product:
        text += f" minus {product - kept} excluded"
    if trials < kept:
        text += f", {kept - trials} grid points sharing a trial (trials that never read the teacher)"
    return text
