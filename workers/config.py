"""Fully resolved trial configuration: frozen dataclasses, their settings' schemas, canonical JSON, trial ids.

No torch. The recipe settings (`TRAIN_OPTIONS`, `TEACHER_OPTIONS`) and the accepted optimizers,
augmentations and KD back-ends are declared here once; the sweep validator and the training code
both read them. The trial-id rule is docs/design.md §5.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from workers.options import Option
from workers.schedules import SCHEDULES

BUDGET_UNITS = ("epochs", "full_epochs", "steps")
OPTIMIZERS = ("sgd", "adam", "adamw")
AUGMENTATIONS = ("none", "crop", "crop_flip", "rrc_flip", "dsa")
TEACHER_NORMALIZATIONS = ("auto", "dataset", "imagenet")
KD_BACKENDS = ("online", "stored")
PRECISIONS = ("auto", "fp32", "bf16")
SOFT = ("sl", "sl_kd")  # the regimes that read soft-label settings


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

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DatasetConfig:
        return cls(name=d["name"], root=d.get("root"), options=_frozen_options(d.get("options")))


@dataclass(frozen=True)
class BudgetConfig:
    """How much compute the student gets (docs/design.md §3, docs/methods.md §2): one unit, one value."""

    unit: str
    value: float

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "value": self.value}


# The student recipe. `only_for`: settings only these regimes read; a trial's id leaves out the others,
# so changing the temperature re-runs soft-label trials only. A new regime that reads a soft-label
# setting is added to its `only_for`.
TRAIN_OPTIONS: dict[str, Option] = {
    "optimizer": Option("adamw", str, "the optimiser", choices=OPTIMIZERS),
    "lr": Option(0.001, float, "the base learning rate", above=0.0),
    "weight_decay": Option(0.01, float, "weight decay (decoupled for adamw)", min=0.0),
    "momentum": Option(0.9, float, "SGD momentum (sgd only)", min=0.0),
    "batch_size": Option(64, int, "images per step", min=1),
    "schedule": Option("cosine", str, "the learning-rate schedule over the trial's steps", choices=tuple(SCHEDULES)),
    "temperature": Option(20.0, float, "the KD temperature T", above=0.0, only_for=SOFT),
    "t2_scale": Option(False, bool, "multiply the KL loss by T^2", only_for=SOFT),
    "augment": Option("crop", str, "views for hl/sl training", choices=AUGMENTATIONS),
    "eval_points": Option(4, int, "evaluations spread over training", min=1),
    "kd_backend": Option(
        "online", str, "sl_kd teacher labels: online or stored", choices=KD_BACKENDS, only_for=("sl_kd",)
    ),
    "kd_topk": Option(0, int, "sl_kd stored: keep the k largest logits per view (0 = all)", min=0, only_for=("sl_kd",)),
    "kd_min_scale": Option(
        0.08, float, "sl_kd views: RandomResizedCrop scale lower bound", above=0.0, max=1.0, only_for=("sl_kd",)
    ),
    # the CUDA fast path (workers/accel.py); on a CPU auto is fp32 and NCHW, so CPU results are unchanged
    "precision": Option("auto", str, "auto: bf16 autocast on a GPU that has it, else fp32", choices=PRECISIONS),
    "channels_last": Option(
        "auto", str, "memory format of conv nets; auto: channels_last on a GPU", choices=("auto", "yes", "no")
    ),
    "compile": Option(False, bool, "torch.compile the student (opt-in: compiling takes minutes, pays on long runs)"),
}
_T = {k: o.default for k, o in TRAIN_OPTIONS.items()}


@dataclass(frozen=True)
class TrainConfig:
    """A student (or score-run) recipe; the defaults and rules are TRAIN_OPTIONS'."""

    optimizer: str = _T["optimizer"]
    lr: float = _T["lr"]
    weight_decay: float = _T["weight_decay"]
    momentum: float = _T["momentum"]
    batch_size: int = _T["batch_size"]
    schedule: str = _T["schedule"]
    temperature: float = _T["temperature"]
    t2_scale: bool = _T["t2_scale"]
    augment: str = _T["augment"]
    eval_points: int = _T["eval_points"]
    kd_backend: str = _T["kd_backend"]
    kd_topk: int = _T["kd_topk"]
    kd_min_scale: float = _T["kd_min_scale"]
    precision: str = _T["precision"]
    channels_last: str = _T["channels_last"]
    compile: bool = _T["compile"]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def absolute_path_problem(path: str) -> str | None:
    """Paths in a sweep (data root, teacher weights) must be absolute. Not resolved for the user: under
    `ray job submit --working-dir` the driver's folder is Ray's package folder, whose name changes with
    every upload, and the path is part of trial ids and artifact keys."""
    if Path(path).is_absolute():
        return None
    return (
        f"is relative; trials and stages run in other folders and on other nodes, so give the absolute "
        f"path (here that would be {str(Path(path).resolve())!r}), the same on every node"
    )


def _weights_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not Path(value).is_file():
        return "is not an existing file; give the path of a local state_dict (.pt/.pth)"
    return absolute_path_problem(value)


# The teacher recipe (besides its arch and the arch's options).
TEACHER_OPTIONS: dict[str, Option] = {
    "weights": Option(
        None, str, "a local state_dict file; null = train the teacher here", nullable=True, check=_weights_problem
    ),
    "epochs": Option(30, int, "training epochs when trained here", min=1),
    "optimizer": Option("adamw", str, "the optimiser when trained here", choices=OPTIMIZERS),
    "lr": Option(0.003, float, "learning rate when trained here", above=0.0),
    "weight_decay": Option(0.0005, float, "weight decay when trained here", min=0.0),
    "batch_size": Option(64, int, "batch size when trained here", min=1),
    "augment": Option("crop", str, "views when trained here", choices=AUGMENTATIONS),
    "seed": Option(0, int, "the teacher's own seed (init, order, views)", min=0),
    "min_top1_factor": Option(5.0, float, "refuse a teacher whose minival top-1 is below this x chance", min=0.0),
    "normalize": Option(
        "auto",
        str,
        "the teacher's input normalisation: the data set's channel statistics, or ImageNet's mean/std (torchvision "
        "weights); auto: imagenet for resnet18 weights loaded from a file at >= 64 px on 3 channels, else dataset",
        choices=TEACHER_NORMALIZATIONS,
    ),
}
_TT = {k: o.default for k, o in TEACHER_OPTIONS.items()}


@dataclass(frozen=True)
class TeacherConfig:
    """A teacher: loaded from a local weights file, or trained on the full train split with this recipe."""

    arch: Named
    weights: str | None = _TT["weights"]
    weights_sha256: str | None = None  # filled by the spec: a changed file at the same path is a new teacher
    epochs: int = _TT["epochs"]
    optimizer: str = _TT["optimizer"]
    lr: float = _TT["lr"]
    weight_decay: float = _TT["weight_decay"]
    batch_size: int = _TT["batch_size"]
    augment: str = _TT["augment"]
    seed: int = _TT["seed"]
    min_top1_factor: float = _TT["min_top1_factor"]
    normalize: str = _TT["normalize"]

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
    # The grid axes beyond the four required ones, as people name them ({"budget": "full_epochs20",
    # "teacher": "weak", "student": "resnet18"}): in the trial's name and its row's config, never in its id
    # (docs/design.md §5); a named teacher's config is in `teacher` already.
    tags: tuple[tuple[str, str], ...] = field(default=(), compare=False)

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
            **({"tags": dict(self.tags)} if self.tags else {}),
        }

    def identity(self) -> dict[str, Any]:
        """What the id hashes (docs/design.md §5): `trial_identity(self.to_json())`."""
        return trial_identity(self.to_json())

    @cached_property
    def trial_id(self) -> str:
        """short_hash(self.identity()), assembled from the canonical JSON of each part. The grid's trials
        share their parts (data set, student, recipes, selectors), so everything but IPC and seed is
        serialised once per combination of parts and cached on the selector object: a 100k-trial grid
        hashes in well under a second (tests/test_trial_ids.py checks both ways agree)."""
        before, between, after = _id_fragments(self)
        text = f'{{{before}"ipc":{int(self.ipc)},{between}"seed":{int(self.seed)}{after}}}'
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TrialConfig:
        """The config of a row's `config_json`. A row written before an option existed ran the behaviour of
        that option's neutral value (NEUTRAL_SINCE_SCHEMA_1), so the option is filled in with it: the trial
        runs as it ran then, under the same id."""
        return cls(
            dataset=DatasetConfig.from_json(d["dataset"]),
            student=Named.make(d["student"]["name"], d["student"].get("options")),
            selector=Named.make(d["selector"]["name"], _with_neutral("selector", d["selector"])),
            regime=d["regime"],
            ipc=int(d["ipc"]),
            seed=int(d["seed"]),
            budget=BudgetConfig(unit=d["budget"]["unit"], value=d["budget"]["value"]),
            train=TrainConfig(**d.get("train", {})),
            teacher=TeacherConfig.from_json(d["teacher"]) if d.get("teacher") else None,
            scoring=TrainConfig(**d["scoring"]) if d.get("scoring") else None,
            tags=tuple(sorted((d.get("tags") or {}).items())),
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

    @cached_property
    def digest(self) -> str:
        # = short_hash({"kind": kind, "config": cfg}): config_json is already canonical, keys sort config < kind
        text = '{"config":' + self.config_json + ',"kind":' + json.dumps(self.kind) + "}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def from_parts(cls, kind: str, parts: Mapping[str, str]) -> ArtifactKey:
        """A key from the canonical JSON of each top-level entry (`identity_json` strings, numbers as str):
        the same key as make(kind, {...}) without re-serialising shared parts."""
        assert all(k.isidentifier() for k in parts), parts  # plain keys: no escaping needed
        return cls(kind=kind, config_json="{" + ",".join(f'"{k}":{parts[k]}' for k in sorted(parts)) + "}")

    @property
    def folder(self) -> str:
        return f"{self.kind}/{self.digest}"

    def __str__(self) -> str:
        return f"{self.kind}:{self.digest}"


# ---------------------------------------------------------------- the trial-id rule (docs/design.md §5)
# Schema 1: sha256 of the canonical JSON of the trial's config, less the settings its regime never reads.
# A later schema adds "id_schema": N to what is hashed, and `ddsweep migrate` re-keys a store.
ID_SCHEMA = 1


# Settings added after schema 1, each with the value that reproduces the behaviour from before it existed.
# While a setting holds that value it is left out of the identity, so adding it leaves every existing id
# unchanged. Keys are paths into TrialConfig.to_json(): ("train", key), ("scoring", key), ("teacher", key),
# (field,) for a new top-level field, and (section, name, option) for the options of a named entry:
# ("selector", "el2n", "schedule_epochs"), ("student", "resnet18", ...), ("dataset", "imagefolder", ...).
# A setting added without an entry here changes ids, and the golden-id test (tests/test_trial_ids.py) fails.
class SameAs:
    """A neutral value that is another option of the same entry (a cache crop that defaults to image_size)."""

    def __init__(self, option: str) -> None:
        self.option = option

    def __repr__(self) -> str:
        return f"SameAs({self.option!r})"


NEUTRAL_SINCE_SCHEMA_1: dict[tuple[str, ...], Any] = {
    # issue #11: the cache's resolution, filter, val label file, bad-file policy and shard size; before them
    # imagefolder decoded the shorter side to image_size, centre crop image_size, bilinear, val in class folders.
    ("dataset", "imagefolder", "train_resize"): SameAs("image_size"),
    ("dataset", "imagefolder", "train_crop"): SameAs("image_size"),
    ("dataset", "imagefolder", "val_resize"): SameAs("image_size"),
    ("dataset", "imagefolder", "val_crop"): SameAs("image_size"),
    ("dataset", "imagefolder", "interpolation"): "bilinear",
    ("dataset", "imagefolder", "val_labels"): None,
    ("dataset", "imagefolder", "skip_bad_files"): False,
    ("dataset", "imagefolder", "shard_size"): 1024,
    # issue #11: a teacher's input normalisation; auto is the data set's statistics except for torchvision-style
    # resnet18 weights at ImageNet sizes (docs/methods.md §3)
    ("teacher", "normalize"): "auto",
    # issue #12: the CUDA fast path; auto is fp32 and NCHW on a CPU, where every earlier row ran
    ("train", "precision"): "auto",
    ("train", "channels_last"): "auto",
    ("train", "compile"): False,
    ("scoring", "precision"): "auto",
    ("scoring", "channels_last"): "auto",
    ("scoring", "compile"): False,
    # issue #14: EL2N/GraNd score runs stop at `epoch` of a `schedule_epochs`-long schedule (default 200);
    # "epoch" is the schedule that ends at the scored epoch, as before.
    **{("selector", n, "schedule_epochs"): "epoch" for n in ("el2n", "el2n_easy", "el2n_window", "grand")},
    # issue #14: D2's graph, difficulty and hard drop as its reference code runs them; before: one-way kNN
    # messages of EL2N at the run's end, nothing dropped.
    ("selector", "d2", "graph"): "one_way",
    ("selector", "d2", "difficulty"): "el2n",
    ("selector", "d2", "hard_drop"): 0.0,
    # issue #14: dynamic uncertainty averages K - J windows as its reference; before: all K - J + 1.
    ("selector", "dyn_unc", "last_window"): True,
    # issue #14: CCS's AUM from the training mini-batch margins; before: clean eval-mode margins.
    ("selector", "ccs", "aum_source"): "eval",
    # issue #14: SRe2L/CDA recover views: RandomResizedCrop + flip (crop: rrc) and a roll of either sign (jitter:
    # both) before; see docs/methods.md §5.1 for the reference scripts' choices.
    **{("selector", n, "crop"): "rrc" for n in ("sre2l", "cda")},
    **{("selector", n, "jitter"): "both" for n in ("sre2l", "cda")},
    # issue #14: score runs seeded by run index (fixed) or by the trial seed too; fixed is the default.
    **{
        ("selector", n, "score_seed"): "fixed"
        for n in (
            "el2n",
            "el2n_easy",
            "el2n_window",
            "grand",
            "forgetting",
            "forgetting_easy",
            "ccs",
            "d2",
            "dyn_unc",
            "cad_prune",
            "ca2d",
        )
    },
}


def trial_identity(d: Mapping[str, Any], neutral: Mapping[tuple[str, ...], Any] | None = None) -> dict[str, Any]:
    """The part of a trial's config JSON its id hashes: everything, less the recipe settings its regime
    never reads (TRAIN_OPTIONS `only_for`; score runs train with hard labels, so their recipe drops every
    soft-label setting), less settings added after schema 1 that hold their neutral value, less the `tags`
    (names for people: a teacher's name in the sweep, the budget and student spelled out)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if key == "tags":
            continue
        out.update(_section(key, value, d.get("regime"), neutral))
    if ID_SCHEMA > 1:
        out["id_schema"] = ID_SCHEMA
    return out


def _section(key: str, value: Any, regime: str | None, neutral=None) -> dict[str, Any]:
    """{key: value} as the identity holds one top-level entry of a trial's config JSON ({} if left out)."""
    value = copy.deepcopy(value)
    if key == "train":
        value = {k: v for k, v in value.items() if _reads(k, regime)}
    elif key == "scoring" and value is not None:
        value = {k: v for k, v in value.items() if _reads(k, "hl")}
    wrapper = {key: value}
    for path, neutral_value in (NEUTRAL_SINCE_SCHEMA_1 if neutral is None else neutral).items():
        if path[0] == key or (key == "teacher" and path[0] == "teacher.arch"):
            _drop_if(wrapper, path, neutral_value)
    return wrapper


def _id_fragments(t: TrialConfig) -> tuple[str, str, str]:
    """The identity JSON of a trial, less IPC and seed, as the three runs of '"key":value' entries that
    sort before "ipc", between "ipc" and "seed", and after "seed"."""
    parts = (t.dataset, t.student, t.budget, t.train, t.teacher, t.scoring)
    cache = t.selector.__dict__.setdefault("_id_fragments", {})
    key = (t.regime, *map(id, parts))
    hit = cache.get(key)
    if hit is None or any(a is not b for a, b in zip(hit[0], parts)):
        entries = {
            "dataset": t.dataset,
            "student": t.student,
            "selector": t.selector,
            "regime": t.regime,
            "budget": t.budget,
            "train": t.train,
            "teacher": t.teacher,
        }
        if t.scoring is not None:
            entries["scoring"] = t.scoring
        body = {k: _section_json(k, v, t.regime) for k, v in entries.items()}
        if ID_SCHEMA > 1:
            body["id_schema"] = str(ID_SCHEMA)
        present = sorted((k, v) for k, v in body.items() if v is not None)
        runs = (
            "".join(f'"{k}":{v},' for k, v in present if k < "ipc"),
            "".join(f'"{k}":{v},' for k, v in present if "ipc" < k < "seed"),
            "".join(f',"{k}":{v}' for k, v in present if k > "seed"),
        )
        hit = cache[key] = (parts, runs)
    return hit[1]


_PLAIN_SECTIONS: dict[tuple, str | None] = {}  # identity entries that are a string or null (regime, teacher)


def _section_json(key: str, part: Any, regime: str) -> str | None:
    """Canonical JSON of one identity entry (None if left out), cached on the part object itself (frozen
    configs never change; the cache lives in the instance's __dict__, keyed by entry and regime)."""
    if isinstance(part, int) and not isinstance(part, bool):
        return str(part)
    if part is None or isinstance(part, str):
        cache = _PLAIN_SECTIONS
    else:
        cache = part.__dict__.setdefault("_identity_json", {})
    cache_key = (key, regime if key == "train" else None, part if cache is _PLAIN_SECTIONS else None)
    if cache_key not in cache:
        section = _section(key, part.to_json() if cache is not _PLAIN_SECTIONS else part, regime)
        cache[cache_key] = canonical_json(section[key]) if key in section else None
    return cache[cache_key]


def identity_json(section: str, part: Any) -> str:
    """Canonical JSON of a config part in the form trial ids hash it: settings added since schema 1 that hold
    their neutral value are left out. Artifact keys use it too, so an upgrade that adds a setting keeps the
    keys of existing artifacts (a teacher is not retrained because its config grew a field)."""
    out = _section_json(section, part, "")
    assert out is not None, (section, part)
    return out


def _with_neutral(section: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """A named entry's options, with every option added after schema 1 that it lacks set to its neutral value."""
    opts = dict(entry.get("options") or {})
    for path, value in NEUTRAL_SINCE_SCHEMA_1.items():
        if len(path) == 3 and path[0] == section and path[1] == entry["name"]:
            opts.setdefault(path[2], value)
    return opts


def _reads(key: str, regime: str | None) -> bool:
    opt = TRAIN_OPTIONS.get(key)
    return opt is None or opt.only_for is None or regime in opt.only_for


def _drop_if(d: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    if len(path) == 3:  # (section, entry name, option)
        section = d.get(path[0]) if path[0] != "teacher.arch" else (d.get("teacher") or {}).get("arch")
        if isinstance(section, dict) and section.get("name") == path[1]:
            opts = section.get("options", {})
            same = isinstance(value, SameAs)
            if path[2] in opts and (opts.get(value.option) if same else value) == opts[path[2]]:
                del opts[path[2]]
        return
    *parents, key = path
    target: Any = d
    for p in parents:
        target = target.get(p) if isinstance(target, dict) else None
    if isinstance(target, dict) and key in target and target[key] == value:
        del target[key]
