"""The catalogue: every data set, architecture, label regime, selector, distiller and stage kind, declared once.

Metadata only (no torch): names, descriptions, option schemas with defaults, implementation paths
and the method rules the driver checks before launch. Adding a method is one implementation module
plus one `declare(...)` here; the registry-parametrised contract tests (tests/workers/test_catalogue.py)
then cover it. Citations: docs/methods.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workers.budget import full_data_epochs, plan
from workers.config import Named, TrialConfig, absolute_path_problem
from workers.options import Option
from workers.registry import DatasetEntry, Entry, RegimeEntry, Registry, SelectorEntry, StageEntry

DATASETS = Registry("dataset", DatasetEntry)
ARCHS = Registry("arch", Entry)
REGIMES = Registry("regime", RegimeEntry)
SELECTORS = Registry("selector", SelectorEntry)
STAGES = Registry("stage", StageEntry)

_FACTS: dict[tuple, dict[str, Any]] = {}


def dataset_facts(name: str, root: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """class_names, train_class_sizes, num_train, image_shape of a data set, read once per process."""
    key = (name, root, tuple(sorted(options.items())))
    if key not in _FACTS:
        _FACTS[key] = DATASETS[name].facts(root, options)
    return _FACTS[key]


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


_SHARD_SIZE = Option(1024, int, "images per cache shard (one build stage each)", min=1)


def _imagefolder_sizes(opts: dict[str, Any]) -> dict[str, Any]:
    """The cache's sizes made explicit in every trial's config: a null crop is image_size, a null resize is its
    crop (workers.config.NEUTRAL_SINCE_SCHEMA_1 leaves these out of trial ids while they hold those values)."""
    out = dict(opts)
    out["train_crop"] = out.get("train_crop") or out["image_size"]
    out["train_resize"] = out.get("train_resize") or out["train_crop"]
    out["val_crop"] = out.get("val_crop") or out["image_size"]
    out["val_resize"] = out.get("val_resize") or out["val_crop"]
    return out


def _absolute_file(value: Any) -> str | None:
    if not isinstance(value, str) or not (Path(value).is_file() or Path(value).is_dir()):
        return "is not an existing file or folder; give LOC_val_solution.csv or the ILSVRC2012 devkit folder"
    return absolute_path_problem(value)


_SIDE = {"min": 8, "max": 1024, "nullable": True}
DATASETS.declare(
    "imagefolder",
    "a local tree root/train/<class>/ and root/val/ (ImageNet layout), decoded once into a sharded uint8 cache",
    "workers.data.imagefolder:load",
    {
        "image_size": Option(32, int, "the student's input side: training views and evaluation", min=8, max=512),
        "minival_per_class": Option(10, int, "train images per class held out for model choices", min=1),
        "train_resize": Option(
            None, int, "cached train images: shorter side before the crop (null: train_crop)", **_SIDE
        ),
        "train_crop": Option(None, int, "cached train images: centre-crop side (null: image_size)", **_SIDE),
        "val_resize": Option(None, int, "val and minival: shorter side before the crop (null: val_crop)", **_SIDE),
        "val_crop": Option(None, int, "val and minival: centre-crop side (null: image_size)", **_SIDE),
        "interpolation": Option("bilinear", str, "resize filter (PIL)", choices=("bilinear", "bicubic")),
        "val_labels": Option(
            None,
            str,
            "flat val/: Kaggle's LOC_val_solution.csv or the ILSVRC2012 devkit folder (absolute path)",
            nullable=True,
            check=_absolute_file,
        ),
        "skip_bad_files": Option(False, bool, "skip (and count) unreadable images instead of failing"),
        "shard_size": _SHARD_SIZE,
    },
    describe="workers.data.imagefolder:describe",
    needs_root=True,
    cached=True,
    derive=_imagefolder_sizes,
)

_MINIVAL = Option(10, int, "train images per class held out for model choices", min=1)
DATASETS.declare(
    "cifar10",
    "CIFAR-10 (50,000 train / 10,000 test 32x32 colour images, 10 classes) from torchvision's folder; in memory",
    "workers.data.cifar:load_cifar10",
    {"minival_per_class": _MINIVAL},
    describe="workers.data.cifar:describe_cifar10",
    needs_root=True,
    root_doc="the folder that holds torchvision's cifar-10-batches-py/ (never downloaded)",
)
DATASETS.declare(
    "cifar100",
    "CIFAR-100 (50,000 train / 10,000 test 32x32 colour images, 100 fine classes) from torchvision's folder",
    "workers.data.cifar:load_cifar100",
    {"minival_per_class": _MINIVAL},
    describe="workers.data.cifar:describe_cifar100",
    needs_root=True,
    root_doc="the folder that holds torchvision's cifar-100-python/ (never downloaded)",
)
DATASETS.declare(
    "tinyimagenet",
    "Tiny ImageNet (100,000 train / 10,000 val 64x64 images, 200 classes) as unzipped, in imagefolder's sharded cache",
    "workers.data.tinyimagenet:load",
    {
        "image_size": Option(64, int, "side: 64 is native; others resize the shorter side and centre-crop", min=8),
        "minival_per_class": _MINIVAL,
        "shard_size": _SHARD_SIZE,
    },
    describe="workers.data.tinyimagenet:describe",
    needs_root=True,
    cached=True,
    root_doc="the folder that holds Tiny ImageNet's train/ and val/ (tiny-imagenet-200/ unzipped; never downloaded)",
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
# recipe = the regime's default student recipe (docs/methods.md §2.3, the paper's small-scale Table 4).
# The sweep's `train:` overrides it for every regime, `train.<regime>:` for one. Our choices where the
# paper is silent: HL momentum/wd 0.9 / 5e-4 (as reproductions), SL wd 0.01. HL and SL views: DSA, as the paper.
REGIMES.declare(
    "hl",
    "hard labels: cross-entropy on one-hot targets, no teacher",
    "workers.regimes:hl",
    recipe={
        "optimizer": "sgd",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "step",
        "batch_size": 256,
        "augment": "dsa",
    },
)
# Score runs (full-data HL runs of EL2N, forgetting, CCS, D2, CAD, ...) train with the resolved hl recipe, except
# that their views default to crop + flip: the methods' authors score standard crop/flip training runs; DSA is the
# paper's recipe for students on small sets (docs/methods.md §2.3). A sweep's `augment` overrides both.
SCORE_RUN_RECIPE = {"augment": "crop_flip"}
REGIMES.declare(
    "sl",
    "one fixed teacher soft label per image (clean view), reused for every augmented view",
    "workers.regimes:sl",
    needs_teacher=True,
    recipe={
        "optimizer": "adamw",
        "lr": 0.001,
        "weight_decay": 0.01,
        "schedule": "cosine",
        "batch_size": 256,
        "augment": "dsa",
        "temperature": 20.0,
    },
)
REGIMES.declare(
    "sl_kd",
    "a fresh teacher soft label for every RRC+flip+CutMix view (train.kd_backend: online | stored)",
    "workers.regimes:sl_kd",
    needs_teacher=True,
    recipe={
        "optimizer": "adamw",
        "lr": 0.001,
        "weight_decay": 0.01,
        "schedule": "half_cosine",
        "batch_size": 256,
        "temperature": 20.0,
    },
)


# ---------------------------------------------------------------- method rules (torch-free)
def option_epochs(option: str):
    """score_epochs of a selector whose score runs last as many epochs as one of its options says."""

    def epochs(trial: TrialConfig) -> int:
        return int(trial.selector.opts[option])

    return epochs


def budget_scoring_epochs(trial: TrialConfig) -> int:
    """The trial's compute as full-data epochs, K = images seen / N rounded half up (docs/methods.md §2.4):
    under an `epochs` budget K = E·IPC·C/N grows with IPC; under `full_epochs` it is the same at every
    IPC. Uses the hl recipe of the score runs, so K (and the subset) never depends on the regime."""
    facts = dataset_facts(trial.dataset.name, trial.dataset.root, trial.dataset.opts)
    recipe = trial.scoring or trial.train
    p = plan(trial.budget, trial.ipc * len(facts["class_names"]), facts["num_train"], recipe.batch_size)
    return max(1, full_data_epochs(p.images_seen, facts["num_train"]))


def cad_scoring_epochs(trial: TrialConfig) -> int:
    """CAD-Prune's K: the trial's full-data epochs, raised to J + W when the budget gives fewer
    (J auto = K - W needs J >= 2, so then K >= W + 2)."""
    opts = trial.selector.opts
    floor = opts["W"] + (2 if opts["J"] == "auto" else opts["J"])
    return max(budget_scoring_epochs(trial), floor)


def cad_window(opts: dict[str, Any], K: int) -> tuple[int, int]:  # noqa: N803 (paper notation)
    """(J, W) of a CAD scoring run of K epochs: J auto = K - W (docs/methods.md §4.11)."""
    W = opts["W"]
    return (K - W if opts["J"] == "auto" else opts["J"]), W


def _cad_advice(selector: Named, trial: TrialConfig) -> str | None:
    """A warning, not an error: the scoring run is lengthened to K = J + W when the budget is smaller."""
    budget_k, K = budget_scoring_epochs(trial), cad_scoring_epochs(trial)
    if K > budget_k:
        J, W = cad_window(selector.opts, K)
        return (
            f"at ipc {trial.ipc} the budget gives K = {budget_k} scoring epochs, fewer than J + W = {J} + {W}; "
            f"the scoring run uses K = {K} (more compute than the trial). Raise the budget or lower J/W to align"
        )
    return None


def _j_option(value: Any) -> str | None:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 2):
        return None
    return "is not a window length; give an integer >= 2 or auto (J = K - W)"


def _factor_option(value: Any) -> str | None:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return None
    return "is not auto or an integer >= 1"


def rded_factor(factor: Any, side: int) -> int:
    """RDED's patches per side: "auto" = 2 for images >= 64 px (its ImageNet setting), else 1 (its 32-px
    ConvNet scripts) (docs/methods.md §5.3)."""
    return (2 if side >= 64 else 1) if factor == "auto" else int(factor)


def sre2l_crop(crop: str, side: int) -> str:
    """SRe2L's recover views (docs/methods.md §5.1): "auto" = a RandomResizedCrop + flip from 64 px (its ImageNet
    and Tiny-ImageNet recover scripts), none below (its CIFAR recover script: the jitter roll only)."""
    return ("rrc" if side >= 64 else "none") if crop == "auto" else crop


def _rded_pool_problem(selector: Named, trial: TrialConfig) -> str | None:
    """RDED keeps the best crop of each pool image, then IPC * factor^2 of them: the pool must be that large."""
    o = selector.opts
    side = dataset_facts(trial.dataset.name, trial.dataset.root, trial.dataset.opts)["image_shape"][-1]
    factor = rded_factor(o["factor"], side)
    need = trial.ipc * factor * factor
    if o.get("pool", "cad_top") == "cad_top" and o["mipc"] < need:
        return f"mipc = {o['mipc']} pool images per class cannot give ipc x factor^2 = {need} patches; raise mipc"
    return None


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


def _schedule_epochs_option(value: Any) -> str | None:
    if value == "epoch" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return None
    return "is not a number of epochs; give an integer >= 1, or epoch (the schedule ends at the scored epoch)"


def schedule_epochs(opts: dict[str, Any]) -> int:
    """Epochs the score runs' learning-rate schedule spans (docs/methods.md §4.4): `schedule_epochs`, or the
    scored epoch itself for `schedule_epochs: epoch` (the runs' schedule ends where they are scored)."""
    return int(opts["epoch"] if opts["schedule_epochs"] == "epoch" else opts["schedule_epochs"])


def _schedule_problem(selector: Named, trial: TrialConfig) -> str | None:
    o = selector.opts
    if schedule_epochs(o) < o["epoch"]:
        return (
            f"schedule_epochs = {o['schedule_epochs']} is shorter than the scored epoch {o['epoch']}; the schedule "
            "must cover the run (give schedule_epochs >= epoch, or epoch)"
        )
    return None


def _early_score_run(trial: TrialConfig) -> dict[str, Any]:
    """EL2N/GraNd runs stop at `epoch` of a `schedule_epochs`-long schedule; the key says so only when the two
    differ (a run of 0 epochs trains nothing, so its schedule does not matter)."""
    o = trial.selector.opts
    length = schedule_epochs(o)
    return {"schedule_epochs": length} if o["epoch"] > 0 and length != o["epoch"] else {}


def _train_margins(needed: bool) -> dict[str, Any]:
    """A score run that also records the training mini-batch margins (CCS's and D2's AUM)."""
    return {"records": "train_margin"} if needed else {}


def _ccs_score_run(trial: TrialConfig) -> dict[str, Any]:
    return _train_margins(trial.selector.opts["aum_source"] == "train_batches")


def _d2_score_run(trial: TrialConfig) -> dict[str, Any]:
    o = trial.selector.opts
    return _train_margins(o["difficulty"] == "aum" or o["hard_drop"] > 0)


def _dyn_unc_problem(selector: Named, trial: TrialConfig) -> str | None:
    o = selector.opts
    windows = o["epochs"] - o["J"] + (1 if o["last_window"] else 0)
    if windows < 1:
        return f"epochs = {o['epochs']} leaves no window of J = {o['J']} epochs; raise epochs or lower J"
    return None


SEED_USES = ("draw", "ties", "none")


def seed_use(selector: Named) -> str:
    """How a selector's subset depends on the trial seed (docs/methods.md §4): "draw" when a seeded draw makes it
    (random, k-means++, CCS's strata, distillers, score runs seeded by the trial: `score_seed: trial`), so its
    seed spread includes selection noise; "ties" when only equal scores are ordered by the seed (score-based
    selectors with `score_seed: fixed`); "none" when every seed gets the same subset (herding, full)."""
    if selector.opts.get("score_seed") == "trial":
        return "draw"
    use = SELECTORS[selector.name].seed_use
    return use(selector) if callable(use) else use


_FIXED_SCORES = {"seed_use": "ties"}  # a ranking of scores that do not depend on the trial seed


# ---------------------------------------------------------------- selectors (real images)
_RUNS = Option(10, int, "independent full-data runs averaged (docs/methods.md §4.4: 10)", min=1)
_EPOCH = Option(20, int, "the epoch the runs are scored at (docs/methods.md §4.4: 20)", min=1)
_SCHEDULE = Option(
    200,
    object,
    "epochs the runs' learning-rate schedule spans; the runs stop at `epoch` (Paul et al.: 200; "
    "`epoch`: the schedule ends at the scored epoch)",
    check=_schedule_epochs_option,
)
_DYN_EPOCHS = Option(30, int, "full-data epochs of the one scoring run", min=2)
_SCORE_SEED = Option(
    "fixed",
    str,
    "fixed: score runs seeded by run index, one subset for every trial seed; trial: seeded by the trial seed "
    "too, so the selection varies with the seed (docs/methods.md §4)",
    choices=("fixed", "trial"),
)
_SCORED = {"inputs": ("dynamics",)}
# EL2N's options and facts: runs scored at an early epoch of a normal-length schedule
_EL2N = {"runs": _RUNS, "epoch": _EPOCH, "schedule_epochs": _SCHEDULE, "score_seed": _SCORE_SEED}
_AT_EPOCH = {
    "score_epochs": option_epochs("epoch"),
    "score_run": _early_score_run,
    "validate": _schedule_problem,
    **_SCORED,
    **_FIXED_SCORES,
}

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
    seed_use="none",
)
SELECTORS.declare(
    "herding",
    "herding on teacher features (argmin convention): keeps prototypical images",
    "workers.selectors.geometric:herding",
    inputs=("features",),
    seed_use="none",
)
SELECTORS.declare(
    "kcenter",
    "greedy farthest-point k-center on teacher features: keeps coverage (outliers)",
    "workers.selectors.geometric:kcenter",
    {"first": Option("random", str, "first centre", choices=("random", "medoid"))},
    inputs=("features",),
    seed_use=lambda sel: "draw" if sel.opts["first"] == "random" else "ties",
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
    _EL2N,
    **_AT_EPOCH,
)
SELECTORS.declare(
    "el2n_easy",
    "lowest EL2N (easiest)",
    "workers.selectors.scored:el2n_easy",
    _EL2N,
    **_AT_EPOCH,
)
SELECTORS.declare(
    "el2n_window",
    "EL2N-Best: IPC consecutive images per class at offset (0 hardest, 1 easiest)",
    "workers.selectors.scored:el2n_window",
    {"offset": Option(0.5, float, "window offset in [0, 1]", min=0.0, max=1.0), **_EL2N},
    **_AT_EPOCH,
)
SELECTORS.declare(
    "grand",
    "highest GraNd: last-layer gradient norm near initialisation, mean over runs",
    "workers.selectors.scored:grand",
    {
        "runs": _RUNS,
        "epoch": Option(0, int, "epoch of the score (0 = at init)", min=0),
        "schedule_epochs": _SCHEDULE,
        "score_seed": _SCORE_SEED,
    },
    **_AT_EPOCH,
)
SELECTORS.declare(
    "forgetting",
    "most forgetting events in one full-data run (never learned first)",
    "workers.selectors.scored:forgetting",
    {"epochs": _DYN_EPOCHS, "score_seed": _SCORE_SEED},
    score_epochs=option_epochs("epochs"),
    **_SCORED,
    **_FIXED_SCORES,
)
SELECTORS.declare(
    "forgetting_easy",
    "fewest forgetting events (Forgetting-Easy)",
    "workers.selectors.scored:forgetting_easy",
    {"epochs": _DYN_EPOCHS, "score_seed": _SCORE_SEED},
    score_epochs=option_epochs("epochs"),
    **_SCORED,
    **_FIXED_SCORES,  # many ties at 0 events: in practice the seed changes much of the subset
)
SELECTORS.declare(
    "ccs",
    "coverage-centric: drop the hardest by AUM, stratified sampling over the score range",
    "workers.selectors.scored:ccs",
    {
        "epochs": _DYN_EPOCHS,
        "hard_drop": Option(0.3, float, "hardest fraction dropped", min=0.0, max=0.99),
        "strata": Option(50, int, "equal-width score strata", min=1),
        "aum_source": Option(
            "train_batches",
            str,
            "AUM's margins: train_batches = each epoch's training mini-batch forward (CCS's code); "
            "eval = a clean eval-mode pass after each epoch",
            choices=("train_batches", "eval"),
        ),
        "score_seed": _SCORE_SEED,
    },
    score_epochs=option_epochs("epochs"),
    score_run=_ccs_score_run,
    **_SCORED,
)
SELECTORS.declare(
    "d2",
    "D2-Pruning: difficulty passed over a kNN graph of teacher features, after dropping the hardest by AUM",
    "workers.selectors.geometric:d2",
    {
        "epochs": _DYN_EPOCHS,
        "k": Option(5, int, "neighbours", min=0),
        "gamma_f": Option(1.0, float, "forward decay", min=0.0),
        "gamma_r": Option(0.1, float, "reverse decay", min=0.0),
        "graph": Option(
            "two_way",
            str,
            "two_way: an edge of either kNN list joins both samples, neighbour scores floored at 1e-7 (the "
            "reference's compute_graph_density); one_way: each sample's own kNN only",
            choices=("two_way", "one_way"),
        ),
        "difficulty": Option(
            "forgetting",
            str,
            "the score passed over the graph: forgetting events (the reference's CIFAR setting), AUM hardness "
            "(its ImageNet setting) or EL2N at the run's end",
            choices=("forgetting", "aum", "el2n"),
        ),
        "hard_drop": Option(
            0.4, float, "fraction of the train split dropped first, lowest AUM (the reference: 0.4)", min=0.0, max=0.99
        ),
        "score_seed": _SCORE_SEED,
    },
    inputs=("features", "dynamics"),
    score_epochs=option_epochs("epochs"),
    score_run=_d2_score_run,
    **_FIXED_SCORES,
)
SELECTORS.declare(
    "dyn_unc",
    "dynamic uncertainty: mean over J-epoch windows of std(p_y); keeps the highest",
    "workers.selectors.scored:dyn_unc",
    {
        "epochs": _DYN_EPOCHS,
        "J": Option(10, int, "window length in epochs", min=2),
        "last_window": Option(
            False,
            bool,
            "also average the window ending at the final epoch (K - J + 1 windows; the reference: K - J)",
        ),
        "score_seed": _SCORE_SEED,
    },
    score_epochs=option_epochs("epochs"),
    validate=_dyn_unc_problem,
    **_SCORED,
    **_FIXED_SCORES,
)
_CAD_OPTIONS = {
    "J": Option("auto", object, "window length", check=_j_option),
    "W": Option(2, int, "number of windows averaged (Eq. 2)", min=1),
    "shift": Option(False, bool, "windows end at the final epoch instead of the literal K-J-W..K-J-1"),
    "score_seed": _SCORE_SEED,
}
SELECTORS.declare(
    "cad_prune",
    "CAD-Prune: highest compute-aware difficulty from one scoring run of K = budget epochs (paper Eq. 1-2)",
    "workers.selectors.cad:cad_prune",
    _CAD_OPTIONS,
    score_epochs=cad_scoring_epochs,
    advise=_cad_advice,
    **_SCORED,
    **_FIXED_SCORES,
)

# ---------------------------------------------------------------- distillers (selectors that synthesise)
_RDED = {
    "mipc": Option(300, int, "real images drawn per class into the pool (RDED: 300)", min=1),
    "crops": Option(5, int, "random crops scored per pool image", min=1),
    "factor": Option("auto", object, "patches per side (auto: 2 for images >= 64 px, else 1)", check=_factor_option),
    "crop_min_scale": Option(0.08, float, "RandomResizedCrop scale lower bound", min=0.01, max=1.0),
}
_SRE2L = {
    "iterations": Option(1000, int, "recover iterations per batch (SRe2L published: 4000; argparse 1000)", min=1),
    "lr": Option(0.25, float, "Adam learning rate on the pixels", min=0.0),
    "r_bn": Option(0.01, float, "weight of the BatchNorm-statistics loss", min=0.0),
    "first_bn_multiplier": Option(10.0, float, "multiplier of the first BN layer's term", min=0.0),
    "batch_classes": Option(100, int, "classes optimised together (one image each)", min=1),
    "crop_min_scale": Option(0.08, float, "RandomResizedCrop scale lower bound", min=0.01, max=1.0),
    "jitter": Option(
        "forward",
        str,
        "the roll's direction: forward = 0..side//7 (SRe2L's and CDA's code), both = either sign",
        choices=("forward", "both"),
    ),
}
SELECTORS.declare(
    "sre2l",
    "SRe2L recover: synthesise images matching the teacher's BatchNorm statistics",
    "workers.distillers.sre2l:recover",
    {
        **_SRE2L,
        "crop": Option(
            "auto",
            str,
            "views before the roll: rrc = RandomResizedCrop + flip, none = the roll only; auto = rrc from 64 px "
            "(SRe2L's ImageNet/Tiny scripts), none below (its CIFAR script)",
            choices=("auto", "rrc", "none"),
        ),
    },
    distiller=True,
    inputs=("teacher",),
    validate=_bn_teacher_problem,
)
SELECTORS.declare(
    "cda",
    "CDA: SRe2L recover with a curriculum on the crop scale (1.0 down to crop_min_scale)",
    "workers.distillers.sre2l:recover",
    {
        **_SRE2L,
        "curriculum": Option("cosine", str, "crop-scale schedule", choices=("step", "linear", "cosine")),
        "milestone": Option(1.0, float, "fraction of iterations the curriculum spans", min=0.0, max=1.0),
        "crop": Option(
            "rrc",
            str,
            "views before the roll: the curriculum's RandomResizedCrop + flip, or none",
            choices=("rrc", "none"),
        ),
    },
    distiller=True,
    inputs=("teacher",),
    validate=_bn_teacher_problem,
)
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
    score_epochs=cad_scoring_epochs,
    validate=_rded_pool_problem,
    advise=_cad_advice,
)

# ---------------------------------------------------------------- stage kinds
STAGES.declare(
    "shard",
    "shard_size decoded uint8 images of one split of a cached data set, with labels, digests, pixel sums",
    "workers.data.imagefolder:build_shard",
    uses_accelerator=False,
    cpus=1,
)
STAGES.declare(
    "cache",
    "a cached data set: its shards merged (labels, valid rows, per-image digests, pixel sums per split)",
    "workers.data.imagefolder:build_cache",
    uses_accelerator=False,
    cpus=1,
)
STAGES.declare(
    "subset",
    "class-balanced training subset chosen by a selector (indices into train), or a distiller's images",
    "workers.stages:build_subset",
    uses_accelerator=False,  # a distiller's subset does use it: workers.graph.stage_uses_accelerator
)
STAGES.declare(
    "teacher",
    "a teacher network trained on the full train split or loaded from a weights file",
    "workers.teacher:build_teacher",
    data_parallel=True,
)
STAGES.declare(
    "features_part",
    "teacher penultimate features of one part of the train split, rows [start, stop) (float16)",
    "workers.teacher:build_features_part",
)
STAGES.declare(
    "features",
    "teacher penultimate features of every train image (float16): its features_part stages concatenated",
    "workers.teacher:build_features",
    uses_accelerator=False,
    cpus=1,
)
STAGES.declare(
    "kd_epoch",
    "one epoch of stored SL+KD labels of a subset: fp16 teacher logits (or top-k + int16 ids) of every view",
    "workers.kd_labels:build_kd_epoch",
)
STAGES.declare(
    "kd_labels",
    "a set of stored SL+KD labels: its kd_epoch stages, one per epoch of the trial's plan, and their bytes",
    "workers.kd_labels:build_kd_labels",
    uses_accelerator=False,
    cpus=1,
)
STAGES.declare(
    "dynamics",
    "one full-data HL run recording per-sample training dynamics (K x N float16)",
    "workers.scores.recording:build_dynamics",
    data_parallel=True,
)
