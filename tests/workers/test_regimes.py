"""Label regimes (docs/methods.md §1): SL's one fixed label per image, SL+KD's per-view labels, the online and stored
SL+KD back-ends, the loss convention (§1.4), and "all three regimes train the same images".

Real teacher (a small ConvNet trained by the `teacher` stage on digits), real KDViews, real training loop.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workers import models, stages
from workers.artifacts import ArtifactStore
from workers.budget import plan
from workers.config import BudgetConfig, DatasetConfig, Named, TeacherConfig, TrainConfig, _frozen_options
from workers.data.digits import load as load_digits
from workers.graph import teacher_key
from workers.regimes import FixedSoftLabels, FreshSoftLabels, KDViews, augment, kl_loss
from workers.seeding import torch_generator
from workers.teacher import load_teacher
from workers.train import Checkpointer, Tensors, channel_stats, evaluate, train

DATASET = DatasetConfig(
    "digits", None, _frozen_options({"image_size": 8, "minival_per_class": 10, "test_fraction": 0.2})
)
ARCH = {"depth": 2, "width": 16, "norm": "instance"}
C = 10


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def splits():
    return load_digits(None, image_size=8, minival_per_class=10, test_fraction=0.2)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A real teacher built by the `teacher` stage (3 epochs on the full train split), frozen, eval mode."""
    tcfg = TeacherConfig(arch=Named.make("convnet", ARCH), epochs=3, min_top1_factor=1.0)
    store = ArtifactStore(tmp_path_factory.mktemp("regime_store"))
    key = teacher_key(DATASET, tcfg)
    stages.build(key, store)
    return load_teacher(key, store, "cpu")


def tensors(splits, idx: np.ndarray | None = None, split: str = "train") -> Tensors:
    mean, std = channel_stats(splits.train_x, "cpu")
    x, y = (splits.train_x, splits.train_y) if split == "train" else (splits.test_x, splits.test_y)
    if idx is not None:
        x, y = x[idx], y[idx]
    return Tensors(
        torch.as_tensor(np.ascontiguousarray(x)),
        torch.as_tensor(y),
        mean,
        std,
        None if idx is None else torch.as_tensor(idx),
    )


def class_balanced(splits, per_class: int) -> np.ndarray:
    y = splits.train_y
    return np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(C)]))


@pytest.fixture(scope="module")
def small(splits) -> Tensors:
    """A 40-image class-balanced subset (4 per class), in subset-position order."""
    return tensors(splits, class_balanced(splits, 4))


def student(seed: int = 0) -> nn.Module:
    return models.build("convnet", ARCH, C, (1, 8, 8), seed)


class ConstantStudent(nn.Module):
    """A student whose logits ignore the input: its loss depends on the target alone."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.linspace(-3.0, 3.0, C))

    def forward(self, x):
        return self.bias.expand(len(x), C)


# ------------------------------------------------------------------ SL (§1.2)
def test_sl_label_is_softmax_of_teacher_on_clean_image(teacher, small):
    T = 4.0
    reg = FixedSoftLabels(TrainConfig(temperature=T, augment="crop_flip"), 0, teacher)
    reg.prepare(small, num_epochs=5)
    with torch.no_grad():
        expected = F.softmax(teacher(small.float_batch(torch.arange(len(small.y)))) / T, dim=1)
    torch.testing.assert_close(reg.q, expected, rtol=1e-6, atol=1e-7)
    assert reg.q.shape == (len(small.y), C)
    assert reg.soft_label_bytes == len(small.y) * C * 4  # n x C floats
    # The labels are informative (a trained teacher), so comparing them is not comparing uniform vectors.
    assert (reg.q.argmax(1) == small.y).float().mean() > 0.5


def test_sl_target_is_the_same_every_epoch_while_the_view_changes(teacher, small):
    T = 4.0
    cfg = TrainConfig(temperature=T, augment="crop_flip")
    reg = FixedSoftLabels(cfg, 0, teacher)
    reg.prepare(small, num_epochs=3)
    q_before = reg.q.clone()
    pos = torch.tensor([3, 7, 11, 19, 30])
    with torch.no_grad():
        clean_q = F.softmax(teacher(small.float_batch(pos)) / T, dim=1)

    # 1. A student that ignores its input: the loss is a function of the target alone, so it must be identical in
    #    every epoch (it would change if the label were recomputed on each augmented view).
    const = ConstantStudent()
    const_losses = [reg.loss(const, small, pos, e, torch_generator(0, "augment", e))[0].item() for e in range(3)]
    assert const_losses[0] == const_losses[1] == const_losses[2]
    direct = F.kl_div(F.log_softmax(const(small.float_batch(pos)) / T, dim=1), clean_q, reduction="batchmean").item()
    assert const_losses[0] == pytest.approx(direct, rel=1e-6)

    # 2. A real student: the views differ between epochs, the loss equals KL(q_clean || student(view)), and it is
    #    not the loss against a label recomputed on the view.
    s = student(1)
    views = []
    for e in range(3):
        loss = reg.loss(s, small, pos, e, torch_generator(0, "augment", e))[0]
        x = augment(small.float_batch(pos), cfg.augment, torch_generator(0, "augment", e))
        views.append(x)
        with torch.no_grad():
            out = s(x)
            want = F.kl_div(F.log_softmax(out / T, dim=1), clean_q, reduction="batchmean")
            per_view = F.kl_div(F.log_softmax(out / T, dim=1), F.softmax(teacher(x) / T, dim=1), reduction="batchmean")
        torch.testing.assert_close(loss.detach(), want, rtol=1e-5, atol=1e-8)
        assert abs(loss.item() - per_view.item()) > 1e-4 * abs(want.item())
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])
    assert torch.equal(reg.q, q_before)  # never recomputed


# ------------------------------------------------------------------ SL+KD views (§1.3)
def test_kd_view_does_not_depend_on_the_batch(small):
    n = len(small.y)
    pos = torch.tensor([3, 7])
    alone = KDViews(n, 8, seed=5, min_scale=0.08, device="cpu").mixed(small, pos, epoch=2)
    inside = KDViews(n, 8, seed=5, min_scale=0.08, device="cpu").mixed(small, torch.arange(21), epoch=2)
    assert torch.equal(alone, inside[pos])
    # Order inside the batch and the epochs visited before do not matter either.
    v = KDViews(n, 8, seed=5, min_scale=0.08, device="cpu")
    v.mixed(small, torch.arange(n), epoch=0)
    shuffled = v.mixed(small, torch.tensor([7, 0, 15, 3, 20]), epoch=2)
    assert torch.equal(shuffled[0], alone[1]) and torch.equal(shuffled[3], alone[0])
    # Another seed gives other views.
    other = KDViews(n, 8, seed=6, min_scale=0.08, device="cpu").mixed(small, pos, epoch=2)
    assert not torch.allclose(other, alone)


def test_kd_views_differ_between_epochs_and_samples(small):
    n = len(small.y)
    views = KDViews(n, 8, seed=0, min_scale=0.08, device="cpu")
    pos = torch.arange(n)
    e0, e1 = views.mixed(small, pos, 0), views.mixed(small, pos, 1)
    for i in range(n):
        assert not torch.allclose(e0[i], e1[i]), f"sample {i}: same view in epochs 0 and 1"
    # Same image everywhere: any difference between samples comes from the per-sample view parameters.
    same = Tensors(small.x[:1].expand(n, -1, -1, -1).contiguous(), small.y, small.mean, small.std)
    v = KDViews(n, 8, seed=0, min_scale=0.08, device="cpu").mixed(same, pos, 0).flatten(1)
    d = torch.cdist(v, v)
    off_diag = d[~torch.eye(n, dtype=torch.bool)]
    assert off_diag.min() > 1e-4
    p = views.params(0)
    boxes = torch.stack([p["w"], p["h"], p["cx"], p["cy"]], dim=1)  # w alone may clamp at 1 for two samples
    assert len(torch.unique(boxes, dim=0)) == n


@pytest.mark.parametrize("n", [2, 3, 17, 40])
def test_cutmix_partner_is_never_the_sample_itself(n):
    views = KDViews(n, 8, seed=3, min_scale=0.08, device="cpu")
    partners = []
    for epoch in range(25):
        partner = views.params(epoch)["partner"]
        assert not torch.any(partner == torch.arange(n)), f"epoch {epoch}: a sample is its own partner"
        assert partner.min() >= 0 and partner.max() < n
        partners.append(partner.clone())
    if n > 2:
        assert any(not torch.equal(partners[0], p) for p in partners[1:])  # a fresh pairing per epoch


def test_cutmix_partners_are_uniform_over_the_others():
    n, epochs = 5, 4000
    views = KDViews(n, 8, seed=1, min_scale=0.08, device="cpu")
    counts = torch.zeros(n, n)
    for e in range(epochs):
        counts[torch.arange(n), views.params(e)["partner"]] += 1
    assert counts.diagonal().sum() == 0
    expected = epochs / (n - 1)  # 1000 per off-diagonal cell; binomial sd ~ 27
    off = counts[~torch.eye(n, dtype=torch.bool)]
    assert (off - expected).abs().max() < 6 * (expected * (1 - 1 / (n - 1))) ** 0.5


def test_a_sample_gets_the_same_view_in_any_subset_that_holds_it():
    """Counter-based on (seed, epoch, sample id): the box, flip and CutMix box of train image 42 do not
    depend on the other images in the subset (only the partner, drawn among them, does)."""
    a = KDViews(4, 8, seed=7, min_scale=0.08, device="cpu", ids=[3, 42, 100, 7]).params(5)
    b = KDViews(3, 8, seed=7, min_scale=0.08, device="cpu", ids=[42, 9, 1000]).params(5)
    for k in ("w", "h", "cx", "cy", "flip", "bh", "by", "bx"):
        assert torch.equal(a[k][1], b[k][0]), k
    assert not torch.equal(
        torch.stack([a[k][0] for k in ("w", "cx", "cy")]), torch.stack([b[k][1] for k in ("w", "cx", "cy")])
    )  # other ids, other boxes
    c = KDViews(3, 8, seed=7, min_scale=0.08, device="cpu", ids=[42, 9, 1000]).params(6)
    assert not torch.equal(b["cx"][0], c["cx"][0])  # another epoch, another view


def test_kd_labels_change_between_epochs(teacher, small):
    T = 4.0
    cfg = TrainConfig(temperature=T, kd_backend="online")
    reg = FreshSoftLabels(cfg, 0, teacher)
    reg.prepare(small, num_epochs=3)
    pos = torch.tensor([1, 5, 9])
    labels = [reg.teacher_logits(reg.views.mixed(small, pos, e)) for e in range(3)]
    for a, b in ((0, 1), (1, 2)):
        assert (labels[a] - labels[b]).abs().max(dim=1).values.min() > 1e-3  # every sample's label moved
    # The regime's loss uses exactly those labels: with an input-blind student, the loss changes with the epoch
    # and equals KL(softmax(teacher(mixed view)/T) || student).
    const = ConstantStudent()
    losses = []
    for e in range(3):
        loss = reg.loss(const, small, pos, e, torch_generator(0, "augment", e))[0]
        want = F.kl_div(
            F.log_softmax(const(small.float_batch(pos)) / T, dim=1),
            F.softmax(labels[e] / T, dim=1),
            reduction="batchmean",
        )
        torch.testing.assert_close(loss.detach(), want.detach(), rtol=1e-6, atol=1e-8)
        losses.append(loss.item())
    assert len(set(losses)) == 3


# ------------------------------------------------------------------ online vs stored (§1.3)
EPOCHS = 3


def stored_labels(folder, teacher, data, seed: int, epochs: int, topk: int = 0, min_scale: float = 0.08):
    """Stored SL+KD labels written to disk as the kd_epoch stage writes them (workers.kd_labels.write_epoch)."""
    from workers.kd_labels import StoredLabels, write_epoch

    views = KDViews(len(data.y), data.input_side, seed, min_scale, data.device, ids=data.ids)
    nbytes = 0
    for e in range(epochs):
        (folder / str(e)).mkdir(parents=True)
        nbytes += write_epoch(folder / str(e), teacher, views, data, e, topk)
    return StoredLabels(lambda e: folder / str(e), epochs, len(data.y), nbytes)


@pytest.fixture(scope="module")
def online_and_stored(teacher, small, tmp_path_factory):
    T = 4.0
    on = FreshSoftLabels(TrainConfig(temperature=T, kd_backend="online"), 11, teacher)
    labels = stored_labels(tmp_path_factory.mktemp("kd"), teacher, small, 11, EPOCHS)
    st = FreshSoftLabels(TrainConfig(temperature=T, kd_backend="stored"), 11, teacher, labels)
    on.prepare(small, EPOCHS)
    st.prepare(small, EPOCHS)
    return on, st


def test_stored_logits_equal_online_teacher_on_regenerated_view(teacher, small, online_and_stored):
    on, st = online_and_stored
    n = len(small.y)
    pos = torch.arange(n)
    assert np.array_equal(st.views.ids, small.ids.numpy())  # views keyed by train-split ids, not positions
    for e in range(EPOCHS):
        # Regenerate the view with a fresh KDViews (no shared state with the one that stored the labels).
        view = KDViews(n, 8, 11, 0.08, "cpu", ids=small.ids).mixed(small, pos, e)
        with torch.no_grad():
            online = teacher(view)
        stored = st._stored_logits(pos, e, C)
        assert stored.dtype == torch.float32 and st.labels.epoch(e)[0].dtype == torch.float16
        assert online.abs().max() > 1.0  # real, non-trivial logits
        torch.testing.assert_close(stored, online, rtol=2**-10, atol=1e-3)
        # Keyed by position, not by batch: any subset of positions, in any order, reads the same rows.
        some = torch.tensor([17, 2, 33])
        assert torch.equal(st._stored_logits(some, e, C), stored[some])
    assert not torch.allclose(st._stored_logits(pos, 0, C), st._stored_logits(pos, 1, C))


def test_online_and_stored_losses_match(small, online_and_stored):
    on, st = online_and_stored
    s = student(2)
    pos = torch.tensor([0, 4, 8, 12, 39])
    for e in range(EPOCHS):
        lo = on.loss(s, small, pos, e, torch_generator(0, "augment", e))[0]
        ls = st.loss(s, small, pos, e, torch_generator(0, "augment", e))[0]
        torch.testing.assert_close(ls, lo, rtol=2e-3, atol=1e-6)


def test_stored_bytes_full_fp16(small, online_and_stored):
    on, st = online_and_stored
    assert st.soft_label_bytes == EPOCHS * len(small.y) * C * 2
    assert on.soft_label_bytes == 0


def test_topk_storage(teacher, small, online_and_stored, tmp_path):
    _, full = online_and_stored
    n = len(small.y)
    pos = torch.arange(n)

    labels = stored_labels(tmp_path / "all", teacher, small, 11, EPOCHS, topk=C)
    k_all = FreshSoftLabels(TrainConfig(temperature=4.0, kd_backend="stored", kd_topk=C), 11, teacher, labels)
    k_all.prepare(small, EPOCHS)
    assert k_all.soft_label_bytes == full.soft_label_bytes
    for e in range(EPOCHS):
        assert torch.equal(k_all._stored_logits(pos, e, C), full._stored_logits(pos, e, C))

    k = 3
    labels = stored_labels(tmp_path / "top", teacher, small, 11, EPOCHS, topk=k)
    top = FreshSoftLabels(TrainConfig(temperature=4.0, kd_backend="stored", kd_topk=k), 11, teacher, labels)
    top.prepare(small, EPOCHS)
    assert top.soft_label_bytes == EPOCHS * n * k * (2 + 2)  # fp16 values + int16 class ids
    for e in range(EPOCHS):
        f = full._stored_logits(pos, e, C)
        r = top._stored_logits(pos, e, C)
        values, idx = top.labels.epoch(e)
        idx = idx.long()
        # the k largest are exact ...
        torch.testing.assert_close(
            torch.sort(r.gather(1, idx), dim=1).values,
            torch.sort(f.topk(k, dim=1).values, dim=1).values,
            rtol=0,
            atol=0,
        )
        assert torch.equal(r.gather(1, idx), f.gather(1, idx))
        # ... and every other class gets the smallest stored logit
        rest = torch.ones_like(r, dtype=torch.bool).scatter(1, idx, False)
        smallest = values.float().min(dim=1, keepdim=True).values.expand(-1, C)
        assert torch.equal(r[rest], smallest[rest])
        assert rest.sum() == n * (C - k)
        assert torch.all(r >= f)  # the filler never exceeds a true logit's rank


def test_online_and_stored_students_track_each_other(teacher, splits, tmp_path):
    idx = class_balanced(splits, 10)
    data, test = tensors(splits, idx), tensors(splits, split="test")
    budget = BudgetConfig("epochs", 12)
    results = {}
    for backend in ("online", "stored"):
        cfg = TrainConfig(
            optimizer="adamw",
            lr=0.01,
            weight_decay=5e-4,
            batch_size=32,
            temperature=4.0,
            kd_backend=backend,
            kd_min_scale=0.5,
            eval_points=1,
        )
        p = plan(budget, len(idx), len(splits.train_y), cfg.batch_size)
        model = student(seed=3)
        before = evaluate(model, test)["loss"]
        epochs = -(-p.images_seen // len(idx))
        labels = stored_labels(tmp_path, teacher, data, 3, epochs, min_scale=0.5) if backend == "stored" else None
        reg = FreshSoftLabels(cfg, 3, teacher, labels)
        out = train(model, reg, data, cfg, p, 3, {"test": test}, Checkpointer(None))
        results[backend] = (before, out["history"][-1], reg.soft_label_bytes)
    (b_on, h_on, bytes_on), (b_st, h_st, bytes_st) = results["online"], results["stored"]
    assert b_on == b_st  # same init
    assert bytes_on == 0 and bytes_st == 12 * len(idx) * C * 2  # the stored run really replayed stored labels
    # both learned something, so "close" is not "both untouched"
    assert h_on["test_loss"] < 0.9 * b_on and h_st["test_loss"] < 0.9 * b_st
    assert h_on["test_top1"] > 0.3 and h_st["test_top1"] > 0.3  # chance is 0.1
    assert h_on["test_loss"] == pytest.approx(h_st["test_loss"], rel=0.02)
    assert abs(h_on["test_top1"] - h_st["test_top1"]) <= 0.05


# ------------------------------------------------------------------ loss convention (§1.4)
def test_kl_loss_batchmean_and_t2_scale():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, C, generator=g) * 5
    t = F.softmax(torch.randn(6, C, generator=g) * 5, dim=1)
    for T in (1.0, 4.0, 20.0):
        plain = kl_loss(s, t, T, t2_scale=False)
        scaled = kl_loss(s, t, T, t2_scale=True)
        torch.testing.assert_close(scaled, plain * T * T, rtol=1e-6, atol=0)
        manual = (t * (t.log() - F.log_softmax(s / T, dim=1))).sum() / len(s)  # batchmean: sum / batch
        torch.testing.assert_close(plain, manual, rtol=1e-5, atol=1e-7)
        mean_over_all = F.kl_div(F.log_softmax(s / T, dim=1), t, reduction="sum") / t.numel()  # what "mean" gives
        assert plain.item() == pytest.approx(mean_over_all.item() * C, rel=1e-5)
        assert abs(plain.item() - mean_over_all.item()) > 1e-3 * plain.item()


def test_regime_loss_applies_t2_only_when_asked(teacher, small):
    pos = torch.tensor([0, 1, 2, 3])
    s = student(4)
    losses = {}
    for scale in (False, True):
        for name, cls in (("sl", FixedSoftLabels), ("sl_kd", FreshSoftLabels)):
            reg = cls(TrainConfig(temperature=20.0, t2_scale=scale, augment="crop"), 0, teacher)
            reg.prepare(small, 1)
            losses[name, scale] = reg.loss(s, small, pos, 0, torch_generator(0, "augment", 0))[0].item()
    for name in ("sl", "sl_kd"):
        assert losses[name, True] == pytest.approx(400.0 * losses[name, False], rel=1e-5)


# ------------------------------------------------------------------ the regimes share their images (§1)
SPEC = """
name: regimes
dataset: {name: digits}
teacher: {arch: convnet, depth: 2, width: 16, epochs: 3}
student: {arch: convnet, depth: 2, width: 16}
budget: {epochs: 10}
grid: {selector: [random, herding], regime: [hl, sl, sl_kd], ipc: [3], seed: [0]}
"""


def test_regimes_of_one_subset_train_the_same_images():
    from orchestrator.grid import expand
    from orchestrator.spec import parse_spec
    from workers.graph import requires, subset_key

    spec = parse_spec(SPEC)
    trials = expand(spec)
    assert len(trials) == 6
    tkey = teacher_key(spec.dataset, spec.teacher)
    by_sel: dict[str, dict[str, object]] = {}
    for t in trials:
        by_sel.setdefault(t.selector.name, {})[t.regime] = t
    assert set(by_sel) == {"random", "herding"}
    keys = {}
    for sel, regimes in by_sel.items():
        assert set(regimes) == {"hl", "sl", "sl_kd"}
        ks = {r: subset_key(t) for r, t in regimes.items()}
        assert ks["hl"] == ks["sl"] == ks["sl_kd"], sel
        keys[sel] = ks["hl"]
        for r, t in regimes.items():
            assert requires(t)[0] == ks[r]
            needs = r in ("sl", "sl_kd") or sel == "herding"
            assert (tkey in requires(t)) is needs, (sel, r)
            assert (t.teacher is not None) is needs, (sel, r)
        # the trials themselves differ (regime is part of the trial id) while the images do not
        assert len({t.trial_id for t in regimes.values()}) == 3
    assert keys["random"] != keys["herding"]


# ------------------------------------------------------------------ views cut from a larger cached image (issue #11)
def test_rrc_flip_cuts_views_of_the_input_side_from_a_larger_image():
    from workers.regimes import center_crop

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 20, 20, generator=g)
    a = augment(x, "rrc_flip", torch_generator(0, "augment", 3), side=16)
    b = augment(x, "rrc_flip", torch_generator(0, "augment", 3), side=16)
    c = augment(x, "rrc_flip", torch_generator(0, "augment", 4), side=16)
    assert a.shape == (6, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    # a constant image stays constant: the box is resampled from inside the image, never padded
    flat = torch.full((2, 3, 20, 20), 0.25)
    torch.testing.assert_close(augment(flat, "rrc_flip", g, side=8), torch.full((2, 3, 8, 8), 0.25))
    # the same-size views take the centre crop of the shifted image; none is the clean view
    assert torch.equal(augment(x, "none", g, side=16), center_crop(x, 16)) and torch.equal(
        center_crop(x, 16), x[..., 2:18, 2:18]
    )
    assert augment(x, "crop_flip", g, side=16).shape == (6, 3, 16, 16)
    assert torch.equal(center_crop(x, 20), x)  # unchanged at its own side (digits: bit-identical)


def test_kd_views_resample_to_the_input_side(small):
    big = Tensors(
        small.x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3),
        small.y,
        small.mean,
        small.std,
        small.ids,
        side=8,
    )
    views = KDViews(len(small.y), 8, seed=0, min_scale=0.5, device="cpu", ids=small.ids)
    v = views.mixed(big, torch.arange(6), epoch=1)
    assert v.shape == (6, 1, 8, 8)
    same = KDViews(len(small.y), 8, seed=0, min_scale=0.5, device="cpu", ids=small.ids).mixed(small, torch.arange(6), 1)
    # the same boxes of the same picture at twice the resolution: close, not equal (bilinear resampling)
    assert (v - same).abs().mean() < 0.25 * same.abs().mean()
