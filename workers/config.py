"""Fully resolved trial configuration: frozen dataclasses, canonical JSON and stable ids. No torch."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

BUDGET_UNITS = ("epochs", "full_epochs", "steps")
REGIMES = ("hl", "sl", "sl_kd")


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the byte string every id is hashed from."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def short_hash(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]


def _frozen_options(options: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((options or {}).items()))


@dataclass(frozen=True)
class Named:
    """A registry entry chosen by name, with its fully resolved options (defaults filled in)."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def make(cls, name: str, options: Mapping[str, Any] | None = None) -> Named:
        return cls(name=name, options=_frozen_options(options))

    @property
    def opts(self) -> dict[str, Any]:
        return dict(self.options)

    def label(self) -> str:
        """Short human label: `el2n_window` or `el2n_window(offset=0.8)`."""
        if not self.options:
            return self.name
        inner = ",".join(f"{k}={v}" for k, v in self.options)
        return f"{self.name}({inner})"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options)}


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    root: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def opts(self) -> dict[str, Any]:
        return dict(self.options)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "root": self.root, "options": dict(self.options)}


@dataclass(frozen=True)
class BudgetConfig:
    """How much compute the student gets (DESIGN.md §3, METHODS.md §2): one unit, one value."""

    unit: str
    value: float

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "value": self.value}


# Fields of TrainConfig that only soft-label regimes read; each regime declares which it reads
# (workers.registry REGIMES, `label_fields`), and a trial's id covers only those.
LABEL_FIELDS = ("temperature", "t2_scale", "kd_backend", "kd_topk", "kd_min_scale")


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "adamw"
    lr: float = 0.001
    weight_decay: float = 0.01
    momentum: float = 0.9
    batch_size: int = 64
    schedule: str = "cosine"
    temperature: float = 20.0
    t2_scale: bool = False
    augment: str = "crop"
    eval_points: int = 4
    kd_backend: str = "online"
    kd_topk: int = 0
    kd_min_scale: float = 0.08

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TeacherConfig:
    """A teacher: loaded from a local weights file, or trained on the full train split with this recipe."""

    arch: Named
    weights: str | None = None
    weights_sha256: str | None = None  # filled by the spec: a changed file at the same path is a new teacher
    epochs: int = 30
    optimizer: str = "adamw"
    lr: float = 0.003
    weight_decay: float = 0.0005
    batch_size: int = 64
    augment: str = "crop"
    seed: int = 0
    min_top1_factor: float = 5.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["arch"] = self.arch.to_json()
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TeacherConfig:
        d = dict(d)
        arch = d.pop("arch")
        return cls(arch=Named.make(arch["name"], arch.get("options")), **d)


@dataclass(frozen=True)
class TrialConfig:
    """One point of the grid, with nothing left to look up. Its id is a hash of all of it."""

    dataset: DatasetConfig
    student: Named
    selector: Named
    regime: str
    ipc: int
    seed: int
    budget: BudgetConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher: TeacherConfig | None = None  # present only when the trial uses it (soft labels, teacher features)
    scoring: TrainConfig | None = None  # recipe of the full-data score runs, when the selector reads them

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset.to_json(),
            "student": self.student.to_json(),
            "selector": self.selector.to_json(),
            "regime": self.regime,
            "ipc": self.ipc,
            "seed": self.seed,
            "budget": self.budget.to_json(),
            "train": self.train.to_json(),
            "teacher": self.teacher.to_json() if self.teacher else None,
            **({"scoring": self.scoring.to_json()} if self.scoring else {}),
        }

    def identity(self) -> dict[str, Any]:
        """What the id hashes: everything, less the soft-label fields the trial's regime never reads (so
        changing `train.temperature` re-runs sl and sl_kd trials, not hl ones, nor their score runs)."""
        from workers.registry import REGIMES

        reads = REGIMES[self.regime].meta.get("label_fields", LABEL_FIELDS) if self.regime in REGIMES else LABEL_FIELDS
        d = self.to_json()
        d["train"] = {k: v for k, v in d["train"].items() if k not in LABEL_FIELDS or k in reads}
        if "scoring" in d:  # score runs train with hard labels
            d["scoring"] = {k: v for k, v in d["scoring"].items() if k not in LABEL_FIELDS}
        return d

    @property
    def trial_id(self) -> str:
        return short_hash(self.identity())

    @property
    def trial_name(self) -> str:
        """For people: `el2n_window-offset0.8-hl-ipc10-s0`; only selector options that differ from their
        registry defaults are spelled out (the id covers all of them)."""
        from workers.registry import SELECTORS

        entry = SELECTORS[self.selector.name] if self.selector.name in SELECTORS else None
        sel = self.selector.name
        changed = [
            (k, v)
            for k, v in self.selector.options
            if entry is None or k not in entry.options or entry.options[k].default != v
        ]
        if changed:
            sel += "-" + "-".join(f"{k}{v}" for k, v in changed)
        return f"{sel}-{self.regime}-ipc{self.ipc}-s{self.seed}"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TrialConfig:
        ds = d["dataset"]
        return cls(
            dataset=DatasetConfig(name=ds["name"], root=ds.get("root"), options=_frozen_options(ds.get("options"))),
            student=Named.make(d["student"]["name"], d["student"].get("options")),
            selector=Named.make(d["selector"]["name"], d["selector"].get("options")),
            regime=d["regime"],
            ipc=int(d["ipc"]),
            seed=int(d["seed"]),
            budget=BudgetConfig(unit=d["budget"]["unit"], value=d["budget"]["value"]),
            train=TrainConfig(**d.get("train", {})),
            teacher=TeacherConfig.from_json(d["teacher"]) if d.get("teacher") else None,
            scoring=TrainConfig(**d["scoring"]) if d.get("scoring") else None,
        )


@dataclass(frozen=True)
class ArtifactKey:
    """A shared stage's output, addressed by a hash of exactly the config that produces it."""

    kind: str
    config_json: str

    @classmethod
    def make(cls, kind: str, config: Mapping[str, Any]) -> ArtifactKey:
        return cls(kind=kind, config_json=canonical_json(dict(config)))

    @property
    def cfg(self) -> dict[str, Any]:
        return json.loads(self.config_json)

    @property
    def digest(self) -> str:
        return short_hash({"kind": self.kind, "config": self.cfg})

    @property
    def folder(self) -> str:
        return f"{self.kind}/{self.digest}"

    def __str__(self) -> str:
        return f"{self.kind}:{self.digest}"
