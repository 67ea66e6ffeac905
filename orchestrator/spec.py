"""Sweep YAML -> SweepSpec (frozen dataclasses). Every problem is reported at once with its YAML path."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from workers.config import BUDGET_UNITS, BudgetConfig, DatasetConfig, Named, TeacherConfig, TrainConfig, _frozen_options
from workers.registry import ARCHS, DATASETS, REGIMES, SELECTORS, describe_dataset, did_you_mean, needs_teacher

AXES = ("selector", "regime", "ipc", "seed")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
DEFAULT_STORAGE = "./ddsweep-runs"
TOP = "(top level)"
TOP_KEYS = (
    "name",
    "storage",
    "dataset",
    "teacher",
    "student",
    "budget",
    "grid",
    "selectors",
    "train",
    "resources",
    "exclude",
)
REQUIRED_TOP = ("name", "dataset", "student", "budget", "grid")
TRAIN_CHOICES = {
    "optimizer": ("sgd", "adam", "adamw"),
    "schedule": ("cosine", "half_cosine", "step", "constant"),
    "augment": ("none", "crop", "crop_flip"),
    "kd_backend": ("online", "stored"),
}


class SpecError(Exception):
    """A sweep file a user can fix. `problems` lists every finding, each starting with its YAML path."""

    def __init__(self, problems: list[str], source: str = "sweep") -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__("\n".join([head] + [f"  - {p}" for p in problems]))


@dataclass(frozen=True)
class Resources:
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0
    max_concurrent: int | None = None
    max_failures: int = 2


@dataclass(frozen=True)
class SweepSpec:
    name: str
    storage: str
    dataset: DatasetConfig
    student: Named
    budget: BudgetConfig
    selectors: tuple[Named, ...]
    regimes: tuple[str, ...]
    ipcs: tuple[int, ...]
    seeds: tuple[int, ...]
    train: TrainConfig
    resources: Resources
    exclude: tuple[tuple[tuple[str, Any], ...], ...] = ()
    teacher: TeacherConfig | None = None
    recipes: dict = field(default_factory=dict)  # regime -> TrainConfig; `train` is hl's, also used by score runs
    warnings: tuple[str, ...] = ()
    source: str = ""


class _NoDuplicateLoader(yaml.SafeLoader):
    """safe_load, but a key given twice in one mapping is an error instead of a silent overwrite."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, "found unhashable key", key_node.start_mark
            ) from None
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} appears twice in one mapping (line {mark.line + 1}, column {mark.column + 1})",
                mark,
            )
        seen[key] = True
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_NoDuplicateLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "empty"}.get(
        type(value), type(value).__name__
    )


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def err(self, path: str, msg: str) -> None:
        self.problems.append(f"{path}: {msg}")

    def mapping(
        self, value: Any, path: str, allowed: tuple[str, ...] | None, required: tuple[str, ...] = (), what: str = ""
    ) -> dict | None:
        if not isinstance(value, dict):
            self.err(path, f"expected a mapping{what}, got {_type_name(value)} {value!r}")
            return None
        if allowed is not None:
            for key in value:
                if key not in allowed:
                    self.err(
                        f"{path}.{key}" if path != TOP else str(key),
                        f"unknown key{did_you_mean(str(key), allowed)}; allowed: {', '.join(allowed)}",
                    )
        for key in required:
            if key not in value:
                self.err(f"{path}.{key}" if path != TOP else key, "is required")
        return value

    def number(
        self, value: Any, path: str, *, integer: bool = False, minimum: float | None = None, exclusive: bool = False
    ) -> bool:
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or (isinstance(value, float) and not math.isfinite(value)):
            self.err(path, f"{value!r} is not {'an integer' if integer else 'a number'}")
            return False
        if minimum is not None and (value <= minimum if exclusive else value < minimum):
            self.err(path, f"{value!r} must be {'>' if exclusive else '>='} {minimum}")
            return False
        return True


def load_spec(path: str | Path, storage_override: str | None = None) -> SweepSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError([f"(file): cannot read {str(path)!r}: {err.strerror}"], str(path)) from None
    return parse_spec(text, source=str(path), storage_override=storage_override)


def parse_spec(text: str, source: str = "sweep", storage_override: str | None = None) -> SweepSpec:
    try:
        doc = yaml.load(text, Loader=_NoDuplicateLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError([f"(yaml) {where}: {problem}"], source) from None
    c = _Checker()
    doc = c.mapping(doc, TOP, TOP_KEYS, REQUIRED_TOP, " at the top of the file")
    if doc is None:
        raise SpecError(c.problems, source)

    name = doc.get("name")
    if "name" in doc and (not isinstance(name, str) or not NAME_RE.match(name)):
        c.err(
            "name",
            f"{name!r} is not a valid sweep name; use 1-100 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit",
        )
    storage = storage_override or doc.get("storage", DEFAULT_STORAGE)
    if not isinstance(storage, str) or not storage.strip():
        c.err("storage", f"{storage!r} is not a path; give a local or NFS folder such as ./ddsweep-runs")
    elif "://" in storage:
        try:
            from workers.storage import Storage

            Storage(storage)
        except Exception as err:  # pyarrow: unknown scheme, bad query option, ...
            c.err(
                "storage",
                f"{storage!r} is not a usable storage URI ({str(err).splitlines()[0]}); give a "
                "local/NFS path or s3://bucket/prefix[?endpoint_override=host:port&scheme=http]",
            )

    dataset, ds_info = _dataset(c, doc.get("dataset")) if "dataset" in doc else (None, None)
    student = _named_with_options(c, doc.get("student"), "student", ARCHS, "arch") if "student" in doc else None
    _convnet_fits(c, student, ds_info, "student")
    budget = _budget(c, doc.get("budget")) if "budget" in doc else None
    selector_defaults = _selector_defaults(c, doc.get("selectors", {}))
    axes = _grid(c, doc.get("grid"), selector_defaults, ds_info) if "grid" in doc else None
    recipes = _train(c, doc.get("train", {}))
    train = recipes["hl"]  # also the recipe of full-data score runs (they train with hard labels)
    resources = _resources(c, doc.get("resources", {}))
    exclude = _exclude(c, doc.get("exclude", []), axes) if axes else ()
    teacher = _teacher(c, doc["teacher"], ds_info) if "teacher" in doc else None
    warnings: list[str] = []
    if axes and dataset and budget and student:
        _selector_rules(c, warnings, axes, dataset, student, budget, train, teacher)
    if axes:
        users = [f"regime {r!r}" for r in axes["regime"] if REGIMES[r].meta.get("needs_teacher")]
        users += [f"selector {s.name!r}" for s in axes["selector"] if needs_teacher(s, "hl")]
        if users and "teacher" not in doc:
            c.err(
                "teacher",
                f"is required by {', '.join(dict.fromkeys(users))}; add e.g. "
                "teacher: {arch: convnet, epochs: 30} (trained here) or teacher: {arch: ..., weights: PATH}",
            )
        for r in axes["regime"]:
            t = recipes[r]
            if r != "hl" and t.optimizer == "sgd" and not t.t2_scale:
                warnings.append(
                    f"train.{r}: SGD with soft labels and t2_scale: false divides the effective learning "
                    f"rate by T^2 = {t.temperature**2:g} (METHODS.md §1.4)"
                )

    if c.problems:
        raise SpecError(c.problems, source)
    return SweepSpec(
        name=name,
        storage=storage,
        dataset=dataset,
        student=student,
        budget=budget,
        selectors=axes["selector"],
        regimes=axes["regime"],
        ipcs=axes["ipc"],
        seeds=axes["seed"],
        train=train,
        recipes=recipes,
        resources=resources,
        exclude=exclude,
        teacher=teacher,
        warnings=tuple(warnings),
        source=text,
    )


def _selector_rules(c: _Checker, warnings: list[str], axes: dict, dataset, student, budget, train, teacher) -> None:
    """Method-specific checks that need the whole trial (errors: `validate`, e.g. RDED's pool size; warnings:
    `advise`, e.g. CAD's scoring run raised to J + W epochs), first offending IPC per selector."""
    from workers.config import TrialConfig

    for i, sel in enumerate(axes["selector"]):
        for kind in ("validate", "advise"):
            rule = SELECTORS[sel.name].meta.get(kind)
            for ipc in axes["ipc"] if rule else ():
                msg = rule(
                    sel,
                    TrialConfig(
                        dataset=dataset,
                        student=student,
                        selector=sel,
                        regime="hl",
                        ipc=ipc,
                        seed=0,
                        budget=budget,
                        train=train,
                        teacher=teacher,
                    ),
                )
                if msg and kind == "validate":
                    c.err(f"grid.selector[{i}]", f"{sel.label()}: {msg}")
                    break
                if msg:
                    warnings.append(f"grid.selector[{i}]: {sel.label()}: {msg}")
                    break


def _convnet_fits(c: _Checker, net: Named | None, ds_info: dict | None, path: str) -> None:
    """ConvNet-D halves the image `depth` times; the model refuses to build below 1px (workers.models.convnet)."""
    if net and net.name == "convnet" and ds_info:
        side = ds_info["image_shape"][1]
        if side >> net.opts["depth"] < 1:
            c.err(
                f"{path}.depth",
                f"{net.opts['depth']} halves a {side}px image below 1px; use depth <= {side.bit_length() - 1}",
            )


TEACHER_KEYS = tuple(f for f in TeacherConfig.__dataclass_fields__ if f not in ("arch", "weights_sha256"))


def _relative(path: str) -> str:
    # Not resolved for the user: under `ray job submit --working-dir` the driver's folder is Ray's package
    # folder, whose name changes with every upload, and the path is part of trial ids and artifact keys.
    return (
        f"{path!r} is relative; trials and stages run in other folders and on other nodes, so give the "
        f"absolute path (here that would be {str(Path(path).resolve())!r}), the same on every node"
    )


def _teacher(c: _Checker, value: Any, ds_info: dict | None) -> TeacherConfig | None:
    d = c.mapping(value, "teacher", None, ("arch",))
    if d is None:
        return None
    recipe = {k: v for k, v in d.items() if k in TEACHER_KEYS}
    arch = _named_with_options(c, {k: v for k, v in d.items() if k not in TEACHER_KEYS}, "teacher", ARCHS, "arch")
    before = len(c.problems)
    _convnet_fits(c, arch, ds_info, "teacher")
    w = recipe.get("weights")
    if w is not None and (not isinstance(w, str) or not Path(w).is_file()):
        c.err("teacher.weights", f"{w!r} is not an existing file; give the path of a local state_dict (.pt/.pth)")
    elif w is not None and not Path(w).is_absolute():
        c.err("teacher.weights", _relative(w))
    for key in ("epochs", "batch_size", "seed"):
        if key in recipe:
            c.number(recipe[key], f"teacher.{key}", integer=True, minimum=0 if key == "seed" else 1)
    for key in ("lr", "weight_decay", "min_top1_factor"):
        if key in recipe and c.number(recipe[key], f"teacher.{key}", minimum=0, exclusive=key == "lr"):
            recipe[key] = float(recipe[key])
    for key in ("optimizer", "augment"):
        if key in recipe and recipe[key] not in TRAIN_CHOICES[key]:
            c.err(f"teacher.{key}", f"{recipe[key]!r} is not allowed; choose one of {', '.join(TRAIN_CHOICES[key])}")
    if arch is None or len(c.problems) > before:
        return None
    if w is not None:
        from workers.artifacts import sha256_file

        recipe["weights_sha256"] = sha256_file(Path(w))
    return TeacherConfig(arch=arch, **recipe)


def _dataset(c: _Checker, value: Any) -> tuple[DatasetConfig | None, dict | None]:
    d = c.mapping(value, "dataset", None, ("name",))
    if d is None or "name" not in d:
        return None, None
    name = d["name"]
    if not isinstance(name, str) or name not in DATASETS:
        c.err("dataset.name", DATASETS.unknown(name, "dataset.name").split(": ", 1)[1])
        return None, None
    root = d.get("root")
    if root is not None and not isinstance(root, str):
        c.err("dataset.root", f"{root!r} is not a path")
        return None, None
    if DATASETS[name].meta.get("needs_root") and not root:
        c.err("dataset.root", f"is required for {name}: the folder that holds train/ and val/")
        return None, None
    if root is not None and not Path(root).is_dir():
        c.err("dataset.root", f"{root!r} is not an existing folder")
        return None, None
    if root is not None and not Path(root).is_absolute():
        c.err("dataset.root", _relative(root))
        return None, None
    given = {k: v for k, v in d.items() if k not in ("name", "root")}
    before = len(c.problems)
    opts, problems = DATASETS[name].resolve(given, "dataset")
    c.problems += problems
    if len(c.problems) > before:
        return None, None
    cfg = DatasetConfig(name=name, root=root, options=_frozen_options(opts))
    try:
        info = describe_dataset(name, root, opts)
    except Exception as err:  # a DataError from the loader: a path or layout the user can fix
        msg = str(err)
        c.err(*(msg.split(": ", 1) if msg.startswith("dataset.") else ("dataset", msg)))
        return None, None
    return cfg, info


def _named_with_options(c: _Checker, value: Any, path: str, registry, key: str) -> Named | None:
    d = c.mapping(value, path, None, (key,))
    if d is None or key not in d:
        return None
    name = d[key]
    if not isinstance(name, str) or name not in registry:
        c.err(f"{path}.{key}", registry.unknown(name, "x").split(": ", 1)[1])
        return None
    opts, problems = registry[name].resolve({k: v for k, v in d.items() if k != key}, path)
    c.problems += problems
    return None if problems else Named.make(name, opts)


def _budget(c: _Checker, value: Any) -> BudgetConfig | None:
    d = c.mapping(value, "budget", BUDGET_UNITS)
    if d is None:
        return None
    units = [u for u in BUDGET_UNITS if u in d]
    if len(units) != 1:
        if len(d) and not units:
            return None  # unknown keys already reported
        c.err(
            "budget",
            f"give exactly one of {', '.join(BUDGET_UNITS)}; got {len(units)}"
            + (f" ({', '.join(units)})" if units else ""),
        )
        return None
    unit = units[0]
    if not c.number(d[unit], f"budget.{unit}", integer=unit == "steps", minimum=0, exclusive=True):
        return None
    return BudgetConfig(unit=unit, value=float(d[unit]) if unit != "steps" else int(d[unit]))


def _selector_defaults(c: _Checker, value: Any) -> dict[str, dict]:
    d = c.mapping(value, "selectors", None)
    out = {}
    for name, opts in (d or {}).items():
        if name not in SELECTORS:
            c.err(f"selectors.{name}", SELECTORS.unknown(name, "x").split(": ", 1)[1])
        elif c.mapping(opts if opts is not None else {}, f"selectors.{name}", None) is not None:
            _, problems = SELECTORS[name].resolve(opts, f"selectors.{name}")
            c.problems += problems
            if not problems:
                out[name] = dict(opts or {})
    return out


def _axis_list(c: _Checker, grid: dict, axis: str) -> list | None:
    if axis not in grid:
        return None  # reported as required
    values = grid[axis]
    if values is None:
        values = []  # `seed:` with nothing after it
    if not isinstance(values, list):
        values = [values]  # a scalar is a one-value axis
    if not values:
        c.err(f"grid.{axis}", "is empty; list at least one value")
        return None
    return values


def _grid(c: _Checker, value: Any, selector_defaults: dict[str, dict], ds_info: dict | None) -> dict | None:
    g = c.mapping(value, "grid", AXES, AXES, " with the axes selector, regime, ipc, seed")
    if g is None:
        return None
    out: dict[str, tuple] = {}
    where: dict[str, list[int]] = {axis: [] for axis in AXES}  # YAML index of each kept value
    before = len(c.problems)

    sels = []
    for i, item in enumerate(_axis_list(c, g, "selector") or []):
        path = f"grid.selector[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            c.err(path, f"{item!r} is not a selector; write a name (random) or a mapping {{name: ..., option: ...}}")
            continue
        name = item["name"]
        if name not in SELECTORS:
            c.err(path, SELECTORS.unknown(name, "x").split(": ", 1)[1])
            continue
        given = {**selector_defaults.get(name, {}), **{k: v for k, v in item.items() if k != "name"}}
        opts, problems = SELECTORS[name].resolve(given, path)
        c.problems += problems
        if problems:
            continue
        sels.append(Named.make(name, opts))
        where["selector"].append(i)
    out["selector"] = tuple(sels)

    regimes = []
    for i, r in enumerate(_axis_list(c, g, "regime") or []):
        if not isinstance(r, str) or r not in REGIMES:
            c.err(f"grid.regime[{i}]", REGIMES.unknown(r, "x").split(": ", 1)[1])
        else:
            regimes.append(r)
            where["regime"].append(i)
    out["regime"] = tuple(regimes)

    smallest = None
    if ds_info:
        sizes = ds_info["train_class_sizes"]
        k = min(range(len(sizes)), key=sizes.__getitem__)
        smallest = (sizes[k], ds_info["class_names"][k])
    ipcs = []
    for i, v in enumerate(_axis_list(c, g, "ipc") or []):
        if c.number(v, f"grid.ipc[{i}]", integer=True, minimum=1):
            if smallest and v > smallest[0]:
                c.err(
                    f"grid.ipc[{i}]",
                    f"{v} is more than the smallest class has ({smallest[0]} train images in "
                    f"class {smallest[1]!r}); use ipc <= {smallest[0]}",
                )
            else:
                ipcs.append(v)
                where["ipc"].append(i)
    out["ipc"] = tuple(ipcs)

    seeds = []
    for i, v in enumerate(_axis_list(c, g, "seed") or []):
        if c.number(v, f"grid.seed[{i}]", integer=True, minimum=0):
            seeds.append(v)
            where["seed"].append(i)
    out["seed"] = tuple(seeds)

    for axis, vals in out.items():
        seen: dict[Any, int] = {}
        for i, v in zip(where[axis], vals):
            if v in seen:
                shown = v.label() if isinstance(v, Named) else repr(v)
                c.err(f"grid.{axis}[{i}]", f"{shown} repeats grid.{axis}[{seen[v]}]; list each value once")
            seen.setdefault(v, i)
    return out if len(c.problems) == before else None


def _train_fields(c: _Checker, d: dict, prefix: str) -> dict[str, Any]:
    good = {}
    for f in fields(TrainConfig):
        if f.name not in d:
            continue
        v, path = d[f.name], f"{prefix}.{f.name}"
        if f.name in TRAIN_CHOICES:
            if v not in TRAIN_CHOICES[f.name]:
                c.err(path, f"{v!r} is not allowed; choose one of {', '.join(TRAIN_CHOICES[f.name])}")
                continue
        elif f.name == "t2_scale":
            if not isinstance(v, bool):
                c.err(path, f"{v!r} is not true or false")
                continue
        elif f.name in ("batch_size", "eval_points"):
            if not c.number(v, path, integer=True, minimum=1):
                continue
        elif f.name == "kd_topk":  # an int (0 = keep all logits); a float would reach Tensor.topk
            if not c.number(v, path, integer=True, minimum=0):
                continue
        elif f.name in ("lr", "temperature"):
            if not c.number(v, path, minimum=0, exclusive=True):
                continue
            v = float(v)
        elif not c.number(v, path, minimum=0):
            continue
        else:
            v = float(v)
        good[f.name] = v
    return good


def _train(c: _Checker, value: Any) -> dict[str, TrainConfig]:
    """One recipe per regime: the regime's METHODS.md defaults < `train:` < `train.<regime>:`."""
    allowed = tuple(f.name for f in fields(TrainConfig)) + tuple(REGIMES.names())
    d = c.mapping(value if value is not None else {}, "train", allowed) or {}
    common = _train_fields(c, d, "train")
    recipes = {}
    for r in REGIMES.names():
        own = (
            c.mapping(
                d.get(r) if d.get(r) is not None else {}, f"train.{r}", tuple(f.name for f in fields(TrainConfig))
            )
            or {}
        )
        recipes[r] = TrainConfig(
            **{**REGIMES[r].meta.get("recipe", {}), **common, **_train_fields(c, own, f"train.{r}")}
        )
    return recipes


def _resources(c: _Checker, value: Any) -> Resources:
    allowed = tuple(f.name for f in fields(Resources))
    d = c.mapping(value if value is not None else {}, "resources", allowed) or {}
    good: dict[str, Any] = {}
    for key in ("gpus_per_trial", "cpus_per_trial"):
        if key in d and c.number(d[key], f"resources.{key}", minimum=0):
            good[key] = float(d[key])
    if good.get("gpus_per_trial", 0) == 0 and good.get("cpus_per_trial", 1) == 0:
        c.err("resources.cpus_per_trial", "0 with gpus_per_trial 0 would schedule unlimited trials; give >= 0.1")
    if d.get("max_concurrent") is not None and c.number(
        d["max_concurrent"], "resources.max_concurrent", integer=True, minimum=1
    ):
        good["max_concurrent"] = d["max_concurrent"]
    if "max_failures" in d and c.number(d["max_failures"], "resources.max_failures", integer=True, minimum=0):
        good["max_failures"] = d["max_failures"]
    return Resources(**good)


def _exclude(c: _Checker, value: Any, axes: dict) -> tuple:
    if not isinstance(value, list):
        c.err("exclude", f"expected a list of {{axis: value}} mappings, got {_type_name(value)}")
        return ()
    out = []
    for i, item in enumerate(value):
        path = f"exclude[{i}]"
        d = c.mapping(item, path, AXES)
        if d is None or not d or any(k not in AXES for k in d):
            if d == {}:
                c.err(path, "is empty and would exclude the whole grid; name at least one axis")
            continue
        ok = True
        for axis, v in d.items():
            present = (
                [s.name for s in axes["selector"]] + [s.label() for s in axes["selector"]]
                if axis == "selector"
                else list(axes[axis])
            )
            if v not in present:
                c.err(
                    f"{path}.{axis}",
                    f"{v!r} matches nothing in grid.{axis}; the grid has {', '.join(map(str, dict.fromkeys(present)))}",
                )
                ok = False
        if ok:
            out.append(tuple(sorted(d.items())))
    return tuple(out)
