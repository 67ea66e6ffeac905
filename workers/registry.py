"""Registries of datasets, architectures, selectors, regimes and stage kinds: metadata only, no torch.

Every entry carries its name, a one-line description, an option schema with defaults, and the import
path of its implementation ("module:attr"). The driver validates and plans a sweep from this metadata
alone (a CPU head node never imports torch); the implementation is imported only where a trial or a
stage runs. Adding a method = one implementation module plus one `declare(...)` line below.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from workers.config import LABEL_FIELDS, ArtifactKey, DatasetConfig, Named, TeacherConfig, TrainConfig, TrialConfig


@dataclass(frozen=True)
class Option:
    """One option of a registry entry. `kind` is int, float, str or bool; `choices` restricts values."""

    default: Any
    kind: type
    doc: str
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    check: Callable[[Any], str | None] | None = None  # custom rule (kind=object): returns a message or None

    def problems(self, value: Any, path: str) -> list[str]:
        if self.check is not None:
            msg = self.check(value)
            return [f"{path}: {value!r} {msg}"] if msg else []
        ok_types: tuple[type, ...] = (int, float) if self.kind is float else (self.kind,)
        if isinstance(value, bool) and self.kind is not bool:
            ok_types = ()
        if not isinstance(value, ok_types):
            return [f"{path}: {value!r} is not {self.kind.__name__}; {self.doc}"]
        if self.choices is not None and value not in self.choices:
            return [f"{path}: {value!r} is not allowed; choose one of {', '.join(map(str, self.choices))}"]
        if self.min is not None and value < self.min:
            return [f"{path}: {value!r} is below the minimum {self.min}; {self.doc}"]
        if self.max is not None and value > self.max:
            return [f"{path}: {value!r} is above the maximum {self.max}; {self.doc}"]
        return []


@dataclass(frozen=True)
class Entry:
    name: str
    description: str
    impl: str
    options: Mapping[str, Option] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        """Import and return the implementation (may import torch)."""
        module, _, attr = self.impl.partition(":")
        return getattr(importlib.import_module(module), attr)

    def resolve(self, given: Mapping[str, Any] | None, path: str) -> tuple[dict[str, Any], list[str]]:
        """Fill defaults and validate user options. Returns (resolved options, problems)."""
        given = dict(given or {})
        problems: list[str] = []
        for key in sorted(set(given) - set(self.options)):
            known = ", ".join(sorted(self.options)) or "none"
            problems.append(
                f"{path}.{key}: {self.name!r} has no option {key!r}{did_you_mean(key, self.options)}; "
                f"its options: {known}"
            )
        resolved = {}
        for key, opt in self.options.items():
            value = given.get(key, opt.default)
            if key in given:
                problems += opt.problems(value, f"{path}.{key}")
            if opt.kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            resolved[key] = value
        return resolved, problems


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Registry:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def declare(
        self, name: str, description: str, impl: str, options: Mapping[str, Option] | None = None, **meta: Any
    ) -> Entry:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} declared twice")
        entry = Entry(name, description, impl, dict(options or {}), meta)
        self._entries[name] = entry
        return entry

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> Entry:
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def unknown(self, name: Any, path: str) -> str:
        return (
            f"{path}: {name!r} is not a known {self.kind}{did_you_mean(name, self._entries)}; "
            f"choose one of {', '.join(self._entries)}"
        )


DATASETS = Registry("dataset")
ARCHS = Registry("arch")
SELECTORS = Registry("selector")
REGIMES = Registry("regime")
STAGES = Registry("stage")

# ---------------------------------------------------------------- datasets
DATASETS.declare(
    "digits",
    "scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), embedded; no download",
    "workers.data.digits:load",
    {
        "image_size": Option(8, int, "side in pixels; 8 is native, 16 and 32 repeat each pixel", choices=(8, 16, 32)),
        "minival_per_class": Option(10, int, "images per class held out of train for model choices", min=1),
        "test_fraction": Option(0.2, float, "fraction of each class kept as the test split", min=0.05, max=0.5),
    },
    describe="workers.data.digits:describe",
)

DATASETS.declare(
    "imagefolder",
    "a local tree root/train/<class>/ and root/val/<class>/ (ImageNet layout), decoded once to uint8",
    "workers.data.imagefolder:load",
    {
        "image_size": Option(32, int, "side after shorter-side resize and centre crop", min=8, max=512),
        "minival_per_class": Option(10, int, "train images per class held out for model choices", min=1),
    },
    describe="workers.data.imagefolder:describe",
    needs_root=True,
)

# ---------------------------------------------------------------- architectures
ARCHS.declare(
    "convnet",
    "ConvNet-D<depth> of the DD literature: [conv3x3-norm-relu-avgpool] x depth, linear head",
    "workers.models:convnet",
    {
        "depth": Option(3, int, "number of conv blocks", min=1, max=6),
        "width": Option(64, int, "channels per conv layer", min=4),
        "norm": Option("instance", str, "normalisation layer", choices=("instance", "batch", "none")),
    },
)
ARCHS.declare(
    "resnet18",
    "torchvision ResNet-18 (random init); a 3x3 stem without max-pool for images under 64 px",
    "workers.models:resnet18",
    {"small_input_stem": Option("auto", str, "auto: 3x3 stem when image_size < 64", choices=("auto", "yes", "no"))},
)
ARCHS.declare(
    "mlp",
    "two hidden layers of ReLU units on flattened pixels",
    "workers.models:mlp",
    {"width": Option(256, int, "units per hidden layer", min=4)},
)

# ---------------------------------------------------------------- regimes
# recipe = the regime's default student recipe (METHODS.md §2.3, the paper's small-scale Table 4). The
# sweep's `train:` overrides it for every regime, `train.<regime>:` for one. Reconstructions: HL
# momentum/wd (0.9 / 5e-4, as reproductions), SL wd 0.01, batch 256 for SL+KD, crop_flip for DSA.
REGIMES.declare(
    "hl",
    "hard labels: cross-entropy on one-hot targets, no teacher",
    "workers.regimes:hl",
    label_fields=(),
    recipe={
        "optimizer": "sgd",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "step",
        "batch_size": 256,
        "augment": "crop_flip",
    },
)
REGIMES.declare(
    "sl",
    "one fixed teacher soft label per image (clean view), reused for every augmented view",
    "workers.regimes:sl",
    needs_teacher=True,
    label_fields=("temperature", "t2_scale"),
    recipe={
        "optimizer": "adamw",
        "lr": 0.001,
        "weight_decay": 0.01,
        "schedule": "cosine",
        "batch_size": 256,
        "augment": "crop_flip",
        "temperature": 20.0,
    },
)
REGIMES.declare(
    "sl_kd",
    "a fresh teacher soft label for every RRC+flip+CutMix view (train.kd_backend: online | stored)",
    "workers.regimes:sl_kd",
    needs_teacher=True,
    label_fields=LABEL_FIELDS,
    recipe={
        "optimizer": "adamw",
        "lr": 0.001,
        "weight_decay": 0.01,
        "schedule": "half_cosine",
        "batch_size": 256,
        "temperature": 20.0,
    },
)

# ---------------------------------------------------------------- selectors
# meta: inputs = stages the selection reads ("features": teacher penultimate features;
# "dynamics": full-data HL runs of the student arch), epochs_option = the option giving the run length.
_RUNS = Option(10, int, "independent full-data runs averaged (METHODS.md §4.4: 10)", min=1)
_EPOCH = Option(20, int, "full-data epochs of the scoring runs (METHODS.md §4.4: 20)", min=1)
_DYN_EPOCHS = Option(30, int, "full-data epochs of the one scoring run", min=2)

SELECTORS.declare(
    "random",
    "IPC images per class drawn uniformly without replacement, seeded per (seed, class)",
    "workers.selectors.random:select",
)
SELECTORS.declare(
    "full",
    "the whole train split, trained with the budget of the IPC it is paired with",
    "workers.selectors.full:select",
    balanced=False,
)
SELECTORS.declare(
    "herding",
    "herding on teacher features (argmin convention): keeps prototypical images",
    "workers.selectors.geometric:herding",
    inputs=("features",),
)
SELECTORS.declare(
    "kcenter",
    "greedy farthest-point k-center on teacher features: keeps coverage (outliers)",
    "workers.selectors.geometric:kcenter",
    {"first": Option("random", str, "first centre", choices=("random", "medoid"))},
    inputs=("features",),
)
SELECTORS.declare(
    "kmeans_medoid",
    "per class k-means (k = IPC) on teacher features, nearest real image to each centroid",
    "workers.selectors.geometric:kmeans_medoid",
    {"iters": Option(50, int, "Lloyd iterations at most", min=1)},
    inputs=("features",),
)
SELECTORS.declare(
    "el2n",
    "highest EL2N (hardest): mean ||p - e_y|| over runs at an early epoch",
    "workers.selectors.scored:el2n",
    {"runs": _RUNS, "epoch": _EPOCH},
    inputs=("dynamics",),
    epochs_option="epoch",
)
SELECTORS.declare(
    "el2n_easy",
    "lowest EL2N (easiest)",
    "workers.selectors.scored:el2n_easy",
    {"runs": _RUNS, "epoch": _EPOCH},
    inputs=("dynamics",),
    epochs_option="epoch",
)
SELECTORS.declare(
    "el2n_window",
    "EL2N-Best: IPC consecutive images per class at offset (0 hardest, 1 easiest)",
    "workers.selectors.scored:el2n_window",
    {"offset": Option(0.5, float, "window offset in [0, 1]", min=0.0, max=1.0), "runs": _RUNS, "epoch": _EPOCH},
    inputs=("dynamics",),
    epochs_option="epoch",
)
SELECTORS.declare(
    "grand",
    "highest GraNd: last-layer gradient norm near initialisation, mean over runs",
    "workers.selectors.scored:grand",
    {"runs": _RUNS, "epoch": Option(0, int, "epoch of the score (0 = at init)", min=0)},
    inputs=("dynamics",),
    epochs_option="epoch",
)
SELECTORS.declare(
    "forgetting",
    "most forgetting events in one full-data run (never learned first)",
    "workers.selectors.scored:forgetting",
    {"epochs": _DYN_EPOCHS},
    inputs=("dynamics",),
    epochs_option="epochs",
)
SELECTORS.declare(
    "forgetting_easy",
    "fewest forgetting events (Forgetting-Easy)",
    "workers.selectors.scored:forgetting_easy",
    {"epochs": _DYN_EPOCHS},
    inputs=("dynamics",),
    epochs_option="epochs",
)
SELECTORS.declare(
    "ccs",
    "coverage-centric: drop the hardest by AUM, stratified sampling over the score range",
    "workers.selectors.scored:ccs",
    {
        "epochs": _DYN_EPOCHS,
        "hard_drop": Option(0.3, float, "hardest fraction dropped", min=0.0, max=0.99),
        "strata": Option(50, int, "equal-width score strata", min=1),
    },
    inputs=("dynamics",),
    epochs_option="epochs",
)
SELECTORS.declare(
    "d2",
    "D2-Pruning: EL2N difficulty passed over a kNN graph of teacher features",
    "workers.selectors.geometric:d2",
    {
        "epochs": _DYN_EPOCHS,
        "k": Option(5, int, "neighbours", min=0),
        "gamma_f": Option(1.0, float, "forward decay", min=0.0),
        "gamma_r": Option(0.1, float, "reverse decay", min=0.0),
    },
    inputs=("features", "dynamics"),
    epochs_option="epochs",
)
SELECTORS.declare(
    "dyn_unc",
    "dynamic uncertainty: mean over J-epoch windows of std(p_y); keeps the highest",
    "workers.selectors.scored:dyn_unc",
    {"epochs": _DYN_EPOCHS, "J": Option(10, int, "window length in epochs", min=2)},
    inputs=("dynamics",),
    epochs_option="epochs",
)


def _j_option(value: Any) -> str | None:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 2):
        return None
    return "is not a window length; give an integer >= 2 or auto (J = K - W)"


def cad_scoring_epochs(trial: TrialConfig) -> int:
    """K = round(E_down * IPC * C / N) (METHODS.md §2.4): the scoring run gets the downstream trial's
    compute, i.e. its full-dataset-equivalent epochs, whatever unit the sweep's budget is in; raised
    to J + W when the budget gives fewer (J: auto needs J >= 2, so K >= W + 2)."""
    opts = trial.selector.opts
    floor = opts["W"] + (2 if opts["J"] == "auto" else opts["J"])
    return max(_budget_epochs(trial), floor)


def _budget_epochs(trial: TrialConfig) -> int:
    from workers.budget import plan

    info = describe_dataset(trial.dataset.name, trial.dataset.root, trial.dataset.opts)
    n_cls = len(info["class_names"])
    recipe = trial.scoring or trial.train  # the hl recipe: K (and so the subset) never depends on the regime
    p = plan(trial.budget, trial.ipc * n_cls, info["num_train"], recipe.batch_size)
    return max(1, int(round(p.images_seen / info["num_train"])))


def cad_window(trial_opts: dict[str, Any], K: int) -> tuple[int, int]:
    W = trial_opts["W"]
    J = K - W if trial_opts["J"] == "auto" else trial_opts["J"]
    return J, W


def _cad_advice(selector: Named, trial: TrialConfig) -> str | None:
    """A warning, not an error: the scoring run is lengthened to K = J + W when the budget is smaller."""
    budget_k, K = _budget_epochs(trial), cad_scoring_epochs(trial)
    if K > budget_k:
        J, W = cad_window(selector.opts, K)
        return (
            f"at ipc {trial.ipc} the budget gives K = {budget_k} scoring epochs, fewer than J + W = {J} + {W}; "
            f"the scoring run uses K = {K} (more compute than the trial). Raise the budget or lower J/W to align"
        )
    return None


_CAD_OPTIONS = {
    "J": Option("auto", object, "window length", check=_j_option),
    "W": Option(2, int, "number of windows averaged (Eq. 2)", min=1),
    "shift": Option(False, bool, "windows end at the final epoch instead of the literal K-J-W..K-J-1"),
}
SELECTORS.declare(
    "cad_prune",
    "CAD-Prune: highest compute-aware difficulty from one scoring run of K = budget epochs (paper Eq. 1-2)",
    "workers.selectors.cad:cad_prune",
    _CAD_OPTIONS,
    inputs=("dynamics",),
    epochs_fn=cad_scoring_epochs,
    advise=_cad_advice,
)

# ---------------------------------------------------------------- distillers (selectors that synthesise)
_RDED = {
    "mipc": Option(300, int, "real images drawn per class into the pool (RDED: 300)", min=1),
    "crops": Option(5, int, "random crops scored per pool image", min=1),
    "factor": Option(
        "auto",
        object,
        "patches per side (auto: 2 for images >= 64 px, else 1)",
        check=lambda v: (
            None
            if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)
            else "is not auto or an integer >= 1"
        ),
    ),
    "crop_min_scale": Option(0.08, float, "RandomResizedCrop scale lower bound", min=0.01, max=1.0),
}
_SRE2L = {
    "iterations": Option(1000, int, "recover iterations per batch (SRe2L published: 4000; argparse 1000)", min=1),
    "lr": Option(0.25, float, "Adam learning rate on the pixels", min=0.0),
    "r_bn": Option(0.01, float, "weight of the BatchNorm-statistics loss", min=0.0),
    "first_bn_multiplier": Option(10.0, float, "multiplier of the first BN layer's term", min=0.0),
    "batch_classes": Option(100, int, "classes optimised together (one image each)", min=1),
    "crop_min_scale": Option(0.08, float, "RandomResizedCrop scale lower bound", min=0.01, max=1.0),
}


def _bn_teacher_problem(selector: Named, trial: TrialConfig) -> str | None:
    """SRe2L/CDA match the teacher's BatchNorm statistics: refuse a teacher that has none, before launch."""
    t = trial.teacher
    if t is None:
        return None
    has_bn = t.arch.name == "resnet18" or (t.arch.name == "convnet" and t.arch.opts.get("norm") == "batch")
    if not has_bn:
        return (
            f"needs a teacher with BatchNorm layers; teacher arch {t.arch.label()} has none "
            "(use teacher: {arch: convnet, norm: batch} or resnet18)"
        )
    return None


SELECTORS.declare(
    "sre2l",
    "SRe2L recover: synthesise images matching the teacher's BatchNorm statistics",
    "workers.distillers.sre2l:recover",
    _SRE2L,
    distiller=True,
    inputs=("teacher",),
    validate=_bn_teacher_problem,
)
SELECTORS.declare(
    "cda",
    "CDA: SRe2L recover with a curriculum on the crop scale (1.0 down to crop_min_scale)",
    "workers.distillers.sre2l:cda",
    {
        **_SRE2L,
        "curriculum": Option("cosine", str, "crop-scale schedule", choices=("step", "linear", "cosine")),
        "milestone": Option(1.0, float, "fraction of iterations the curriculum spans", min=0.0, max=1.0),
    },
    distiller=True,
    inputs=("teacher",),
    validate=_bn_teacher_problem,
)


def _rded_pool_problem(selector: Named, trial: TrialConfig) -> str | None:
    """RDED keeps the best crop of each pool image, then IPC * factor^2 of them: the pool must be that large."""
    o = selector.opts
    side = describe_dataset(trial.dataset.name, trial.dataset.root, trial.dataset.opts)["image_shape"][-1]
    factor = (2 if side >= 64 else 1) if o["factor"] == "auto" else o["factor"]
    need = trial.ipc * factor * factor
    if o.get("pool", "cad_top") == "cad_top" and o["mipc"] < need:
        return f"mipc = {o['mipc']} pool images per class cannot give ipc x factor^2 = {need} patches; raise mipc"
    return None


SELECTORS.declare(
    "rded",
    "RDED: observer-scored real crops, the most realistic stitched factor x factor",
    "workers.distillers.rded:rded",
    _RDED,
    distiller=True,
    inputs=("teacher",),
    validate=_rded_pool_problem,
)
SELECTORS.declare(
    "ca2d",
    "CA2D: RDED on a CAD-ranked pool (paper §5)",
    "workers.distillers.rded:ca2d",
    {
        **_RDED,
        **_CAD_OPTIONS,
        "pool": Option(
            "cad_top",
            str,
            "cad_top: top-mipc per class by CAD; cad_coreset: the IPC*factor^2 CAD coreset",
            choices=("cad_top", "cad_coreset"),
        ),
    },
    distiller=True,
    inputs=("teacher", "dynamics"),
    epochs_fn=cad_scoring_epochs,
    validate=_rded_pool_problem,
    advise=_cad_advice,
)

# ---------------------------------------------------------------- stage kinds
STAGES.declare(
    "subset", "class-balanced training subset chosen by a selector (indices into train)", "workers.stages:build_subset"
)
STAGES.declare(
    "teacher",
    "a teacher network trained on the full train split or loaded from a weights file",
    "workers.teacher:build_teacher",
)
STAGES.declare(
    "features", "teacher penultimate features of every train image (float16)", "workers.teacher:build_features"
)
STAGES.declare(
    "dynamics",
    "one full-data HL run recording per-sample training dynamics (K x N float16)",
    "workers.scores.recording:build_dynamics",
)


# ---------------------------------------------------------------- artifact keys and requirements
def teacher_key(dataset: DatasetConfig, teacher: TeacherConfig) -> ArtifactKey:
    return ArtifactKey.make("teacher", {"dataset": dataset.to_json(), "teacher": teacher.to_json()})


def features_key(tkey: ArtifactKey) -> ArtifactKey:
    return ArtifactKey.make("features", {"teacher": tkey.cfg})


def dynamics_key(dataset: DatasetConfig, arch: Named, recipe: TrainConfig, epochs: int, run: int) -> ArtifactKey:
    r = recipe
    return ArtifactKey.make(
        "dynamics",
        {
            "dataset": dataset.to_json(),
            "arch": arch.to_json(),
            "epochs": int(epochs),
            "run": int(run),
            "recipe": {
                "optimizer": r.optimizer,
                "lr": r.lr,
                "weight_decay": r.weight_decay,
                "momentum": r.momentum,
                "batch_size": r.batch_size,
                "augment": r.augment,
                "schedule": r.schedule,
            },
        },
    )


def needs_teacher(selector: Named, regime: str) -> bool:
    inputs = SELECTORS[selector.name].meta.get("inputs", ())
    return bool(REGIMES[regime].meta.get("needs_teacher")) or "features" in inputs or "teacher" in inputs


def reads_dynamics(selector: Named) -> bool:
    return "dynamics" in SELECTORS[selector.name].meta.get("inputs", ())


def selector_inputs(trial: TrialConfig) -> list[ArtifactKey]:
    meta = SELECTORS[trial.selector.name].meta
    keys = []
    if "features" in meta.get("inputs", ()):
        if trial.teacher is None:
            raise ValueError(f"selector {trial.selector.name} needs a teacher; the trial has none")
        keys.append(features_key(teacher_key(trial.dataset, trial.teacher)))
    if "teacher" in meta.get("inputs", ()):
        if trial.teacher is None:
            raise ValueError(f"{trial.selector.name} needs a teacher; the trial has none")
        keys.append(teacher_key(trial.dataset, trial.teacher))
    if "dynamics" in meta.get("inputs", ()):
        opts = trial.selector.opts
        epochs = meta["epochs_fn"](trial) if "epochs_fn" in meta else opts[meta["epochs_option"]]
        keys += [
            dynamics_key(trial.dataset, trial.student, trial.scoring or trial.train, epochs, run)
            for run in range(opts.get("runs", 1))
        ]
    return keys


def subset_key(trial: TrialConfig) -> ArtifactKey:
    """The training images of a trial: never depends on the regime, nor on what the selector does not read."""
    return ArtifactKey.make(
        "subset",
        {
            "dataset": trial.dataset.to_json(),
            "selector": trial.selector.to_json(),
            "ipc": trial.ipc,
            "seed": trial.seed,
            "inputs": [{"kind": k.kind, "config": k.cfg} for k in selector_inputs(trial)],
        },
    )


def requires(trial: TrialConfig) -> list[ArtifactKey]:
    """Artifacts a trial needs before it starts (DESIGN.md §5 step 2)."""
    keys = [subset_key(trial)]
    if trial.teacher is not None:
        keys.append(teacher_key(trial.dataset, trial.teacher))
    return keys


def stage_deps(key: ArtifactKey) -> list[ArtifactKey]:
    """Artifacts a stage needs before it can be built; the driver builds in dependency order."""
    cfg = key.cfg
    if key.kind == "subset":
        return [ArtifactKey.make(i["kind"], i["config"]) for i in cfg.get("inputs", [])]
    if key.kind == "features":
        return [ArtifactKey.make("teacher", cfg["teacher"])]
    return []


def stage_uses_accelerator(key: ArtifactKey) -> bool:
    """Stages that train or run a network (teachers, features, score runs, distillers) get the trial's GPU;
    the selection of real images from stored scores is numpy on a CPU."""
    if key.kind != "subset":
        return True
    return bool(SELECTORS[key.cfg["selector"]["name"]].meta.get("distiller"))


def describe_dataset(name: str, root: str | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """Torch-free facts about a data set (class names, train class sizes, image shape) for validation."""
    entry = DATASETS[name]
    module, _, attr = entry.meta["describe"].partition(":")
    fn: Callable[..., dict[str, Any]] = getattr(importlib.import_module(module), attr)
    return fn(root=root, **options)
