"""Contract tests parametrised over every catalogue entry: a method is tested the moment it is declared.

Selectors and distillers also run end to end through the stage mechanism in test_selectors_registry.py.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from orchestrator.grid import expand
from orchestrator.spec import parse_spec
from workers import models
from workers.artifacts import ArtifactStore
from workers.catalogue import ARCHS, DATASETS, REGIMES, SELECTORS, STAGES
from workers.config import OPTIMIZERS, TRAIN_OPTIONS, DatasetConfig, TrainConfig, _frozen_options
from workers.data import load_splits
from workers.graph import cache_key, selector_inputs
from workers.options import resolve
from workers.registry import INPUTS
from workers.schedules import SCHEDULES
from workers.train import Tensors, channel_stats

ALL = [(reg.kind, e.name) for reg in (DATASETS, ARCHS, REGIMES, SELECTORS, STAGES) for e in reg.entries()]
REG = {r.kind: r for r in (DATASETS, ARCHS, REGIMES, SELECTORS, STAGES)}


@pytest.mark.parametrize("kind,name", ALL)
def test_every_entry_is_documented_importable_and_its_defaults_pass_its_schema(kind, name):
    entry = REG[kind][name]
    assert entry.description and not entry.description.endswith(".")
    assert callable(entry.load())
    for key, opt in entry.options.items():
        assert opt.doc, f"{kind} {name}: option {key} has no doc"
    resolved, problems = entry.resolve({k: o.default for k, o in entry.options.items()}, kind)
    assert not problems
    assert resolved == entry.resolve({}, kind)[0]  # the defaults are what an empty mapping resolves to
    unknown, problems = entry.resolve({"no_such_option": 1}, kind)
    assert problems and "no_such_option" in problems[0]


@pytest.mark.parametrize("name", ARCHS.names())
def test_every_arch_builds_with_its_defaults_and_is_seeded(name):
    opts = ARCHS[name].resolve({}, "arch")[0]
    if name == "convnet":
        opts["depth"] = 2  # the default depth 3 needs >= 8 px; digits at 8 px takes 2
    a = models.build(name, opts, 10, (1, 8, 8), seed=3)
    b = models.build(name, opts, 10, (1, 8, 8), seed=3)
    x = torch.randn(4, 1, 8, 8)
    assert a(x).shape == (4, 10)
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("name", REGIMES.names())
def test_every_regime_gives_a_loss_and_the_student_logits(name):
    splits = load_splits(parse_spec(SPEC.format(selector="random", regime=name)).dataset)
    mean, std = channel_stats(splits.train_x, "cpu")
    data = Tensors.of(splits.train_x[:32], splits.train_y[:32], mean, std, ids=np.arange(32))
    recipe, problems = resolve(TRAIN_OPTIONS, REGIMES[name].recipe, f"regimes.{name}.recipe", name)
    assert not problems, problems
    cfg = TrainConfig(**recipe)
    teacher = models.build("convnet", {"depth": 2, "width": 8, "norm": "batch"}, 10, (1, 8, 8), seed=0).eval()
    regime = REGIMES[name].load()(cfg, 0, teacher if REGIMES[name].needs_teacher else None)
    regime.prepare(data, 1)
    student = models.build("convnet", {"depth": 2, "width": 8}, 10, (1, 8, 8), seed=1)
    loss, logits = regime.loss(student, data, torch.arange(8), 0, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    assert logits.shape == (8, 10)


SPEC = """
name: contract
dataset: {{name: digits}}
teacher: {{arch: convnet, depth: 2, width: 8, norm: batch, epochs: 1}}
student: {{arch: convnet, depth: 2, width: 8}}
budget: {{full_epochs: 4}}
grid: {{selector: [{selector}], regime: [{regime}], ipc: [1, 3], seed: [0]}}
selectors: {{rded: {{mipc: 20}}, ca2d: {{mipc: 20}}}}
"""


@pytest.mark.parametrize("name", SELECTORS.names())
def test_every_selector_declares_what_it_reads_and_plans(name):
    entry = SELECTORS[name]
    assert set(entry.inputs) <= set(INPUTS)
    trials = expand(parse_spec(SPEC.format(selector=name, regime="hl")))
    for t in trials:
        keys = selector_inputs(t)
        assert {k.kind for k in keys} == set(entry.inputs)
        if "dynamics" in entry.inputs:
            runs = [k for k in keys if k.kind == "dynamics"]
            assert len(runs) == entry.score_runs(t) and {k.cfg["epochs"] for k in runs} == {entry.score_epochs(t)}
    # the implementation takes the context object its kind is called with
    assert len(inspect.signature(entry.load()).parameters) == 1


@pytest.mark.parametrize("name", STAGES.names())
def test_every_stage_kind_builds_from_key_store_and_folder(name):
    params = inspect.signature(STAGES[name].load()).parameters
    positional = [p for p, v in params.items() if v.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert positional == ["key", "store", "out"]
    keyword = {p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY}
    # a data-parallel kind is built by every rank of a worker group and resumes from a checkpoint
    assert keyword == ({"dist", "checkpoint"} if STAGES[name].data_parallel else set())


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_describes_itself_without_loading_torch(name, tmp_path):
    if DATASETS[name].needs_root:
        from datafiles import make_root

        make_root(name, tmp_path)
    root = str(tmp_path) if DATASETS[name].needs_root else None
    opts = DATASETS[name].resolve({}, "dataset")[0]
    if DATASETS[name].derive:
        opts = DATASETS[name].derive(opts)
    code = f"from workers.catalogue import DATASETS; DATASETS[{name!r}].facts({root!r}, {opts!r}); import sys; " + (
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    facts = DATASETS[name].facts(root, opts)
    assert set(facts) >= {"class_names", "train_class_sizes", "num_train", "image_shape"}
    assert facts["num_train"] == sum(facts["train_class_sizes"])
    splits = load_splits(DatasetConfig(name, root, _frozen_options(opts)), ArtifactStore(tmp_path / "store"))
    assert list(splits.class_names) == facts["class_names"] and len(splits.train_y) == facts["num_train"]
    assert list(splits.input_shape) == facts["image_shape"] and splits.train_x.dtype == np.uint8
    assert DATASETS[name].cached == (cache_key(DatasetConfig(name, root, _frozen_options(opts))) is not None)


def test_declared_choices_match_the_training_code():
    from workers.regimes import _AUGMENT
    from workers.train import _OPTIMIZERS

    assert set(_OPTIMIZERS) == set(OPTIMIZERS)
    assert set(_AUGMENT) == set(TRAIN_OPTIONS["augment"].choices)
    assert set(TRAIN_OPTIONS["schedule"].choices) == set(SCHEDULES)
    for name, fn in SCHEDULES.items():
        assert fn(0.0) == 1.0 and 0.0 <= fn(1.0) <= 1.0, name


def test_regime_recipes_and_dataclass_defaults_come_from_the_schema():
    assert TrainConfig() == TrainConfig(**{k: o.default for k, o in TRAIN_OPTIONS.items()})
    for r in REGIMES.entries():
        assert set(r.recipe) <= set(TRAIN_OPTIONS)
    assert replace(TrainConfig(), lr=0.5).lr == 0.5
