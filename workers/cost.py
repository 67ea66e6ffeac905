"""What a sweep will cost before it runs: images processed per stage and per trial, and the disk it writes.

Torch-free arithmetic from the declarations and the data set's facts (`ddsweep plan --estimate`).
Two kinds of image work are counted: `train` = a forward and a backward pass (student or teacher
training, SRe2L's pixel optimisation), `infer` = a forward pass only (evaluation, teacher labels,
features, the score runs' per-epoch recordings, RDED's observer). GPU time assumes a forward pass
costs a third of a training step (INFER_COST), the usual rule of thumb for convolutional networks:
`train-equivalent images = train + infer / 3`, and GPU-hours = that / images per second / 3600.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workers.budget import plan
from workers.catalogue import SELECTORS, dataset_facts
from workers.config import ArtifactKey, TeacherConfig, TrialConfig
from workers.graph import bytes_written

INFER_COST = 1 / 3  # a forward pass, relative to a training step (forward + backward)
FP16, FLOAT32, INT64 = 2, 4, 8


@dataclass
class Cost:
    train: int = 0  # images through forward + backward
    infer: int = 0  # images through a forward pass only
    disk: int = 0  # bytes written to the store
    parts: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.train + other.train, self.infer + other.infer, self.disk + other.disk)

    @property
    def train_equivalent(self) -> float:
        return self.train + INFER_COST * self.infer


def _facts(dataset_json: dict) -> dict:
    return dataset_facts(dataset_json["name"], dataset_json.get("root"), dataset_json.get("options", {}))


def _eval_images(facts: dict, dataset_opts: dict) -> int:
    """One evaluation: the test split and minival."""
    minival = dataset_opts.get("minival_per_class", 0) * len(facts["class_names"])
    return int(facts.get("num_test", 0)) + minival


def stage_cost(key: ArtifactKey) -> Cost:
    """The images a shared stage processes and the bytes it writes."""
    cfg = key.cfg
    if key.kind in ("shard", "kd_epoch"):  # decoded images (CPU work) / one epoch of stored teacher labels
        n = cfg["rows"] if key.kind == "shard" else _kd_views(cfg)
        return Cost(infer=0 if key.kind == "shard" else n, disk=bytes_written(key) or 0)
    if key.kind in ("cache", "kd_labels"):  # manifests over their parts
        return Cost()
    if key.kind == "teacher":
        facts = _facts(cfg["dataset"])
        t = TeacherConfig.from_json(cfg["teacher"])
        n = facts["num_train"]
        minival = cfg["dataset"].get("options", {}).get("minival_per_class", 0) * len(facts["class_names"])
        trained = 0 if t.weights else plan_images("epochs", t.epochs, n, n, t.batch_size)
        return Cost(train=trained, infer=minival, disk=0)
    if key.kind in ("features", "features_part"):  # parts run the teacher; the merge writes a copy
        rows = _facts(cfg["teacher"]["dataset"])["num_train"] if key.kind == "features" else cfg["stop"] - cfg["start"]
        return Cost(infer=rows if key.kind == "features_part" else 0, disk=rows * 512 * FP16)  # D <= 512 here
    if key.kind == "dynamics":
        facts = _facts(cfg["dataset"])
        n, epochs = facts["num_train"], cfg["epochs"]
        trained = plan_images("epochs", epochs, n, n, cfg["recipe"]["batch_size"]) if epochs else 0
        # recorded on clean images after every epoch and at initialisation: 4 float16 arrays + a bool one
        return Cost(train=trained, infer=(epochs + 1) * n, disk=(epochs + 1) * n * 4 * FP16 + epochs * n)
    if key.kind == "subset":
        facts = _facts(cfg["dataset"])
        sel = SELECTORS[cfg["selector"]["name"]]
        opts, ipc = cfg["selector"]["options"], cfg["ipc"]
        classes = len(facts["class_names"])
        c, h, w = facts["image_shape"]
        if not sel.distiller:
            n = facts["num_train"] if not sel.balanced else ipc * classes
            return Cost(disk=n * INT64)
        images = ipc * classes * c * h * w  # uint8 synthetic set
        if "iterations" in opts:  # SRe2L / CDA: optimise every image `iterations` times through the teacher
            return Cost(train=opts["iterations"] * ipc * classes, disk=images)
        pool = min(opts["mipc"], max(facts["train_class_sizes"])) * classes  # RDED / CA2D: score crops
        return Cost(infer=pool * opts["crops"], disk=images)
    return Cost()


def _kd_views(cfg: dict) -> int:
    """Views (= teacher forwards) in one epoch of stored SL+KD labels: the subset's images."""
    subset = cfg["labels"]["subset"]
    facts = _facts(subset["dataset"])
    balanced = SELECTORS[subset["selector"]["name"]].balanced
    return subset["ipc"] * len(facts["class_names"]) if balanced else facts["num_train"]


def plan_images(unit: str, value: float, n_subset: int, n_full: int, batch: int) -> int:
    from workers.config import BudgetConfig

    return plan(BudgetConfig(unit, value), n_subset, n_full, batch).images_seen


def trial_cost(trial: TrialConfig) -> Cost:
    """The student's training images (the budget), its evaluations, and the teacher's labels."""
    facts = _facts(trial.dataset.to_json())
    n_full, classes = facts["num_train"], len(facts["class_names"])
    n_subset = trial.ipc * classes
    n_data = n_full if not SELECTORS[trial.selector.name].balanced else n_subset
    p = plan(trial.budget, n_subset, n_full, trial.train.batch_size, n_data=n_data)
    infer = trial.train.eval_points * _eval_images(facts, trial.dataset.opts)
    if trial.regime == "sl":
        infer += n_data  # one label per image
    if trial.regime == "sl_kd" and trial.train.kd_backend == "online":
        infer += p.images_seen  # a teacher label for every view; `stored` labels are their own stages
    return Cost(train=p.images_seen, infer=infer, disk=4096)  # a row is a few kB


def gpu_hours(train_equivalent: float, images_per_second: float) -> float:
    return train_equivalent / images_per_second / 3600.0
