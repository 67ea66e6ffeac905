"""DSA (docs/methods.md §2.3; workers/dsa.py) against its known behaviour: each operation against a brute-force
restatement, the Siamese property (one parameter set applied to a batch pair transforms both alike), the published
parameter ranges, seeding, gradients; and DSA as the hl/sl default with score runs kept on crop + flip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from orchestrator.grid import expand
from orchestrator.spec import parse_spec
from workers import dsa
from workers.seeding import torch_generator


def gen(seed: int = 0) -> torch.Generator:
    return torch_generator(seed, "test.dsa")


def batch(n: int = 6, c: int = 3, side: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, side, side, generator=gen(100 + seed), dtype=torch.float64)


def given(op: str, n: int, **values) -> dict:
    return {"op": op, **{k: torch.as_tensor(v).expand(n) for k, v in values.items()}}


# ------------------------------------------------------------------ each operation, brute force
def test_crop_shifts_with_zero_fill():
    x = batch()
    out = dsa.apply(x, given("crop", 6, dy=[-2, 0, 1, 3, 0, -1], dx=[1, -3, 0, 2, 0, -1]))
    for b, (dy, dx) in enumerate(zip([-2, 0, 1, 3, 0, -1], [1, -3, 0, 2, 0, -1])):
        ref = torch.zeros_like(x[b])
        for i in range(8):
            for j in range(8):
                if 0 <= i + dy < 8 and 0 <= j + dx < 8:
                    ref[:, i, j] = x[b, :, i + dy, j + dx]
        torch.testing.assert_close(out[b], ref, rtol=0, atol=0)


def test_cutout_zeroes_a_clipped_square():
    x = batch(n=3, side=9)  # cutout side round(4.5) = 5, centres in [0, 9)
    out = dsa.apply(x, given("cutout", 3, cy=[4, 0, 8], cx=[4, 8, 1]))
    for b, (cy, cx) in enumerate([(4, 4), (0, 8), (8, 1)]):
        mask = torch.ones(9, 9, dtype=torch.bool)
        for r in range(5):
            for c in range(5):
                mask[min(max(cy - 2 + r, 0), 8), min(max(cx - 2 + c, 0), 8)] = False  # the reference's clamp
        torch.testing.assert_close(out[b], x[b] * mask, rtol=0, atol=0)
    assert (out[0] == 0).all(dim=0).sum() == 25 and (out[1] == 0).all(dim=0).sum() == 9


def test_flip_is_a_horizontal_mirror_where_drawn():
    x = batch()
    flags = torch.tensor([True, False, True, False, False, True])
    out = dsa.apply(x, {"op": "flip", "flip": flags})
    for b in range(6):
        torch.testing.assert_close(out[b], x[b].flip(2) if flags[b] else x[b], rtol=0, atol=0)


def bilinear(img: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Brute force of affine_grid + grid_sample (align_corners False, zero padding): output pixel (i, j) at
    normalised (u, v) = ((2j + 1)/W - 1, (2i + 1)/H - 1) reads the input at a @ (u, v), bilinearly."""
    c, h, w = img.shape
    out = np.zeros_like(img)
    for i in range(h):
        for j in range(w):
            u, v = a @ np.array([(2 * j + 1) / w - 1, (2 * i + 1) / h - 1])
            px, py = ((u + 1) * w - 1) / 2, ((v + 1) * h - 1) / 2
            x0, y0 = math.floor(px), math.floor(py)
            for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
                for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
                    if 0 <= yy < h and 0 <= xx < w:
                        out[:, i, j] += wy * wx * img[:, yy, xx]
    return out


def test_scale_and_rotate_resample_bilinearly_about_the_centre():
    x = batch(n=2, c=2, side=7)
    sx, sy = torch.tensor([1.2, 0.9]), torch.tensor([1 / 1.2, 1.1])
    out = dsa.apply(x, {"op": "scale", "sx": sx, "sy": sy})
    for b in range(2):
        ref = bilinear(x[b].numpy(), np.diag([sx[b].item(), sy[b].item()]))
        np.testing.assert_allclose(out[b].numpy(), ref, atol=1e-12)
    angle = torch.tensor([0.2, -0.26])
    out = dsa.apply(x, {"op": "rotate", "angle": angle})
    for b in range(2):
        t = angle[b].item()
        ref = bilinear(x[b].numpy(), np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]))
        np.testing.assert_allclose(out[b].numpy(), ref, atol=1e-12)
    square = batch(n=1, c=1, side=6)
    quarter = dsa.apply(square, {"op": "rotate", "angle": torch.tensor([math.pi / 2], dtype=torch.float64)})
    torch.testing.assert_close(quarter, torch.rot90(square, 1, dims=(2, 3)), rtol=0, atol=1e-12)
    ident = dsa.apply(square, {"op": "scale", "sx": torch.ones(1), "sy": torch.ones(1)})
    torch.testing.assert_close(ident, square, rtol=0, atol=1e-12)


def test_color_is_brightness_then_saturation_then_contrast():
    x = batch(n=2)
    u = {
        "brightness": torch.tensor([0.1, 0.8]),
        "saturation": torch.tensor([0.3, 0.9]),
        "contrast": torch.tensor([0.0, 1.0]),
    }
    out = dsa.apply(x, {"op": "color", **u})
    for b in range(2):
        y = x[b].numpy() + (u["brightness"][b].item() - 0.5) * 1.0
        y = (y - y.mean(axis=0)) * (2.0 * u["saturation"][b].item()) + y.mean(axis=0)
        y = (y - y.mean()) * (u["contrast"][b].item() + 0.5) + y.mean()
        np.testing.assert_allclose(out[b].numpy(), y, atol=1e-12)
    grey = batch(n=4, c=1)
    d = dsa.draw(4, 8, 8, gen(), op="color")
    out = dsa.apply(grey, d)  # one channel: saturation does nothing; contrast keeps the image mean
    shifted = grey + (d["brightness"].view(-1, 1, 1, 1) - 0.5)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), shifted.mean(dim=(1, 2, 3)))


# ------------------------------------------------------------------ Siamese: one draw, a batch pair, the same transform
@pytest.mark.parametrize("op", dsa.OPS)
def test_one_siamese_draw_transforms_both_batches_of_a_pair_alike(op):
    real, syn = batch(n=5, seed=1), batch(n=5, seed=2)
    d = dsa.draw(5, 8, 8, gen(3), siamese=True, op=op)
    for k, v in d.items():
        if k != "op":
            assert (v == v[0]).all(), k  # one parameter set for the whole batch
    a, b = dsa.apply(real, d), dsa.apply(syn, d)
    both = dsa.apply(torch.cat([real, syn]), {k: (torch.cat([v, v]) if k != "op" else v) for k, v in d.items()})
    torch.testing.assert_close(both, torch.cat([a, b]), rtol=0, atol=0)
    same = dsa.apply(torch.cat([real[:1]] * 5), d)  # identical images come out identical
    assert all(torch.equal(same[0], s) for s in same)
    if op not in ("color",):  # geometric operations are linear in the image: T(real + syn) = T(real) + T(syn)
        torch.testing.assert_close(dsa.apply(real + syn, d), a + b, rtol=1e-12, atol=1e-12)


def test_training_views_draw_per_image_parameters_and_one_operation_per_batch():
    seen = {op: 0 for op in dsa.OPS}
    for seed in range(600):
        d = dsa.draw(16, 32, 32, gen(seed))
        seen[d["op"]] += 1
        if d["op"] == "crop":
            assert d["dy"].abs().max() <= 4 and d["dx"].abs().max() <= 4  # round(32 * 0.125)
        if d["op"] == "scale":
            assert (d["sx"] >= 1 / 1.2).all() and (d["sx"] <= 1.2).all()
        if d["op"] == "rotate":
            assert d["angle"].abs().max() <= math.radians(15)
        if d["op"] in ("scale", "rotate", "color"):
            values = d["sx"] if d["op"] == "scale" else d["angle"] if d["op"] == "rotate" else d["brightness"]
            assert len(set(values.tolist())) == 16  # each image its own draw
    assert all(70 <= v <= 130 for v in seen.values()), seen  # uniform over the six, 100 expected each
    assert dsa.draw(4, 8, 8, gen(0), op="crop")["dy"].abs().max() <= 1  # round(8 * 0.125) = 1 at 8 px


def test_seeded_and_differentiable():
    x = batch(n=8, side=16).float()
    a, b = dsa.augment(x, gen(5)), dsa.augment(x, gen(5))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert any(not torch.equal(dsa.augment(x, gen(5)), dsa.augment(x, gen(s))) for s in range(6, 9))
    for op in dsa.OPS:
        leaf = x.clone().requires_grad_(True)
        dsa.apply(leaf, dsa.draw(8, 16, 16, gen(1), op=op)).sum().backward()
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all(), op


# ------------------------------------------------------------------ the paper's recipe: DSA for hl and sl students
RECIPES = """
name: dsa
dataset: {{name: digits}}
teacher: {{arch: convnet, depth: 2, epochs: 1}}
student: {{arch: convnet, depth: 2}}
budget: {{epochs: 3}}
grid: {{selector: [el2n], regime: [hl, sl, sl_kd], ipc: [1], seed: [0]}}
{train}
"""


def test_dsa_is_the_default_for_hl_and_sl_students_and_score_runs_keep_crop_flip():
    hl, sl, kd = expand(parse_spec(RECIPES.format(train="")))
    assert hl.train.augment == sl.train.augment == "dsa"
    assert hl.scoring.augment == "crop_flip" and hl.scoring == sl.scoring == kd.scoring
    assert hl.scoring.optimizer == hl.train.optimizer and hl.scoring.schedule == hl.train.schedule
    hl, sl, _ = expand(parse_spec(RECIPES.format(train="train: {augment: crop}")))
    assert hl.train.augment == sl.train.augment == hl.scoring.augment == "crop"  # a sweep's choice wins
    hl, sl, _ = expand(parse_spec(RECIPES.format(train="train: {hl: {augment: none}}")))
    assert hl.train.augment == hl.scoring.augment == "none" and sl.train.augment == "dsa"
