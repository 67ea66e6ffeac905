"""The artifact graph: which shared stages a trial needs, their content-addressed keys, their dependencies.

A cached data set (imagefolder, tinyimagenet) adds its `cache` (and the cache its `shard`s) to the dependencies of every
stage and trial that reads it; digits has none, so its keys and trial ids are those of before.

No torch. A key hashes exactly the config that produces the artifact (docs/design.md §4), so a
stage is built once and shared by every trial and sweep that needs the same thing: a subset never
depends on the regime, nor on what its selector does not read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache
from typing import Any

from workers.budget import plan
from workers.catalogue import DATASETS, REGIMES, SELECTORS, STAGES, dataset_facts
from workers.config import (
    ArtifactKey,
    DatasetConfig,
    Named,
    TeacherConfig,
    TrainConfig,
    TrialConfig,
    canonical_json,
    identity_json,
)


def cache_key(dataset: DatasetConfig | Mapping[str, Any]) -> ArtifactKey | None:
    """The `cache` artifact of a cached data set (imagefolder), None for one held in memory (digits). Its key is
    the decode rule (root, listing digest, sizes, filter, shard size) and the rows per split, from the data
    set's torch-free facts (docs/design.md §4)."""
    d = dataset if isinstance(dataset, DatasetConfig) else DatasetConfig.from_json(dataset)
    if not DATASETS[d.name].cached:
        return None
    cache = d.__dict__.setdefault("_cache_key", {})  # per config object: a grid's trials share it
    if "key" not in cache:
        cache["key"] = ArtifactKey.make("cache", dataset_facts(d.name, d.root, d.opts)["cache"])
    return cache["key"]


def shard_keys(cache: ArtifactKey) -> list[ArtifactKey]:
    """The shards of a cache: per split, ceil(rows / shard_size) of them, each its own stage."""
    rule = cache.cfg["rule"]
    size = rule["shard_size"]
    return [
        ArtifactKey.make("shard", {"rule": rule, "split": split, "index": i, "rows": min(size, n - i * size)})
        for split, n in cache.cfg["splits"].items()
        for i in range(math.ceil(n / size))
    ]


def _with_cache(dataset: Mapping[str, Any], keys: list[ArtifactKey]) -> list[ArtifactKey]:
    ckey = cache_key(dataset)
    return keys if ckey is None else [ckey, *keys]


def teacher_key(dataset: DatasetConfig, teacher: TeacherConfig) -> ArtifactKey:
    cache = teacher.__dict__.setdefault("_keys", {})  # per teacher object, by data set (checked by identity)
    hit = cache.get(id(dataset))
    if hit is None or hit[0] is not dataset:
        key = ArtifactKey.from_parts(
            "teacher", {"dataset": identity_json("dataset", dataset), "teacher": identity_json("teacher", teacher)}
        )
        hit = cache[id(dataset)] = (dataset, key)
    return hit[1]


def features_key(tkey: ArtifactKey) -> ArtifactKey:
    return ArtifactKey.from_parts("features", {"teacher": tkey.config_json})


# Rows per `features_part` stage: the teacher's features of a large train split are computed by parallel tasks of
# this many rows each (ImageNet-1K: 20 parts); a split this size or smaller is one part.
INFERENCE_PART_ROWS = 65_536


def features_part_keys(fkey: ArtifactKey) -> list[ArtifactKey]:
    """The parts of a `features` artifact: train rows [start, stop), in order, each its own stage. The features
    key itself does not hold the part size, so the merged artifact is the same however it was cut."""
    dataset = fkey.cfg["teacher"]["dataset"]
    n = dataset_facts(dataset["name"], dataset.get("root"), dataset.get("options", {}))["num_train"]
    return [
        ArtifactKey.make("features_part", {"features": fkey.cfg, "start": s, "stop": min(n, s + INFERENCE_PART_ROWS)})
        for s in range(0, n, INFERENCE_PART_ROWS)
    ]


def dynamics_key(
    dataset: DatasetConfig, arch: Named, recipe: TrainConfig, epochs: int, run: int, extra: dict | None = None
) -> ArtifactKey:
    """A score run. `extra` holds what only some runs have (docs/design.md §4): `schedule_epochs` (the
    learning-rate schedule spans more epochs than the run lasts), `records` (per-epoch arrays beyond the
    standard ones), `seed` (a run seeded by the trial seed as well as its index); absent from a plain run's
    key, so the keys of plain runs stay as they were."""
    parts = {
        "dataset": identity_json("dataset", dataset),
        "arch": identity_json("student", arch),
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
                "dataset": identity_json("dataset", trial.dataset),
                "selector": identity_json("selector", trial.selector),
                "ipc": str(int(trial.ipc)),
                "seed": str(int(trial.seed)),
                "inputs": sel["inputs_json"],
            },
        )
        key.__dict__["_deps"] = _with_cache(trial.dataset, list(sel["keys"]))  # stage_deps without parsing it
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


def train_epochs(trial: TrialConfig) -> int:
    """Epochs over its training images a trial walks (the last one may be partial), from the data set's facts:
    n = IPC x C images (the `full` selector: the N of the train split) under the trial's budget."""
    facts = dataset_facts(trial.dataset.name, trial.dataset.root, trial.dataset.opts)
    n_subset, n_full = trial.ipc * len(facts["class_names"]), facts["num_train"]
    n_data = n_subset if SELECTORS[trial.selector.name].balanced else n_full
    p = plan(trial.budget, n_subset, n_full, trial.train.batch_size, n_data)
    return math.ceil(p.images_seen / n_data)


def kd_labels_key(trial: TrialConfig) -> ArtifactKey | None:
    """Stored SL+KD labels (docs/methods.md §9) of a `sl_kd` trial with `kd_backend: stored`: keyed by the subset,
    the teacher, the trial seed, the view parameters (kd_min_scale; the views' side is the data set's), top-k and
    the number of epochs. Each epoch is its own `kd_epoch` stage, shared by every trial that needs it."""
    if trial.regime != "sl_kd" or trial.train.kd_backend != "stored" or trial.teacher is None:
        return None
    labels = {
        "subset": subset_key(trial).cfg,
        "teacher": teacher_key(trial.dataset, trial.teacher).cfg,
        "seed": trial.seed,
        "min_scale": trial.train.kd_min_scale,
        "topk": trial.train.kd_topk,
    }
    return ArtifactKey.make("kd_labels", {"labels": labels, "epochs": train_epochs(trial)})


def kd_epoch_keys(labels: ArtifactKey) -> list[ArtifactKey]:
    """One `kd_epoch` stage per epoch of a `kd_labels` set; an epoch's key does not hold the number of epochs, so
    a longer budget reuses the epochs a shorter one built."""
    return [
        ArtifactKey.make("kd_epoch", {"labels": labels.cfg["labels"], "epoch": e}) for e in range(labels.cfg["epochs"])
    ]


def requires(trial: TrialConfig) -> list[ArtifactKey]:
    """Artifacts a trial needs before it starts (docs/design.md §4)."""
    keys = [subset_key(trial)]
    if trial.teacher is not None:
        keys.append(teacher_key(trial.dataset, trial.teacher))
    ckey = cache_key(trial.dataset)
    if ckey is not None:
        keys.append(ckey)
    kkey = kd_labels_key(trial)
    if kkey is not None:
        keys.append(kkey)
    return keys


def stage_deps(key: ArtifactKey) -> list[ArtifactKey]:
    """Artifacts a stage needs before it can be built; the driver builds in dependency order."""
    if "_deps" in key.__dict__:  # set where the key is made (subset_key): no parsing back
        return key.__dict__["_deps"]
    cfg = key.cfg
    if key.kind == "subset":
        return _with_cache(cfg["dataset"], [ArtifactKey.make(i["kind"], i["config"]) for i in cfg.get("inputs", [])])
    if key.kind == "features":
        return features_part_keys(key)
    if key.kind == "features_part":
        teacher = cfg["features"]["teacher"]
        return _with_cache(teacher["dataset"], [ArtifactKey.make("teacher", teacher)])
    if key.kind in ("teacher", "dynamics"):
        return _with_cache(cfg["dataset"], [])
    if key.kind == "cache":
        return shard_keys(key)
    if key.kind == "kd_labels":
        return kd_epoch_keys(key)
    if key.kind == "kd_epoch":
        labels = key.cfg["labels"]
        subset, teacher = ArtifactKey.make("subset", labels["subset"]), ArtifactKey.make("teacher", labels["teacher"])
        return _with_cache(labels["subset"]["dataset"], [subset, teacher])
    return []


def bytes_written(key: ArtifactKey) -> int | None:
    """What a data stage writes, estimated without torch from its key and the data set's facts: a shard's images
    (uint8, 3 x side^2 each), a kd_epoch's labels (n x 2C bytes of fp16 logits, or n x 4k with top-k). None for
    the kinds whose size is not estimated here (a cache or a kd_labels set is the sum of its dependencies)."""
    cfg = key.cfg
    if key.kind == "shard":
        side = cfg["rule"]["train" if cfg["split"] == "train" else "val"][1]
        return cfg["rows"] * 3 * side * side
    if key.kind == "kd_epoch":
        labels = cfg["labels"]
        subset = labels["subset"]
        d = DatasetConfig.from_json(subset["dataset"])
        facts = dataset_facts(d.name, d.root, d.opts)
        classes = len(facts["class_names"])
        n = subset["ipc"] * classes if SELECTORS[subset["selector"]["name"]].balanced else facts["num_train"]
        k = labels["topk"]
        return n * (4 * k if 0 < k < classes else 2 * classes)
    return None


def stage_uses_accelerator(key: ArtifactKey) -> bool:
    """Stages that train or run a network (teachers, features, score runs, distillers) get the trial's GPU;
    the selection of real images from stored scores is numpy on a CPU."""
    if key.kind == "subset":
        return SELECTORS[key.cfg["selector"]["name"]].distiller
    return STAGES[key.kind].uses_accelerator
