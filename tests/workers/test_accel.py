"""The CUDA fast path's switches, on the CPU: auto changes nothing here, the switches train correctly."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from workers import models
from workers.accel import prepare, resolve_precision, use_channels_last
from workers.budget import plan
from workers.config import BudgetConfig, TrainConfig
from workers.data.digits import load
from workers.regimes import HardLabels
from workers.train import Checkpointer, Tensors, channel_stats, evaluate, train


def _run(**cfg_kw) -> tuple[dict, dict]:
    torch.set_num_threads(1)
    s = load(None, 8, 10, 0.2)
    idx = np.concatenate([np.flatnonzero(s.train_y == c)[:20] for c in range(10)])
    mean, std = channel_stats(s.train_x, "cpu")
    data = Tensors.of(s.train_x[idx], s.train_y[idx], mean, std, ids=idx)
    test = Tensors.of(s.test_x, s.test_y, mean, std)
    cfg = TrainConfig(optimizer="adamw", lr=0.01, batch_size=32, augment="crop_flip", eval_points=1, **cfg_kw)
    model = models.build("convnet", {"depth": 2, "width": 16, "norm": "instance"}, 10, (1, 8, 8), 0)
    p = plan(BudgetConfig("epochs", 20), len(idx), len(s.train_y), cfg.batch_size)
    out = train(model, HardLabels(cfg, 0), data, cfg, p, 0, {"test": test}, Checkpointer(None))
    return out, model.state_dict()


def test_auto_is_fp32_and_nchw_on_the_cpu_so_cpu_results_are_unchanged():
    assert resolve_precision("auto", "cpu") == "fp32" and not use_channels_last("auto", "cpu")
    auto, w_auto = _run()
    plain, w_plain = _run(precision="fp32", channels_last="no")
    assert auto["precision"] == "fp32" and auto["history"] == plain["history"]
    assert all(torch.equal(w_auto[k], w_plain[k]) for k in w_auto)


def test_bf16_asked_for_on_a_cpu_warns_and_trains_in_fp32(caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_precision("bf16", "cpu") == "fp32"
    assert "CUDA only" in caplog.text


def test_channels_last_trains_the_same_model_up_to_float_error():
    nchw, _ = _run(channels_last="no")
    nhwc, weights = _run(channels_last="yes")
    a, b = nchw["history"][-1], nhwc["history"][-1]
    assert abs(a["test_top1"] - b["test_top1"]) < 0.02 and abs(a["test_loss"] - b["test_loss"]) < 0.02
    conv = next(v for k, v in weights.items() if v.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) or conv.shape[-1] == 1


def test_a_channels_last_model_keeps_its_state_dict_and_takes_nchw_input():
    net = models.build("convnet", {"depth": 2, "width": 8, "norm": "instance"}, 10, (1, 8, 8), 0)
    keys = list(net.state_dict())
    x = torch.randn(4, 1, 8, 8)
    before = net(x)
    forward = prepare(net, "cpu", "yes", False)
    assert forward is net and list(net.state_dict()) == keys
    torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)
    s = load(None, 8, 10, 0.2)
    mean, std = channel_stats(s.train_x, "cpu")
    assert 0 <= evaluate(net, Tensors.of(s.test_x, s.test_y, mean, std))["top1"] <= 1


@pytest.mark.slow
def test_compile_is_opt_in_and_trains_like_eager():
    eager, _ = _run()
    compiled, _ = _run(compile=True)
    a, b = eager["history"][-1], compiled["history"][-1]
    assert abs(a["test_top1"] - b["test_top1"]) < 0.03, (a, b)
