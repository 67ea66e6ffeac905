"""Sweep YAML validation (README: Sweep YAML reference).

Every problem at once, each with its YAML path, the bad value and a hint.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.spec import SpecError, load_spec, parse_spec
from workers.catalogue import dataset_facts

REPO = Path(__file__).resolve().parents[2]
DDSWEEP = Path(sys.executable).parent / "ddsweep"

BASE = """\
name: unit-spec
storage: ./ddsweep-runs
dataset: {name: digits}
student: {arch: convnet, depth: 3, width: 16}
budget: {epochs: 5}
grid:
  selector: [random]
  regime: [hl]
  ipc: [1, 2]
  seed: [0, 1]
train: {optimizer: adamw, lr: 0.01, batch_size: 32}
resources: {cpus_per_trial: 1, gpus_per_trial: 0}
"""


def sub(old: str, new: str, text: str = BASE) -> str:
    """BASE with exactly one occurrence of `old` replaced (fails loudly if the base no longer has it)."""
    assert text.count(old) == 1, f"{old!r} must occur once in the base sweep"
    return text.replace(old, new)


def problems_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, source="bad.yaml")
    assert info.value.problems, "a SpecError must list at least one problem"
    return info.value.problems


# (id, yaml text, the exact start of one problem: its YAML path and ':', substrings that problem must contain)
CASES = [
    ("yaml-syntax", sub("ipc: [1, 2]", "ipc: [1, 2"), "(yaml) line ", ["line", "column"]),
    (
        "yaml-tab",
        sub("train: {optimizer: adamw, lr: 0.01, batch_size: 32}", "train:\n\tlr: 0.01"),
        "(yaml) line 12, column 1:",
        ["'\\t'"],
    ),
    (
        "duplicate-key",
        sub("budget: {epochs: 5}", "budget: {epochs: 5, epochs: 6}"),
        "(yaml) line 5,",
        ["'epochs' appears twice"],
    ),
    ("duplicate-top-key", BASE + "name: again\n", "(yaml) line 13,", ["'name' appears twice"]),
    ("unhashable-key", sub("train: {optimizer", "train: {[a, b]: 1, optimizer"), "(yaml) line 11,", ["unhashable key"]),
    (
        "top-not-mapping",
        "- name: unit-spec\n- grid: {}\n",
        "(top level): expected a mapping at the top of the file",
        ["a list"],
    ),
    ("top-empty", "", "(top level): expected a mapping at the top of the file", ["empty"]),
    ("unknown-top-key", sub("grid:", "gird:"), "gird:", ["unknown key", "did you mean 'grid'", "allowed:"]),
    ("missing-budget", sub("budget: {epochs: 5}\n", ""), "budget:", ["is required"]),
    ("missing-dataset-name", sub("{name: digits}", "{image_size: 8}"), "dataset.name:", ["is required"]),
    ("bad-name-charset", sub("name: unit-spec", "name: 'my sweep!'"), "name:", ["'my sweep!'", "A-Z a-z 0-9 . _ -"]),
    ("name-not-string", sub("name: unit-spec", "name: [a]"), "name:", ["['a']", "not a valid sweep name"]),
    (
        "object-store-scheme",
        sub("storage: ./ddsweep-runs", "storage: foo://bucket/runs"),
        "storage:",
        ["'foo://bucket/runs'", "not a usable storage URI", "s3://bucket/prefix"],
    ),
    (
        "unknown-dataset",
        sub("{name: digits}", "{name: svhn}"),  # (cifar10, once the example, is a data set now)
        "dataset.name:",
        ["'svhn'", "not a known dataset", "choose one of digits"],
    ),
    ("dataset-name-list", sub("{name: digits}", "{name: [digits]}"), "dataset.name:", ["['digits']", "digits"]),
    (
        "bad-dataset-option",
        sub("{name: digits}", "{name: digits, image_size: 12}"),
        "dataset.image_size:",
        ["12", "choose one of 8, 16, 32"],
    ),
    (
        "dataset-option-range",
        sub("{name: digits}", "{name: digits, test_fraction: 0.9}"),
        "dataset.test_fraction:",
        ["0.9", "<= 0.5"],
    ),
    (
        "unknown-dataset-option",
        sub("{name: digits}", "{name: digits, imagesize: 16}"),
        "dataset.imagesize:",
        ["'imagesize'", "did you mean 'image_size'"],
    ),
    ("dataset-root-not-path", sub("{name: digits}", "{name: digits, root: 5}"), "dataset.root:", ["5", "path"]),
    (
        "student-not-mapping",
        sub("{arch: convnet, depth: 3, width: 16}", "convnet"),
        "student:",
        ["expected a mapping", "'convnet'"],
    ),
    (
        "unknown-arch",
        sub("arch: convnet", "arch: vgg11"),
        "student.arch:",
        ["'vgg11'", "not a known arch", "convnet, resnet18, mlp"],
    ),
    (
        "bad-arch-choice",
        sub("width: 16}", "width: 16, norm: layer}"),
        "student.norm:",
        ["'layer'", "instance, batch, none"],
    ),
    ("arch-option-type", sub("depth: 3", "depth: deep"), "student.depth:", ["'deep'", "not an integer"]),
    ("arch-option-float", sub("depth: 3", "depth: 2.5"), "student.depth:", ["2.5", "not an integer"]),
    ("arch-option-max", sub("depth: 3", "depth: 9"), "student.depth:", ["9", "<= 6"]),
    (
        "unknown-arch-option",
        sub("{arch: convnet, depth: 3, width: 16}", "{arch: mlp, depth: 2}"),
        "student.depth:",
        ["'mlp' has no option 'depth'", "its options: width"],
    ),
    ("convnet-too-deep", sub("depth: 3", "depth: 4"), "student.depth:", ["4", "8px", "use depth <= 3"]),
    (
        "teacher-convnet-too-deep",
        BASE + "teacher: {arch: convnet, depth: 5, epochs: 3}\n",
        "teacher.depth:",
        ["5", "8px", "use depth <= 3"],
    ),
    (
        "budget-two-units",
        sub("{epochs: 5}", "{epochs: 5, steps: 100}"),
        "budget:",
        ["exactly one of epochs, full_epochs, steps", "got 2 (epochs, steps)"],
    ),
    ("budget-no-unit", sub("{epochs: 5}", "{}"), "budget:", ["exactly one of epochs, full_epochs, steps", "got 0"]),
    ("budget-unknown-unit", sub("{epochs: 5}", "{epoch: 5}"), "budget.epoch:", ["did you mean 'epochs'"]),
    ("budget-zero", sub("{epochs: 5}", "{epochs: 0}"), "budget.epochs:", ["0", "> 0"]),
    ("budget-negative", sub("{epochs: 5}", "{full_epochs: -2}"), "budget.full_epochs:", ["-2", "> 0"]),
    ("budget-steps-not-integer", sub("{epochs: 5}", "{steps: 12.5}"), "budget.steps:", ["12.5", "integer"]),
    ("budget-nan", sub("{epochs: 5}", "{epochs: .nan}"), "budget.epochs:", ["nan", "not a number"]),
    ("budget-not-mapping", sub("{epochs: 5}", "10"), "budget:", ["expected a mapping", "10"]),
    ("empty-axis", sub("ipc: [1, 2]", "ipc: []"), "grid.ipc:", ["empty", "at least one value"]),
    ("null-axis", sub("seed: [0, 1]", "seed:"), "grid.seed:", ["empty", "at least one value"]),
    ("missing-axis", sub("  seed: [0, 1]\n", ""), "grid.seed:", ["is required"]),
    ("unknown-axis", sub("seed: [0, 1]", "seed: [0, 1]\n  seeds: [2]"), "grid.seeds:", ["did you mean 'seed'"]),
    (
        "grid-not-mapping",
        sub("grid:\n  selector: [random]\n  regime: [hl]\n  ipc: [1, 2]\n  seed: [0, 1]", "grid: [random, hl]"),
        "grid:",
        ["expected a mapping", "selector, regime, ipc, seed"],
    ),
    (
        "unknown-regime",
        sub("regime: [hl]", "regime: [hl, soft]"),
        "grid.regime[1]:",
        ["'soft'", "not a known regime", "choose one of hl"],
    ),
    ("regime-list", sub("regime: [hl]", "regime: [[hl]]"), "grid.regime[0]:", ["['hl']", "choose one of hl"]),
    (
        "unknown-selector",
        sub("selector: [random]", "selector: [random, rnadom]"),
        "grid.selector[1]:",
        ["'rnadom'", "did you mean 'random'", "choose one of random"],
    ),
    (
        "selector-not-name",
        sub("selector: [random]", "selector: [random, 3]"),
        "grid.selector[1]:",
        ["3", "not a selector", "{name: ..."],
    ),
    (
        "unknown-selector-option",
        sub("selector: [random]", "selector: [{name: random, bogus: 1}]"),
        "grid.selector[0].bogus:",
        ["'random' has no option 'bogus'", "its options: none"],
    ),
    (
        "unknown-selector-defaults",
        BASE + "selectors: {randon: {}}\n",
        "selectors.randon:",
        ["'randon'", "did you mean 'random'"],
    ),
    (
        "bad-selector-defaults",
        BASE + "selectors: {random: {bogus: 1}}\n",
        "selectors.random.bogus:",
        ["'random' has no option 'bogus'"],
    ),
    ("ipc-zero", sub("ipc: [1, 2]", "ipc: [0, 2]"), "grid.ipc[0]:", ["0", ">= 1"]),
    ("ipc-string", sub("ipc: [1, 2]", "ipc: [1, '2']"), "grid.ipc[1]:", ["'2'", "not an integer"]),
    ("ipc-float", sub("ipc: [1, 2]", "ipc: [1, 2.0]"), "grid.ipc[1]:", ["2.0", "not an integer"]),
    ("seed-negative", sub("seed: [0, 1]", "seed: [0, -1]"), "grid.seed[1]:", ["-1", ">= 0"]),
    ("seed-boolean", sub("seed: [0, 1]", "seed: [true]"), "grid.seed[0]:", ["True", "not an integer"]),
    ("duplicate-ipc", sub("ipc: [1, 2]", "ipc: [1, 2, 1]"), "grid.ipc[2]:", ["1", "repeats grid.ipc[0]"]),
    (
        "duplicate-after-bad",
        sub("regime: [hl]", "regime: [soft, hl, hl]"),
        "grid.regime[2]:",
        ["'hl'", "repeats grid.regime[1]"],
    ),
    ("duplicate-seed-after-bad", sub("seed: [0, 1]", "seed: [-3, 1, 1]"), "grid.seed[2]:", ["repeats grid.seed[1]"]),
    (
        "duplicate-selector",
        sub("selector: [random]", "selector: [random, {name: random}]"),
        "grid.selector[1]:",
        ["random", "repeats grid.selector[0]"],
    ),
    (
        "exclude-matches-nothing",
        BASE + "exclude: [{ipc: 50}]\n",
        "exclude[0].ipc:",
        ["50", "matches nothing", "the grid has 1, 2"],
    ),
    (
        "exclude-regime-nothing",
        BASE + "exclude: [{regime: hl}, {regime: sl}]\n",
        "exclude[1].regime:",
        ["'sl'", "the grid has hl"],
    ),
    ("exclude-empty-entry", BASE + "exclude: [{regime: hl}, {}]\n", "exclude[1]:", ["empty", "whole grid"]),
    ("exclude-unknown-axis", BASE + "exclude: [{ipcs: 1}]\n", "exclude[0].ipcs:", ["did you mean 'ipc'"]),
    ("exclude-not-list", BASE + "exclude: {regime: hl}\n", "exclude:", ["list", "a mapping"]),
    (
        "train-bad-choice",
        sub("optimizer: adamw", "optimizer: rmsprop"),
        "train.optimizer:",
        ["'rmsprop'", "choose one of sgd, adam, adamw"],
    ),
    (
        "train-bad-schedule",
        sub("lr: 0.01,", "lr: 0.01, schedule: linear,"),
        "train.schedule:",
        ["'linear'", "cosine, half_cosine, step, constant"],
    ),
    ("train-unknown-key", sub("lr: 0.01", "lrr: 0.01"), "train.lrr:", ["unknown key", "did you mean 'lr'"]),
    ("train-lr-zero", sub("lr: 0.01", "lr: 0"), "train.lr:", ["0", "> 0"]),
    ("train-batch-float", sub("batch_size: 32", "batch_size: 32.5"), "train.batch_size:", ["32.5", "integer"]),
    (
        "train-t2-not-bool",
        sub("lr: 0.01", "lr: 0.01, t2_scale: maybe"),
        "train.t2_scale:",
        ["'maybe'", "true or false"],
    ),
    ("train-kd-topk-fraction", sub("lr: 0.01", "lr: 0.01, kd_topk: 2.5"), "train.kd_topk:", ["2.5", "integer"]),
    ("train-negative-wd", sub("lr: 0.01", "lr: 0.01, weight_decay: -0.1"), "train.weight_decay:", ["-0.1", ">= 0"]),
    (
        "resources-negative-gpus",
        sub("gpus_per_trial: 0", "gpus_per_trial: -1"),
        "resources.gpus_per_trial:",
        ["-1", ">= 0"],
    ),
    (
        "resources-zero-everything",
        sub("cpus_per_trial: 1", "cpus_per_trial: 0"),
        "resources.cpus_per_trial:",
        ["unlimited"],
    ),
    (
        "max-concurrent-zero",
        sub("gpus_per_trial: 0", "gpus_per_trial: 0, max_concurrent: 0"),
        "resources.max_concurrent:",
        ["0", ">= 1"],
    ),
    (
        "resources-unknown-key",
        sub("gpus_per_trial: 0", "gpus: 1"),
        "resources.gpus:",
        ["unknown key", "gpus_per_trial"],
    ),
]


def test_cases_are_distinct():
    texts = [text for _, text, _, _ in CASES]
    assert len(set(texts)) == len(texts) >= 22
    assert BASE not in texts


@pytest.mark.parametrize("text,prefix,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_sweep_is_reported_with_its_path(text, prefix, needles):
    problems = problems_of(text)
    hits = [p for p in problems if p.startswith(prefix)]
    assert hits, f"no problem starts with {prefix!r}: {problems}"
    assert any(all(n in p for n in needles) for p in hits), f"{needles} not all in one of {hits}"


def test_missing_required_keys_each_reported():
    problems = problems_of("name: only-a-name\n")
    for key in ("dataset", "grid"):
        assert f"{key}: is required" in problems
    for key in ("student", "budget"):  # at the top or as a grid axis: the message shows both
        assert any(p.startswith(f"{key}: is required; give {key}: ") and f"grid.{key}" in p for p in problems)
    assert not any(p.startswith("name:") for p in problems)


def test_ipc_larger_than_smallest_class_names_class_and_limit():
    info = dataset_facts("digits", None, {"image_size": 8, "minival_per_class": 10, "test_fraction": 0.2})
    sizes = info["train_class_sizes"]
    limit = min(sizes)
    cls = info["class_names"][sizes.index(limit)]
    problems = problems_of(sub("ipc: [1, 2]", f"ipc: [1, {limit + 1}]"))
    assert problems == [
        f"grid.ipc[1]: {limit + 1} is more than the smallest class has ({limit} train images in "
        f"class {cls!r}); use ipc <= {limit}"
    ]
    # exactly the smallest class size is accepted
    assert parse_spec(sub("ipc: [1, 2]", f"ipc: [1, {limit}]")).ipcs == (1, limit)


def test_ipc_limit_follows_dataset_options():
    """More minival images per class leave fewer train images, so the IPC limit drops with them."""
    text = sub("{name: digits}", "{name: digits, minival_per_class: 100}", sub("ipc: [1, 2]", "ipc: [1, 100]"))
    problems = problems_of(text)
    assert len(problems) == 1 and problems[0].startswith("grid.ipc[1]: 100 is more than the smallest class has")


def test_unknown_regime_lists_every_regime():
    from workers.catalogue import REGIMES

    (problem,) = problems_of(sub("regime: [hl]", "regime: [soft]"))
    assert problem.startswith("grid.regime[0]: 'soft' is not a known regime; choose one of ")
    for name in REGIMES.names():
        assert name in problem.split("choose one of ", 1)[1]


def test_yaml_syntax_error_points_at_the_line():
    (problem,) = problems_of("name: x\ngrid: {ipc: [1, 2}\n")
    assert problem.startswith("(yaml) line 2, column ")


def test_several_problems_reported_at_once():
    text = sub("name: unit-spec", "name: 'bad name'")
    text = sub("{epochs: 5}", "{epochs: 0}", text)
    text = sub("regime: [hl]", "regime: [hl, soft]", text)
    text = sub("optimizer: adamw", "optimizer: rmsprop", text)
    text = sub("gpus_per_trial: 0", "gpus_per_trial: -1", text)
    with pytest.raises(SpecError) as info:
        parse_spec(text, source="multi.yaml")
    problems = info.value.problems
    assert len(problems) >= 3
    for path in ("name:", "budget.epochs:", "grid.regime[1]:", "train.optimizer:", "resources.gpus_per_trial:"):
        assert sum(p.startswith(path) for p in problems) == 1, (path, problems)
    message = str(info.value)
    assert message.startswith(f"multi.yaml: {len(problems)} problems")
    assert all(f"  - {p}" in message for p in problems)


def test_valid_base_parses_with_defaults_filled():
    spec = parse_spec(BASE)
    assert spec.name == "unit-spec"
    assert spec.storage == str(Path("./ddsweep-runs").resolve())  # made absolute where it is read
    assert spec.student.name == "convnet"
    assert spec.student.opts == {"depth": 3, "width": 16, "norm": "instance"}
    assert spec.dataset.name == "digits" and spec.dataset.root is None
    assert spec.dataset.opts == {"image_size": 8, "minival_per_class": 10, "test_fraction": 0.2}
    assert (spec.budget.unit, spec.budget.value) == ("epochs", 5.0)
    assert [s.name for s in spec.selectors] == ["random"]
    assert spec.regimes == ("hl",) and spec.ipcs == (1, 2) and spec.seeds == (0, 1)
    assert spec.train.optimizer == "adamw" and spec.train.lr == 0.01 and spec.train.batch_size == 32
    assert spec.train.schedule == "step"  # the hl default (docs/methods.md §2.3)
    assert spec.resources.cpus_per_trial == 1.0 and spec.resources.gpus_per_trial == 0.0
    assert spec.resources.max_concurrent is None and spec.resources.max_failures == 2
    assert spec.exclude == ()
    assert spec.source == BASE


def test_numbers_are_normalised():
    spec = parse_spec(sub("lr: 0.01", "lr: 1", sub("{epochs: 5}", "{steps: 300}")))
    assert isinstance(spec.train.lr, float) and spec.train.lr == 1.0
    assert (spec.budget.unit, spec.budget.value) == ("steps", 300) and isinstance(spec.budget.value, int)


def test_kd_topk_stays_an_integer():
    spec = parse_spec(sub("lr: 0.01", "lr: 0.01, kd_topk: 5"))
    assert spec.train.kd_topk == 5 and type(spec.train.kd_topk) is int


def test_scalar_axis_is_a_one_value_axis():
    spec = parse_spec(sub("seed: [0, 1]", "seed: 7", sub("regime: [hl]", "regime: hl")))
    assert spec.seeds == (7,) and spec.regimes == ("hl",)


def test_optional_sections_may_be_omitted():
    text = "".join(
        line + "\n" for line in BASE.splitlines() if not line.startswith(("storage:", "train:", "resources:"))
    )
    spec = parse_spec(text)
    assert spec.storage == str(Path("./ddsweep-runs").resolve())  # made absolute where it is read
    assert spec.train.lr == 0.01 and spec.train.optimizer == "sgd"  # the hl recipe of docs/methods.md §2.3
    assert spec.recipes["sl"].lr == 0.001 and spec.resources.cpus_per_trial == 1.0


def test_storage_override():
    assert parse_spec(BASE, storage_override="/elsewhere").storage == "/elsewhere"
    with pytest.raises(SpecError) as info:
        parse_spec(BASE, storage_override="s3://bucket/x?bogus=1")
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("storage: 's3://bucket/x?bogus=1' is not a usable storage URI")


def test_smoke_yaml_parses():
    import yaml

    raw = yaml.safe_load((REPO / "sweeps" / "smoke.yaml").read_text())
    spec = load_spec(REPO / "sweeps" / "smoke.yaml")
    assert spec.name == raw["name"] == "smoke"
    assert spec.student.name == raw["student"]["arch"]
    assert {"depth", "width", "norm"} <= set(spec.student.opts)  # defaults filled in
    assert all(spec.student.opts[k] == v for k, v in raw["student"].items() if k != "arch")
    assert {"image_size", "minival_per_class", "test_fraction"} <= set(spec.dataset.opts)
    assert spec.dataset.opts["image_size"] == raw["dataset"].get("image_size", 8)
    assert [s.name for s in spec.selectors] == [s if isinstance(s, str) else s["name"] for s in raw["grid"]["selector"]]
    assert spec.regimes == tuple(raw["grid"]["regime"])
    assert spec.ipcs == tuple(raw["grid"]["ipc"]) and spec.seeds == tuple(raw["grid"]["seed"])
    assert all(getattr(spec.train, k) == v for k, v in raw["train"].items())
    assert spec.resources.max_failures == raw["resources"]["max_failures"]


def test_load_spec_missing_file(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "nope.yaml")
    assert info.value.problems[0].startswith("(file): cannot read")


# ------------------------------------------------------------------------------------------------ CLI


def _ddsweep(args: list[str], tmp_path: Path, cwd: Path) -> subprocess.CompletedProcess:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = dict(os.environ, HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([str(DDSWEEP), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_cli_validate_bad_file_exits_2_and_writes_nothing(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    bad = work / "bad.yaml"
    text = sub("storage: ./ddsweep-runs", f"storage: {store}")
    text = sub("regime: [hl]", "regime: [hl, soft]", text)
    text = sub("{epochs: 5}", "{epochs: -1}", text)
    bad.write_text(text)
    proc = _ddsweep(["validate", str(bad)], tmp_path, cwd=work)
    assert proc.returncode == 2, proc.stderr
    assert f"{bad}: 2 problems" in proc.stderr
    assert "grid.regime[1]: 'soft' is not a known regime" in proc.stderr
    assert "budget.epochs: -1 must be > 0" in proc.stderr
    assert "ok" not in proc.stdout
    assert list(store.iterdir()) == []
    assert sorted(p.name for p in work.iterdir()) == ["bad.yaml"]


def test_cli_validate_yaml_syntax_error_exits_2(tmp_path):
    store = tmp_path / "store"
    bad = tmp_path / "broken.yaml"
    bad.write_text(sub("storage: ./ddsweep-runs", f"storage: {store}", sub("ipc: [1, 2]", "ipc: [1, 2")))
    proc = _ddsweep(["validate", str(bad)], tmp_path, cwd=tmp_path)
    assert proc.returncode == 2
    assert "(yaml) line" in proc.stderr and "column" in proc.stderr
    assert not store.exists()


def test_cli_validate_smoke_exits_0(tmp_path):
    proc = _ddsweep(["validate", str(REPO / "sweeps" / "smoke.yaml")], tmp_path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from orchestrator.grid import expand

    assert f"ok ({len(expand(load_spec(REPO / 'sweeps' / 'smoke.yaml')))} trials)" in proc.stdout
    assert not (tmp_path / "ddsweep-runs").exists()  # validate writes nothing, even to the default storage


def test_method_rules_are_checked_before_launch():
    """SRe2L's BatchNorm teacher is an error at validation time; CAD's K < J + W is a warning (K is raised)."""
    from orchestrator.grid import expand
    from workers.catalogue import cad_scoring_epochs

    cad = sub("selector: [random]", "selector: [random, cad_prune]")
    spec = parse_spec(cad)
    assert len(spec.warnings) == 1 and spec.warnings[0].startswith("grid.selector[1]: cad_prune(")
    assert "K = 1 scoring epochs" in spec.warnings[0] and "ipc 1" in spec.warnings[0] and "K = 4" in spec.warnings[0]
    assert {cad_scoring_epochs(t) for t in expand(spec) if t.selector.name == "cad_prune"} == {4}  # W + 2
    fixed = parse_spec(sub("selector: [random]", "selector: [{name: cad_prune, J: 6, W: 2}]"))
    assert {cad_scoring_epochs(t) for t in expand(fixed)} == {8}  # J + W
    assert not parse_spec(sub("budget: {epochs: 5}", "budget: {full_epochs: 6}", cad)).warnings

    teacher = "teacher: {arch: convnet, depth: 2, epochs: 1}\n"
    sre = sub("selector: [random]", "selector: [random, sre2l]", teacher + BASE)
    probs = problems_of(sre)
    assert len(probs) == 1 and probs[0].startswith("grid.selector[1]: sre2l(") and "BatchNorm" in probs[0]
    ok = sre.replace("teacher: {arch: convnet, depth: 2, epochs: 1}", "teacher: {arch: convnet, depth: 2, norm: batch}")
    assert parse_spec(ok).teacher.arch.opts["norm"] == "batch"
    assert problems_of(sub("selector: [random]", "selector: [rded]"))[0].startswith("teacher: is required by")


def test_recipes_per_regime_resolve_defaults_then_train_then_regime_overrides():
    text = "teacher: {arch: convnet, depth: 2, epochs: 1}\n" + sub(
        "train: {optimizer: adamw, lr: 0.01, batch_size: 32}",
        "train: {batch_size: 32, sl_kd: {kd_backend: stored, lr: 0.002}, hl: {optimizer: adam}}",
        sub("regime: [hl]", "regime: [hl, sl, sl_kd]"),
    )
    spec = parse_spec(text)
    hl, sl, kd = (spec.recipes[r] for r in ("hl", "sl", "sl_kd"))
    assert (hl.optimizer, hl.lr, hl.schedule, hl.batch_size) == ("adam", 0.01, "step", 32)  # the hl recipe + overrides
    assert (sl.optimizer, sl.lr, sl.schedule, sl.batch_size) == ("adamw", 0.001, "cosine", 32)
    assert (kd.optimizer, kd.lr, kd.schedule, kd.kd_backend) == ("adamw", 0.002, "half_cosine", "stored")
    from orchestrator.grid import expand

    trials = expand(spec)
    assert {t.regime: t.train for t in trials} == {"hl": hl, "sl": sl, "sl_kd": kd}
    assert problems_of(sub("train: {optimizer: adamw, lr: 0.01, batch_size: 32}", "train: {sl: {lr: -1}}"))[
        0
    ].startswith("train.sl.lr:")


def test_score_runs_do_not_depend_on_the_regime_recipe():
    from orchestrator.grid import expand
    from workers.graph import subset_key

    text = "teacher: {arch: convnet, depth: 2, epochs: 1}\nselectors: {el2n: {runs: 1, epoch: 2}}\n" + sub(
        "train: {optimizer: adamw, lr: 0.01, batch_size: 32}",
        "train: {sl: {lr: 0.005, batch_size: 8}}",
        sub("regime: [hl]", "regime: [hl, sl]", sub("selector: [random]", "selector: [el2n]")),
    )
    trials = expand(parse_spec(text))
    by_seed_ipc = {}
    for t in trials:
        by_seed_ipc.setdefault((t.ipc, t.seed), set()).add(subset_key(t))
        assert t.scoring == trials[0].scoring and t.scoring.batch_size == 256  # the hl recipe
    assert all(len(keys) == 1 for keys in by_seed_ipc.values())


def test_relative_dataset_root_and_teacher_weights_are_refused_with_the_absolute_path(tmp_path, monkeypatch):
    """Trials and stages run in other folders (Ray workers, other nodes), and the paths are part of the ids."""
    import numpy as np
    import torch
    from PIL import Image

    from workers import models

    for split, n in (("train", 14), ("val", 2)):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8, 3), 100 if c == "a" else 10, np.uint8)).save(
                    tmp_path / "data" / split / c / f"{i}.png"
                )
    net = models.build("convnet", {"depth": 2, "width": 8}, 2, (3, 8, 8), 0)
    torch.save(net.state_dict(), tmp_path / "t.pt")
    monkeypatch.chdir(tmp_path)
    text = """
name: rel
dataset: {name: imagefolder, root: data, image_size: 8, minival_per_class: 2}
student: {arch: convnet, depth: 2, width: 8}
teacher: {arch: convnet, depth: 2, width: 8, weights: ./t.pt}
budget: {epochs: 1}
grid: {selector: [random], regime: [sl], ipc: [2], seed: [0]}
"""
    probs = problems_of(text)
    assert any(p.startswith("dataset.root: 'data' is relative") and repr(str(tmp_path / "data")) in p for p in probs)
    assert any(
        p.startswith("teacher.weights: './t.pt' is relative") and repr(str(tmp_path / "t.pt")) in p for p in probs
    )
    spec = parse_spec(
        text.replace("root: data", f"root: {tmp_path / 'data'}").replace("./t.pt", str(tmp_path / "t.pt"))
    )
    assert spec.dataset.root == str(tmp_path / "data") and spec.teacher.weights == str(tmp_path / "t.pt")


def test_device_fraction_is_a_resource_between_zero_and_one():
    base = "name: r\ndataset: {name: digits}\nstudent: {arch: mlp}\nbudget: {epochs: 1}\n"
    base += "grid: {selector: [random], regime: [hl], ipc: [1], seed: [0]}\n"
    assert parse_spec(base).resources.device_fraction == 0.5
    assert parse_spec(base + "resources: {device_fraction: 0.25}").resources.device_fraction == 0.25
    with pytest.raises(SpecError, match=r"resources.device_fraction: 1.5 must be <= 1.0"):
        parse_spec(base + "resources: {device_fraction: 1.5}")
