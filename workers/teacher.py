"""Teachers (docs/methods.md §3): trained on the full train split or loaded from a local weights file.

A teacher is a shared artifact keyed by (data set, teacher config). At build time its minival
top-1 is measured and the build fails below `min_top1_factor` x chance (a wrong class order or a
wrong file costs 10-40 points, LINs-lab/RDED issues #3-#10). It is always used frozen, eval mode.
Torchvision-format weights (resnet18 at ImageNet sizes) see their inputs normalised with ImageNet's
mean and std, and a 1000-way head must meet the 1000 ImageNet WNIDs in sorted order.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workers import graph, models
from workers.artifacts import ArtifactStore
from workers.budget import plan
from workers.catalogue import dataset_facts
from workers.config import ArtifactKey, BudgetConfig, DatasetConfig, TeacherConfig, TrainConfig
from workers.data import DataError, Splits, load_splits
from workers.data.shards import NpyWriter, ShardedImages
from workers.regimes import HardLabels
from workers.train import Checkpointer, Tensors, channel_stats, evaluate, stream_batch, train

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's weights (transforms.Normalize of their eval transform)
IMAGENET_STD = (0.229, 0.224, 0.225)
WNID = re.compile(r"^n\d{8}$")


def normalization(tcfg: TeacherConfig, input_shape) -> str:
    """`dataset` or `imagenet`: auto is imagenet for resnet18 weights loaded from a file that run with the
    standard 7x7 stem on 3 channels (inputs >= 64 px, torchvision's format), the data set's statistics otherwise."""
    if tcfg.normalize != "auto":
        return tcfg.normalize
    c, side, _ = input_shape
    stem = tcfg.arch.opts.get("small_input_stem", "auto")
    standard = stem == "no" or (stem == "auto" and side >= 64)
    return "imagenet" if tcfg.weights and tcfg.arch.name == "resnet18" and c == 3 and standard else "dataset"


def teacher_stats(tcfg: TeacherConfig, splits: Splits, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The (mean, std) the teacher's inputs are normalised with, shaped (1, C, 1, 1) on `device`."""
    if normalization(tcfg, splits.input_shape) == "imagenet":
        view = (1, 3, 1, 1)
        return (
            torch.tensor(IMAGENET_MEAN, device=device).view(view),
            torch.tensor(IMAGENET_STD, device=device).view(view),
        )
    return channel_stats(splits.train_x, device)


def check_class_order(tcfg: TeacherConfig, class_names, input_shape) -> None:
    """torchvision's ImageNet weights predict the 1000 ILSVRC2012 classes in sorted-WNID order: a 1000-way head
    on ImageNet-normalised inputs needs the data set's classes to be those WNIDs (sorted by construction)."""
    if normalization(tcfg, input_shape) != "imagenet" or len(class_names) != 1000:
        return
    bad = [c for c in class_names if not WNID.match(c)]
    if bad:
        raise DataError(
            f"teacher.weights: a 1000-way ImageNet teacher predicts the ILSVRC2012 WNIDs in sorted order, but the "
            f"data set's classes include {bad[:3]}, which are not WNIDs (n########); name the train/ folders by "
            "WNID, or set teacher.normalize: dataset for a teacher trained on these classes"
        )


def full_train_tensors(splits, device, stats=None, placement: str = "auto"):
    """(train split, minival split) for `device`, normalised with `stats` (default: the data set's). The train
    split is placed by `placement` (auto: on the device when it fits, else streamed: workers.train); a sharded
    minival split is always streamed (it is only evaluated)."""
    mean, std = stats if stats is not None else channel_stats(splits.train_x, device)
    side = splits.input_side
    minival = "stream" if isinstance(splits.minival_x, ShardedImages) else "auto"
    return Tensors.of(splits.train_x, splits.train_y, mean, std, side=side, placement=placement), Tensors.of(
        splits.minival_x, splits.minival_y, mean, std, side=side, placement=minival
    )


def build_teacher(key: ArtifactKey, store: ArtifactStore, out: Path) -> dict[str, Any]:
    cfg = key.cfg
    tcfg = TeacherConfig.from_json(cfg["teacher"])
    splits = load_splits(cfg["dataset"], store)
    device = models.pick_device()
    shape = splits.input_shape
    model = models.build(tcfg.arch.name, tcfg.arch.opts, splits.num_classes, shape, tcfg.seed).to(device)
    train_data, minival = full_train_tensors(splits, device, teacher_stats(tcfg, splits, device))
    if tcfg.weights:
        check_class_order(tcfg, splits.class_names, shape)
        load_weights(model, tcfg.weights, splits.num_classes)
    else:
        recipe = TrainConfig(
            optimizer=tcfg.optimizer,
            lr=tcfg.lr,
            weight_decay=tcfg.weight_decay,
            batch_size=tcfg.batch_size,
            augment=tcfg.augment,
            schedule="cosine",
            eval_points=1,
        )
        p = plan(BudgetConfig("epochs", tcfg.epochs), len(splits.train_y), len(splits.train_y), tcfg.batch_size)
        train(model, HardLabels(recipe, tcfg.seed), train_data, recipe, p, tcfg.seed, {}, Checkpointer(None))
    acc = evaluate(model, minival)["top1"]
    floor = tcfg.min_top1_factor / splits.num_classes
    if acc < floor:
        raise DataError(
            f"teacher {tcfg.arch.name} reaches {acc:.3f} top-1 on minival, below the floor {floor:.3f} "
            f"({tcfg.min_top1_factor}x chance): check the weights file, its class order, or train longer"
        )
    torch.save(model.state_dict(), out / "weights.pt")
    return {
        "class_names": list(splits.class_names),
        "minival_top1": acc,
        "normalize": normalization(tcfg, shape),
        "input_shape": list(shape),
    }


def load_weights(model: nn.Module, path: str, num_classes: int) -> None:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"teacher.weights: {path!r} does not exist; give a local state_dict file (.pt/.pth)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickled whole model, a corrupt file, ...: weights_only refuses them
        raise DataError(
            f"teacher.weights: {path!r} is not a readable state_dict (torch.load with weights_only=True "
            f"failed: {str(err).splitlines()[0]}); save it with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DataError(f"teacher.weights: {path!r} holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        linear = [v.shape[0] for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2][-1:]
        if linear and linear[0] != num_classes:
            why = f"its last layer has {linear[0]} outputs, the data set has {num_classes} classes"
        else:
            why = "its parameter names or shapes do not match the teacher's arch and options"
        raise DataError(
            f"teacher.weights: {path!r} does not fit the teacher ({why}): {str(err).splitlines()[0]}"
        ) from None


class Renormalize(nn.Module):
    """A teacher that receives inputs normalised with the data set's statistics but was trained on inputs
    normalised with its own (ImageNet's): x -> net(((x * data_std + data_mean) - mean) / std)."""

    def __init__(self, net: nn.Module, data_stats, teacher_stats) -> None:
        super().__init__()
        self.net = net
        for name, t in zip(("data_mean", "data_std", "mean", "std"), (*data_stats, *teacher_stats)):
            self.register_buffer(name, t.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(((x * self.data_std + self.data_mean) - self.mean) / self.std)


def load_teacher(key: ArtifactKey, store: ArtifactStore, device: str, raw: bool = False) -> nn.Module:
    """The built teacher artifact `key`, frozen in eval mode on `device`; its class order is checked. It takes
    inputs normalised with the data set's statistics (an ImageNet-normalised teacher is wrapped in Renormalize),
    or with its own when `raw` (then `teacher_stats` gives them)."""
    cfg = key.cfg
    tcfg = TeacherConfig.from_json(cfg["teacher"])
    splits = load_splits(cfg["dataset"], store)
    store.check_classes(key, splits.class_names)
    model = models.build(tcfg.arch.name, tcfg.arch.opts, splits.num_classes, splits.input_shape, tcfg.seed)
    model.load_state_dict(torch.load(store.path(key) / "weights.pt", map_location="cpu", weights_only=True))
    model = model.to(device)
    if not raw and normalization(tcfg, splits.input_shape) == "imagenet":
        model = Renormalize(model, channel_stats(splits.train_x, device), teacher_stats(tcfg, splits, device))
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model has no linear head to take penultimate features from")
    return linears[-1]


@torch.no_grad()
def iter_logits_and_features(model: nn.Module, data, chunk: int | None = None, start: int = 0, stop: int | None = None):
    """(start, logits, features) per chunk of a clean (un-augmented, centre-cropped) eval-mode forward: the
    logits and the input of the last linear layer of rows [start, stop), `chunk` images at a time (default: a
    streamed batch)."""
    feats: list[torch.Tensor] = []
    handle = last_linear(model).register_forward_hook(lambda m, inp, out: feats.append(inp[0].flatten(1)))
    was = model.training
    model.eval()
    n = len(data.y) if stop is None else min(stop, len(data.y))
    chunk = chunk or stream_batch(data.x.shape[1:])
    try:
        for s in range(start, n, chunk):
            logits = model(data.clean_batch(data.positions(s, min(n, s + chunk))))
            yield s, logits, feats.pop()
    finally:
        handle.remove()
        model.train(was)


def logits_and_features(model: nn.Module, data, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits and features of `data` (small data sets; large ones stream iter_logits_and_features)."""
    parts = list(iter_logits_and_features(model, data, chunk))
    return torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])


def build_features_part(key: ArtifactKey, store: ArtifactStore, out: Path) -> dict[str, Any]:
    """Penultimate teacher features of train rows [start, stop) (float16): one of the parts the `features`
    stage merges, each its own task, so a large train split is read by as many devices as the cluster has and
    a lost node costs only its parts. Streamed a batch at a time."""
    fcfg = key.cfg["features"]
    start, stop = key.cfg["start"], key.cfg["stop"]
    tkey = ArtifactKey.make("teacher", fcfg["teacher"])
    device = models.pick_device()
    tcfg = TeacherConfig.from_json(tkey.cfg["teacher"])
    teacher = load_teacher(tkey, store, device, raw=True)
    splits = load_splits(tkey.cfg["dataset"], store)
    data, _ = full_train_tensors(splits, device, teacher_stats(tcfg, splits, device), placement="stream")
    if stop > len(data.y):
        raise ValueError(f"features part [{start}, {stop}) exceeds the {len(data.y)} train images")
    writer = None
    for _, _, feats in iter_logits_and_features(teacher, data, start=start, stop=stop):
        if writer is None:
            writer = NpyWriter(out / "features.npy", (stop - start, feats.shape[1]), np.float16)
        writer.write(feats.cpu().numpy().astype(np.float16))
    writer.close()
    return {"class_names": list(splits.class_names), "shape": list(writer.shape), "start": start, "stop": stop}


def build_features(key: ArtifactKey, store: ArtifactStore, out: Path) -> dict[str, Any]:
    """Penultimate teacher features of every train image (float16, N x D): herding, k-center, D2. The parts
    (graph.features_part_keys) concatenated in row order, one part in memory at a time."""
    parts = [k for k in graph.stage_deps(key) if k.kind == "features_part"]
    shapes = [np.load(store.path(k) / "features.npy", mmap_mode="r").shape for k in parts]
    class_names = store.manifest(parts[0])["class_names"]
    with NpyWriter(out / "features.npy", (sum(s[0] for s in shapes), shapes[0][1]), np.float16) as writer:
        for k in parts:
            if store.manifest(k)["class_names"] != class_names:
                raise ValueError(f"features part {k} was built on other classes than {parts[0]}")
            writer.write(np.load(store.path(k) / "features.npy"))
    return {"class_names": class_names, "shape": list(writer.shape), "parts": len(parts)}


def check_teacher(dataset: dict, teacher: dict, store: ArtifactStore, device: str | None = None) -> dict[str, Any]:
    """The top-1 a teacher's weights reach on the cached val split (and minival), with no floor: what a user
    compares with the published figure (torchvision's IMAGENET1K_V1 ResNet-18: 69.76 under resize 256, centre
    crop 224, bilinear). The cache is built if missing."""
    tcfg = TeacherConfig.from_json(teacher)
    if not tcfg.weights:
        raise DataError("teacher.weights: the check evaluates a weights file; this teacher has none (it is trained)")
    device = models.pick_device(device)
    ds = DatasetConfig.from_json(dataset)
    facts = dataset_facts(ds.name, ds.root, ds.opts)  # before decoding anything
    check_class_order(tcfg, facts["class_names"], facts["image_shape"])
    splits = load_splits(ds, store)
    model = models.build(tcfg.arch.name, tcfg.arch.opts, splits.num_classes, splits.input_shape, tcfg.seed)
    load_weights(model, tcfg.weights, splits.num_classes)
    model = model.to(device).eval()
    mean, std = teacher_stats(tcfg, splits, device)
    side = splits.input_side
    val = evaluate(model, Tensors.of(splits.test_x, splits.test_y, mean, std, side=side, placement="stream"))
    mv = evaluate(model, Tensors.of(splits.minival_x, splits.minival_y, mean, std, side=side, placement="stream"))
    return {
        "val_top1": val["top1"],
        "val_top5": val["top5"],
        "val_loss": val["loss"],
        "val_images": len(splits.test_y),
        "minival_top1": mv["top1"],
        "normalize": normalization(tcfg, splits.input_shape),
        "input_shape": list(splits.input_shape),
        "classes": splits.num_classes,
    }
