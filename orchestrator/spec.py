"""Sweep YAML -> SweepSpec (frozen dataclasses). Every problem is reported at once with its YAML path.

The settings of each section are validated against the schemas the project declares once: the
catalogue's option schemas (data sets, architectures, selectors), TRAIN_OPTIONS and TEACHER_OPTIONS
(workers.config) and RESOURCE_OPTIONS here; this module only walks the YAML.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from orchestrator.results import SweepStore
from workers.catalogue import ARCHS, DATASETS, REGIMES, SCORE_RUN_RECIPE, SELECTORS, dataset_facts
from workers.config import (
    BUDGET_UNITS,
    TEACHER_OPTIONS,
    TRAIN_OPTIONS,
    BudgetConfig,
    DatasetConfig,
    Named,
    TeacherConfig,
    TrainConfig,
    TrialConfig,
    _frozen_options,
    absolute_path_problem,
)
from workers.graph import needs_teacher
from workers.naming import arch_label
from workers.options import Option, did_you_mean, resolve

AXES = ("selector", "regime", "ipc", "seed")  # required in every grid
EXTRA_AXES = ("budget", "teacher", "student")  # optional: each replaces the top-level key of its name
TEACHER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # the whole name (fullmatch: no trailing newline)
DEFAULT_STORAGE = "./ddsweep-runs"
TOP = "(top level)"
TOP_KEYS = (
    "name",
    "storage",
    "dataset",
    "teacher",
    "teachers",
    "student",
    "budget",
    "grid",
    "selectors",
    "train",
    "resources",
    "exclude",
)
REQUIRED_TOP = ("name", "dataset", "grid")  # and student, budget: at the top or as a grid axis


class SpecError(Exception):
    """A sweep file a user can fix. `problems` lists every finding, each starting with its YAML path."""

    def __init__(self, problems: list[str], source: str = "sweep") -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__("\n".join([head] + [f"  - {p}" for p in problems]))


IPC = Option(None, int, "images per class", min=1)
SEED = Option(None, int, "a trial seed", min=0)
BUDGET_OPTIONS: dict[str, Option] = {
    "epochs": Option(None, float, "epochs over the subset", above=0.0),
    "full_epochs": Option(None, float, "full-dataset-equivalent epochs (images seen / N)", above=0.0),
    "steps": Option(None, int, "optimizer steps", min=1),
}
RESOURCE_OPTIONS: dict[str, Option] = {
    "gpus_per_trial": Option(0.0, float, "GPUs per trial and per network stage (fractions pack trials)", min=0.0),
    "cpus_per_trial": Option(1.0, float, "CPUs per trial and per stage", min=0.0),
    "max_concurrent": Option(
        None,
        int,
        "trials running at once at most, shared stages not counted (null: as many as fit)",
        min=1,
        nullable=True,
    ),
    "max_failures": Option(2, int, "retries of a failed trial before it is recorded as failed", min=0),
    "stage_workers": Option(
        1,
        int,
        "data-parallel workers (each with the trial's CPUs and GPUs) per score run, teacher training and full trial",
        min=1,
    ),
    "device_fraction": Option(
        0.5,
        float,
        "share of free device memory a training subset may take as uint8 (else pinned host memory, else streamed)",
        min=0.0,
        max=1.0,
    ),
}
_R = {k: o.default for k, o in RESOURCE_OPTIONS.items()}


@dataclass(frozen=True)
class Resources:
    gpus_per_trial: float = _R["gpus_per_trial"]
    cpus_per_trial: float = _R["cpus_per_trial"]
    max_concurrent: int | None = _R["max_concurrent"]
    max_failures: int = _R["max_failures"]
    device_fraction: float = _R["device_fraction"]
    stage_workers: int = _R["stage_workers"]


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
    recipes: dict = field(default_factory=dict)  # regime -> TrainConfig; `train`: the score runs' (hl's, crop+flip)
    warnings: tuple[str, ...] = ()
    source: str = ""  # the YAML text
    source_path: str | None = None  # the file it came from
    # The optional axes (grid.budget, grid.teacher, grid.student): their values, and which ones the grid lists.
    # Without the axis they hold the one top-level value (budget, student, (None, teacher)); `budget`,
    # `student` and `teacher` above are always the first value.
    budgets: tuple[BudgetConfig, ...] = ()
    teachers: tuple[tuple[str | None, TeacherConfig | None], ...] = ()  # (name in `teachers:`, config)
    students: tuple[Named, ...] = ()
    extra_axes: tuple[str, ...] = ()

    def store(self) -> SweepStore:
        """This sweep's folder in its storage: rows, failures, checkpoints, the lock (orchestrator.results)."""
        return SweepStore(self.storage, self.name)


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

    def valid(self, option: Option, value: Any, path: str) -> bool:
        """Check one value against a declared Option (integers are bounded by what a Parquet int64 stores)."""
        found = option.problems(value, path)
        self.problems += found
        return not found

    def settings(self, schema: dict[str, Option], given: dict, path: str, owner: str) -> dict[str, Any]:
        """The settings the user gave, validated against `schema` (problems recorded) and coerced."""
        _, problems = resolve(schema, given, path, owner)
        self.problems += problems
        return {k: schema[k].coerce(v) for k, v in given.items() if k in schema}


def load_spec(path: str | Path, storage_override: str | None = None) -> SweepSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError([f"(file): cannot read {str(path)!r}: {err.strerror}"], str(path)) from None
    spec = parse_spec(text, source=str(path), storage_override=storage_override)
    return replace(spec, source_path=str(path))


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
    if "name" in doc and (not isinstance(name, str) or not NAME_RE.fullmatch(name)):
        c.err(
            "name",
            f"{name!r} is not a valid sweep name; use 1-100 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit",
        )
    storage = _storage(c, storage_override or doc.get("storage", DEFAULT_STORAGE))
    dataset, ds_info = _dataset(c, doc.get("dataset")) if "dataset" in doc else (None, None)
    grid_doc = doc.get("grid") if isinstance(doc.get("grid"), dict) else {}
    for key, example in (
        ("student", "student: {arch: convnet, depth: 3}, or grid.student: [{arch: convnet}, {arch: resnet18}]"),
        ("budget", "budget: {full_epochs: 10}, or grid.budget: {full_epochs: [2, 5, 10]}"),
    ):
        if key in doc and key in grid_doc:
            c.err(f"grid.{key}", f"and the top-level `{key}:` both set the {key}; keep one of them")
        elif key not in doc and key not in grid_doc:
            c.err(key, f"is required; give {example}")
    student = _named_with_options(c, doc.get("student"), "student", ARCHS, "arch") if "student" in doc else None
    _convnet_fits(c, student, ds_info, "student")
    budget = _budget(c, doc.get("budget")) if "budget" in doc else None
    named_teachers = _teachers(c, doc, grid_doc, ds_info)
    selector_defaults = _selector_defaults(c, doc.get("selectors", {}))
    axes = _grid(c, doc.get("grid"), selector_defaults, ds_info, named_teachers) if "grid" in doc else None
    recipes, train = _train(c, doc.get("train", {}))  # train: the recipe of full-data score runs (hard labels)
    resources = _resources(c, doc.get("resources", {}))
    exclude = _exclude(c, doc.get("exclude", []), axes) if axes else ()
    if exclude and all(excluded(dict(zip(axes, point)), exclude) for point in itertools.product(*axes.values())):
        c.err("exclude", "removes every trial: the grid is empty; drop or narrow an entry")
    teacher = _teacher(c, doc["teacher"], ds_info) if "teacher" in doc else None
    extra = tuple(a for a in EXTRA_AXES if axes and a in axes)
    budgets = axes["budget"] if "budget" in extra else (budget,)
    students = axes["student"] if "student" in extra else (student,)
    teachers = tuple((n, named_teachers[n]) for n in axes["teacher"]) if "teacher" in extra else ((None, teacher),)
    warnings: list[str] = []
    if axes and dataset and None not in budgets and None not in students:
        for b, (tname, tcfg), st in itertools.product(budgets, teachers, students):
            where = ", ".join(
                f"{a} {v}"
                for a, v, n in (
                    ("budget", f"{b.unit}={b.value:g}", len(budgets)),
                    ("teacher", tname, len(teachers)),
                    ("student", arch_label(st), len(students)),
                )
                if n > 1
            )
            base = TrialConfig(dataset, st, Named("random"), "hl", 1, 0, b, train=train, teacher=tcfg)
            _selector_rules(c, warnings, axes, base, where, exclude)
    if axes:
        users = [f"regime {r!r}" for r in axes["regime"] if REGIMES[r].needs_teacher]
        users += [f"selector {s.name!r}" for s in axes["selector"] if needs_teacher(s, "hl")]
        if users and "teacher" not in doc and "teacher" not in grid_doc:
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
                    f"rate by T^2 = {t.temperature**2:g} (docs/methods.md §1.4)"
                )

    if c.problems:
        raise SpecError(c.problems, source)
    return SweepSpec(
        name=name,
        storage=storage,
        dataset=dataset,
        student=students[0],
        budget=budgets[0],
        selectors=axes["selector"],
        regimes=axes["regime"],
        ipcs=axes["ipc"],
        seeds=axes["seed"],
        train=train,
        recipes=recipes,
        resources=resources,
        exclude=exclude,
        teacher=teachers[0][1],
        warnings=tuple(dict.fromkeys(warnings)),
        source=text,
        budgets=budgets,
        teachers=teachers,
        students=students,
        extra_axes=extra,
    )


def _storage(c: _Checker, storage: Any) -> Any:
    """A URI as given; a path with `~` expanded and made absolute against the current folder, except inside
    a `ray job submit` working directory, which Ray deletes after the job (README: Running on a cluster)."""
    if not isinstance(storage, str) or not storage.strip():
        c.err("storage", f"{storage!r} is not a path; give a local or NFS folder such as ./ddsweep-runs")
    elif "://" not in storage:
        path = Path(storage).expanduser()
        if not path.is_absolute() and _in_ray_job_working_dir(Path.cwd()):
            c.err(
                "storage",
                f"{storage!r} is relative, and this runs inside a Ray job's working directory "
                f"({Path.cwd()}), which Ray deletes when the job ends; give the absolute path of "
                "shared storage, e.g. --storage /shared/ddsweep",
            )
        return str(path.resolve()) if not path.is_absolute() else str(path)
    else:
        from workers.storage import Storage

        try:
            Storage(storage)
        except Exception as err:  # pyarrow: unknown scheme, bad query option, ...
            c.err(
                "storage",
                f"{storage!r} is not a usable storage URI ({str(err).splitlines()[0]}); give a "
                "local/NFS path or s3://bucket/prefix[?endpoint_override=host:port&scheme=http]",
            )
    return storage


def _in_ray_job_working_dir(folder: Path) -> bool:
    """`ray job submit --working-dir` unpacks the upload into .../runtime_resources/.../_ray_pkg_<hash>."""
    return any(p.startswith("_ray_pkg_") or p == "runtime_resources" for p in folder.parts)


def _selector_rules(
    c: _Checker, warnings: list[str], axes: dict, base: TrialConfig, where: str = "", exclude: tuple = ()
) -> None:
    """Method-specific checks that need the whole trial (errors: `validate`, e.g. RDED's pool size; warnings:
    `advise`, e.g. CAD's scoring run raised to J + W epochs), first offending IPC per selector, skipping the
    (selector, IPC) pairs that `exclude` removes. `where` names the budget, teacher or student of `base` when
    the grid lists several."""
    at = f" ({where})" if where else ""
    pair_rules = tuple(r for r in exclude if {axis for axis, _ in r} <= {"selector", "ipc"})
    for i, sel in enumerate(axes["selector"]):
        entry = SELECTORS[sel.name]
        for rule, is_error in ((entry.validate, True), (entry.advise, False)):
            for ipc in axes["ipc"] if rule else ():
                if pair_rules and excluded({"selector": sel, "ipc": ipc}, pair_rules):
                    continue
                msg = rule(sel, replace(base, selector=sel, ipc=ipc))
                if msg:
                    if is_error:
                        c.err(f"grid.selector[{i}]", f"{sel.label()}{at}: {msg}")
                    else:
                        warnings.append(f"grid.selector[{i}]: {sel.label()}{at}: {msg}")
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


def _teachers(c: _Checker, doc: dict, grid_doc: dict, ds_info: dict | None) -> dict[str, TeacherConfig]:
    """`teachers: {name: {arch: ..., ...}}`, the named teachers `grid.teacher` chooses from (one `teacher:`
    otherwise). Names are for people: a trial's id holds its teacher's config, never its name."""
    given, listed = "teachers" in doc, "teacher" in grid_doc
    if listed and "teacher" in doc:
        c.err(
            "grid.teacher",
            "and the top-level `teacher:` both set the teacher; declare every teacher under "
            "teachers: {name: {arch: ...}} and list the names in grid.teacher",
        )
    if given and not listed:
        c.err("teachers", "declares named teachers, but grid.teacher lists none; add grid.teacher: [name, ...]")
    if listed and not given:
        c.err(
            "grid.teacher",
            "lists named teachers; declare them under teachers: {strong: {arch: convnet, epochs: 30}, "
            "weak: {arch: convnet, epochs: 3}}",
        )
    d = c.mapping(doc["teachers"], "teachers", None) if given else None
    out: dict[str, TeacherConfig] = {}
    seen: dict[TeacherConfig, str] = {}
    for name, value in (d or {}).items():
        path = f"teachers.{name}"
        if not isinstance(name, str) or not TEACHER_NAME_RE.fullmatch(name):
            c.err(path, f"{name!r} is not a teacher name; use 1-40 characters from A-Z a-z 0-9 . _ -")
            continue
        t = _teacher(c, value, ds_info, path)
        if t is None:
            continue
        if t in seen:
            c.err(path, f"is the same teacher as teachers.{seen[t]}; give each name a different teacher")
            continue
        seen[t] = name
        out[name] = t
    return out


def _teacher(c: _Checker, value: Any, ds_info: dict | None, path: str = "teacher") -> TeacherConfig | None:
    """`teacher:` holds the arch and its options, and the teacher recipe (TEACHER_OPTIONS)."""
    d = c.mapping(value, path, None, ("arch",))
    if d is None:
        return None
    before = len(c.problems)
    recipe = c.settings(TEACHER_OPTIONS, {k: v for k, v in d.items() if k in TEACHER_OPTIONS}, path, "the teacher")
    arch = _named_with_options(c, {k: v for k, v in d.items() if k not in TEACHER_OPTIONS}, path, ARCHS, "arch")
    _convnet_fits(c, arch, ds_info, path)
    if arch is None or len(c.problems) > before:
        return None
    if recipe.get("weights") is not None:
        from workers.artifacts import sha256_file

        recipe["weights_sha256"] = sha256_file(Path(recipe["weights"]))
    return TeacherConfig(arch=arch, **recipe)


def _dataset(c: _Checker, value: Any) -> tuple[DatasetConfig | None, dict | None]:
    d = c.mapping(value, "dataset", None, ("name",))
    if d is None or "name" not in d:
        return None, None
    name = d["name"]
    if not isinstance(name, str) or name not in DATASETS:
        c.err("dataset.name", DATASETS.unknown(name))
        return None, None
    root = d.get("root")
    if root is not None and not isinstance(root, str):
        c.err("dataset.root", f"{root!r} is not a path")
        return None, None
    if DATASETS[name].needs_root and not root:
        c.err("dataset.root", f"is required for {name}: {DATASETS[name].root_doc}")
        return None, None
    if root is not None and not Path(root).is_dir():
        c.err("dataset.root", f"{root!r} is not an existing folder")
        return None, None
    if root is not None and absolute_path_problem(root):
        c.err("dataset.root", f"{root!r} {absolute_path_problem(root)}")
        return None, None
    given = {k: v for k, v in d.items() if k not in ("name", "root")}
    before = len(c.problems)
    opts, problems = DATASETS[name].resolve(given, "dataset")
    c.problems += problems
    if len(c.problems) > before:
        return None, None
    if DATASETS[name].derive is not None:  # options that default to others, explicit in every trial's config
        opts = DATASETS[name].derive(opts)
    cfg = DatasetConfig(name=name, root=root, options=_frozen_options(opts))
    try:
        info = dataset_facts(name, root, opts)
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
        c.err(f"{path}.{key}", registry.unknown(name))
        return None
    opts, problems = registry[name].resolve({k: v for k, v in d.items() if k != key}, path)
    c.problems += problems
    return None if problems else Named.make(name, opts)


def _budget_unit(c: _Checker, value: Any, path: str) -> str | None:
    d = c.mapping(value, path, BUDGET_UNITS)
    if d is None:
        return None
    units = [u for u in BUDGET_UNITS if u in d]
    if len(units) != 1:
        if len(d) and not units:
            return None  # unknown keys already reported
        c.err(
            path,
            f"give exactly one of {', '.join(BUDGET_UNITS)}; got {len(units)}"
            + (f" ({', '.join(units)})" if units else ""),
        )
        return None
    return units[0]


def _budget_value(unit: str, value: Any) -> BudgetConfig:
    return BudgetConfig(unit=unit, value=float(value) if unit != "steps" else int(value))


def _budget(c: _Checker, value: Any) -> BudgetConfig | None:
    unit = _budget_unit(c, value, "budget")
    if unit is None or not c.valid(BUDGET_OPTIONS[unit], value[unit], f"budget.{unit}"):
        return None
    return _budget_value(unit, value[unit])


def _budget_axis(c: _Checker, value: Any) -> list[tuple[int, BudgetConfig]]:
    """`grid.budget: {full_epochs: [2, 5, 10]}`: budgets in one unit, (YAML index, budget) each."""
    unit = _budget_unit(c, value, "grid.budget")
    if unit is None:
        return []
    values = value[unit]
    values = [values] if not isinstance(values, list) else values
    if not values:
        c.err(f"grid.budget.{unit}", "is empty; list at least one value")
    option = BUDGET_OPTIONS[unit]
    return [(i, _budget_value(unit, v)) for i, v in enumerate(values) if c.valid(option, v, f"grid.budget.{unit}[{i}]")]


def _selector_defaults(c: _Checker, value: Any) -> dict[str, dict]:
    d = c.mapping(value, "selectors", None)
    out = {}
    for name, opts in (d or {}).items():
        if name not in SELECTORS:
            c.err(f"selectors.{name}", SELECTORS.unknown(name))
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


def _grid(
    c: _Checker,
    value: Any,
    selector_defaults: dict[str, dict],
    ds_info: dict | None,
    named_teachers: dict[str, TeacherConfig] | None = None,
) -> dict | None:
    g = c.mapping(value, "grid", AXES + EXTRA_AXES, AXES, " with the axes selector, regime, ipc, seed")
    if g is None:
        return None
    before = len(c.problems)
    axes = AXES + tuple(a for a in EXTRA_AXES if a in g)
    kept: dict[str, list[tuple[int, Any]]] = {axis: [] for axis in axes}  # (YAML index, value)

    for i, item in enumerate(_axis_list(c, g, "selector") or []):
        sel = _selector(c, item, f"grid.selector[{i}]", selector_defaults)
        if sel is not None:
            kept["selector"].append((i, sel))
    for i, r in enumerate(_axis_list(c, g, "regime") or []):
        if not isinstance(r, str) or r not in REGIMES:
            c.err(f"grid.regime[{i}]", REGIMES.unknown(r))
        else:
            kept["regime"].append((i, r))
    smallest = None
    if ds_info:
        sizes = ds_info["train_class_sizes"]
        k = min(range(len(sizes)), key=sizes.__getitem__)
        smallest = (sizes[k], ds_info["class_names"][k])
    for i, v in enumerate(_axis_list(c, g, "ipc") or []):
        if c.valid(IPC, v, f"grid.ipc[{i}]"):
            if smallest and v > smallest[0]:
                c.err(
                    f"grid.ipc[{i}]",
                    f"{v} is more than the smallest class has ({smallest[0]} train images in "
                    f"class {smallest[1]!r}); use ipc <= {smallest[0]}",
                )
            else:
                kept["ipc"].append((i, v))
    for i, v in enumerate(_axis_list(c, g, "seed") or []):
        if c.valid(SEED, v, f"grid.seed[{i}]"):
            kept["seed"].append((i, v))
    if "budget" in g:
        kept["budget"] = _budget_axis(c, g["budget"])
    for i, item in enumerate(_axis_list(c, g, "student") or []):
        item = {"arch": item} if isinstance(item, str) else item
        st = _named_with_options(c, item, f"grid.student[{i}]", ARCHS, "arch")
        _convnet_fits(c, st, ds_info, f"grid.student[{i}]")
        if st is not None:
            kept["student"].append((i, st))
    named_teachers = named_teachers or {}
    for i, name in enumerate(_axis_list(c, g, "teacher") or []):
        if isinstance(name, str) and name in named_teachers:
            kept["teacher"].append((i, name))
        elif not isinstance(name, str):
            c.err(f"grid.teacher[{i}]", f"{name!r} is not a teacher name; list names declared under teachers:")
        elif named_teachers:  # (no `teachers:` at all is reported once, by _teachers)
            c.err(
                f"grid.teacher[{i}]",
                f"{name!r} is not declared under teachers:{did_you_mean(name, named_teachers)}; "
                f"declared: {', '.join(named_teachers)}",
            )

    for axis, pairs in kept.items():
        seen: dict[Any, int] = {}
        for i, v in pairs:
            if v in seen:
                if isinstance(v, BudgetConfig):
                    shown, path = f"{v.value:g}", f"grid.budget.{v.unit}[{i}]"
                    first = f"grid.budget.{v.unit}[{seen[v]}]"
                else:
                    shown = (arch_label(v) if axis == "student" else v.label()) if isinstance(v, Named) else repr(v)
                    path, first = f"grid.{axis}[{i}]", f"grid.{axis}[{seen[v]}]"
                c.err(path, f"{shown} repeats {first}; list each value once")
            seen.setdefault(v, i)
    out = {axis: tuple(v for _, v in pairs) for axis, pairs in kept.items()}
    return out if len(c.problems) == before else None


def _selector(c: _Checker, item: Any, path: str, selector_defaults: dict[str, dict]) -> Named | None:
    """A grid entry `name` or `{name: ..., option: ...}`, over the sweep's `selectors:` defaults."""
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        c.err(path, f"{item!r} is not a selector; write a name (random) or a mapping {{name: ..., option: ...}}")
        return None
    name = item["name"]
    if name not in SELECTORS:
        c.err(path, SELECTORS.unknown(name))
        return None
    given = {**selector_defaults.get(name, {}), **{k: v for k, v in item.items() if k != "name"}}
    opts, problems = SELECTORS[name].resolve(given, path)
    c.problems += problems
    return None if problems else Named.make(name, opts)


def _train(c: _Checker, value: Any) -> tuple[dict[str, TrainConfig], TrainConfig]:
    """One recipe per regime: the regime's declared recipe < `train:` < `train.<regime>:` (TRAIN_OPTIONS); and
    the recipe of score runs: hl's, with SCORE_RUN_RECIPE's views unless the sweep sets them."""
    d = c.mapping(value if value is not None else {}, "train", tuple(TRAIN_OPTIONS) + tuple(REGIMES.names())) or {}
    common = c.settings(
        TRAIN_OPTIONS, {k: v for k, v in d.items() if k in TRAIN_OPTIONS}, "train", "the student recipe"
    )
    recipes = {}
    for r in REGIMES.names():
        own = c.mapping(d.get(r) if d.get(r) is not None else {}, f"train.{r}", tuple(TRAIN_OPTIONS)) or {}
        own = c.settings(
            TRAIN_OPTIONS, {k: v for k, v in own.items() if k in TRAIN_OPTIONS}, f"train.{r}", f"the {r} recipe"
        )
        recipes[r] = TrainConfig(**{**REGIMES[r].recipe, **common, **own})
        if r == "hl":
            scoring = TrainConfig(**{**REGIMES[r].recipe, **SCORE_RUN_RECIPE, **common, **own})
    return recipes, scoring


def _resources(c: _Checker, value: Any) -> Resources:
    d = c.mapping(value if value is not None else {}, "resources", tuple(RESOURCE_OPTIONS)) or {}
    good = c.settings(RESOURCE_OPTIONS, {k: v for k, v in d.items() if k in RESOURCE_OPTIONS}, "resources", "resources")
    if good.get("gpus_per_trial", 0) == 0 and good.get("cpus_per_trial", 1) == 0:
        c.err("resources.cpus_per_trial", "0 with gpus_per_trial 0 would schedule unlimited trials; give >= 0.1")
    gpus, workers = good.get("gpus_per_trial", 0), good.get("stage_workers", 1)
    if workers > 1 and 0 < gpus < 1:
        c.err(
            "resources.stage_workers",
            f"{workers} data-parallel workers need whole GPUs, but gpus_per_trial is {gpus} (NCCL cannot put two "
            "ranks on one GPU); set gpus_per_trial: 1 or stage_workers: 1",
        )
    return Resources(**good)


def _exclude(c: _Checker, value: Any, axes: dict) -> tuple:
    if not isinstance(value, list):
        c.err("exclude", f"expected a list of {{axis: value}} mappings, got {_type_name(value)}")
        return ()
    out = []
    for i, item in enumerate(value):
        path = f"exclude[{i}]"
        d = c.mapping(item, path, tuple(axes))
        if d is None or not d or any(k not in axes for k in d):
            if d == {}:
                c.err(path, "is empty and would exclude the whole grid; name at least one axis")
            continue
        ok = True
        for axis, v in d.items():
            present = [shown for value in axes[axis] for shown in _spellings(axis, value)]
            if not any(_matches(axis, value, v) for value in axes[axis]):
                c.err(
                    f"{path}.{axis}",
                    f"{v!r} matches nothing in grid.{axis}; the grid has {', '.join(map(str, dict.fromkeys(present)))}",
                )
                ok = False
        if ok:
            out.append(tuple(sorted(d.items())))
    return tuple(out)


def _spellings(axis: str, value: Any) -> tuple:
    """How an `exclude` rule may name a grid value: a selector or student by name or label, a budget by its
    number, anything else as itself."""
    if axis == "selector":
        return (value.name, value.label())
    if axis == "student":
        return (value.name, arch_label(value), value.label())
    if axis == "budget":
        return (value.value,)
    return (value,)


def _matches(axis: str, value: Any, wanted: Any) -> bool:
    """Whether an `exclude` rule's `wanted` names `value`: one of its spellings, or, for a selector or student,
    `name(k=v,...)` listing only some of its options (`rded(mipc=400)` names every rded entry with mipc 400)."""
    if wanted in _spellings(axis, value):
        return True
    if axis not in ("selector", "student") or not isinstance(wanted, str):
        return False
    m = re.fullmatch(r"([\w.-]+)\((.+)\)", wanted.replace(" ", ""))
    if not m or m.group(1) != value.name:
        return False
    have = {f"{k}={v}" for k, v in value.options}
    return set(m.group(2).split(",")) <= have


def excluded(values: dict[str, Any], exclude) -> bool:
    """Whether a grid point {axis: value} matches one of the `exclude` rules (see _matches)."""
    return any(all(_matches(axis, values[axis], wanted) for axis, wanted in rule) for rule in exclude)
