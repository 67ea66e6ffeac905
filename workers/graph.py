"""The artifact graph: which shared stages a trial needs, their content-addressed keys, their dependencies.

No torch. A key hashes exactly the config that produces the artifact (docs/design.md §4), so a
stage is built once and shared by every trial and sweep that needs the same thing: a subset never
depends on the regime, nor on what its selector does not read.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import lru_cache

from workers.catalogue import REGIMES, SELECTORS, STAGES
from workers.config import (
    ArtifactKey,
    DatasetConfig,
    Named,
    TeacherConfig,
    TrainConfig,
    TrialConfig,
    canonical_json,
    canonical_of,
)


def teacher_key(dataset: DatasetConfig, teacher: TeacherConfig) -> ArtifactKey:
    cache = teacher.__dict__.setdefault("_keys", {})  # per teacher object, by data set (checked by identity)
    hit = cache.get(id(dataset))
    if hit is None or hit[0] is not dataset:
        key = ArtifactKey.from_parts("teacher", {"dataset": canonical_of(dataset), "teacher": canonical_of(teacher)})
        hit = cache[id(dataset)] = (dataset, key)
    return hit[1]


def features_key(tkey: ArtifactKey) -> ArtifactKey:
    return ArtifactKey.from_parts("features", {"teacher": tkey.config_json})


def dynamics_key(
    dataset: DatasetConfig, arch: Named, recipe: TrainConfig, epochs: int, run: int, extra: dict | None = None
) -> ArtifactKey:
    """A score run. `extra` holds what only some runs have (docs/design.md §4): `schedule_epochs` (the
    learning-rate schedule spans more epochs than the run lasts), `records` (per-epoch arrays beyond the
    standard ones), `seed` (a run seeded by the trial seed as well as its index); absent from a plain run's
    key, so the keys of plain runs stay as they were."""
    parts = {
        "dataset": canonical_of(dataset),
        "arch": canonical_of(arch),
        "epochs": str(int(epochs)),
        "run": str(int(run)),
        "recipe": _score_recipe(recipe),
    }
    for k, v in (extra or {}).items():
        assert k in _EXTRA and k not in parts, k
        parts[k] = canonical_json(v)
    return ArtifactKey.from_parts("dynamics", parts)


_EXTRA = ("schedule_epochs", "records", "seed")  # the optional fields of a score run's key


@lru_cache(maxsize=1024)
def _score_recipe(r: TrainConfig) -> str:
    """The recipe fields that shape a score run (the rest, e.g. soft-label settings, do not)."""
    return canonical_json(
        {
            "optimizer": r.optimizer,
            "lr": r.lr,
            "weight_decay": r.weight_decay,
            "momentum": r.momentum,
            "batch_size": r.batch_size,
            "augment": r.augment,
            "schedule": r.schedule,
        }
    )


def needs_teacher(selector: Named, regime: str) -> bool:
    inputs = SELECTORS[selector.name].inputs
    return REGIMES[regime].needs_teacher or "features" in inputs or "teacher" in inputs


def reads_dynamics(selector: Named) -> bool:
    return "dynamics" in SELECTORS[selector.name].inputs


def selector_inputs(trial: TrialConfig) -> list[ArtifactKey]:
    """The artifacts a trial's selection reads. They do not depend on its regime, nor on its seed unless
    the selector asks for `score_seed: trial` (score runs are otherwise seeded by run index alone), so one
    computation serves every trial of a (selector, IPC) pair."""
    return list(_selection(trial)["keys"])


def seeds_score_runs(selector: Named) -> bool:
    """Whether the selector's score runs are seeded by the trial seed (`score_seed: trial`, docs/methods.md §4)."""
    return selector.opts.get("score_seed") == "trial"


def subset_key(trial: TrialConfig) -> ArtifactKey:
    """The training images of a trial: never depends on the regime, nor on what the selector does not read."""
    sel = _selection(trial)
    if trial.seed not in sel["subsets"]:
        key = ArtifactKey.from_parts(
            "subset",
            {
                "dataset": canonical_of(trial.dataset),
                "selector": canonical_of(trial.selector),
                "ipc": str(int(trial.ipc)),
                "seed": str(int(trial.seed)),
                "inputs": sel["inputs_json"],
            },
        )
        key.__dict__["_deps"] = list(sel["keys"])  # stage_deps without parsing the key back
        sel["subsets"][trial.seed] = key
    return sel["subsets"][trial.seed]


def _selection(trial: TrialConfig) -> dict:
    """What a (selector, IPC) pair reads, cached on the selector object (frozen configs never change) and
    keyed by the parts it depends on, checked by identity: planning a 100k-trial grid computes it once."""
    recipe = trial.scoring or trial.train
    parts = (trial.dataset, trial.teacher, trial.student, recipe, trial.budget)
    cache = trial.selector.__dict__.setdefault("_selection", {})
    seed = trial.seed if seeds_score_runs(trial.selector) else 0  # the seed the inputs depend on
    key = (trial.ipc, seed, *map(id, parts))
    hit = cache.get(key)
    if hit is None or any(a is not b for a, b in zip(hit["parts"], parts)):
        keys = _inputs(replace(trial, regime="hl", seed=seed, train=recipe))
        inputs_json = ",".join('{"config":' + k.config_json + ',"kind":' + json.dumps(k.kind) + "}" for k in keys)
        hit = cache[key] = {"parts": parts, "keys": keys, "inputs_json": f"[{inputs_json}]", "subsets": {}}
    return hit


def _inputs(trial: TrialConfig) -> tuple[ArtifactKey, ...]:
    entry = SELECTORS[trial.selector.name]
    if trial.teacher is None and {"features", "teacher"} & set(entry.inputs):
        raise ValueError(f"selector {trial.selector.name} needs a teacher; the trial has none")
    keys = []
    if "features" in entry.inputs:
        keys.append(features_key(teacher_key(trial.dataset, trial.teacher)))
    if "teacher" in entry.inputs:
        keys.append(teacher_key(trial.dataset, trial.teacher))
    if "dynamics" in entry.inputs:
        epochs = entry.score_epochs(trial)
        recipe = trial.scoring or trial.train
        extra = dict(entry.score_run(trial)) if entry.score_run else {}
        if seeds_score_runs(trial.selector):
            extra["seed"] = int(trial.seed)
        keys += [
            dynamics_key(trial.dataset, trial.student, recipe, epochs, run, extra)
            for run in range(entry.score_runs(trial))
        ]
    return tuple(keys)


def requires(trial: TrialConfig) -> list[ArtifactKey]:
    """Artifacts a trial needs before it starts (docs/design.md §4)."""
    keys = [subset_key(trial)]
    if trial.teacher is not None:
        keys.append(teacher_key(trial.dataset, trial.teacher))
    return keys


def stage_deps(key: ArtifactKey) -> list[ArtifactKey]:
    """Artifacts a stage needs before it can be built; the driver builds in dependency order."""
    if "_deps" in key.__dict__:
        return key.__dict__["_deps"]
    cfg = key.cfg
    if key.kind == "subset":
        return [ArtifactKey.make(i["kind"], i["config"]) for i in cfg.get("inputs", [])]
    if key.kind == "features":
        return [ArtifactKey.make("teacher", cfg["teacher"])]
    return []


def stage_uses_accelerator(key: ArtifactKey) -> bool:
    """Stages that train or run a network (teachers, features, score runs, distillers) get the trial's GPU;
    the selection of real images from stored scores is numpy on a CPU."""
    if key.kind == "subset":
        return SELECTORS[key.cfg["selector"]["name"]].distiller
    return STAGES[key.kind].uses_accelerator
