"""Grid expansion: stable trial ids, deterministic order, exclude, selector options, shared stages."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.grid import expand, stages_for
from orchestrator.spec import SpecError, load_spec, parse_spec
from workers.catalogue import REGIMES, SELECTORS
from workers.graph import requires, stage_deps, subset_key
from workers.naming import trial_name
from workers.options import Option

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "sweeps" / "smoke.yaml"


@pytest.fixture
def tmpsel():
    """A temporary selector with options, removed afterwards (only `random`, option-less, exists today)."""
    name = "tmpsel"
    assert name not in SELECTORS
    SELECTORS.declare(
        name,
        "test-only selector with options",
        "workers.selectors.random:select",
        {
            "offset": Option(0.5, float, "window start as a score quantile", min=0.0, max=1.0),
            "mode": Option("easy", str, "which end of the ranking", choices=("easy", "hard")),
        },
    )
    yield name
    SELECTORS._entries.pop(name)


@pytest.fixture
def sl_regime():
    """A soft-label regime: its trials differ from `hl` ones only by supervision (and carry the teacher)."""
    assert "sl" in REGIMES and REGIMES["sl"].needs_teacher
    return "sl"


def sweep(
    *,
    selector: str = "[random]",
    regime: str = "[hl]",
    ipc: str = "[1, 2]",
    seed: str = "[0, 1]",
    train: str = "{optimizer: adamw, lr: 0.01, batch_size: 32}",
    extra: str = "",
) -> str:
    return f"""\
name: unit-grid
storage: ./ddsweep-runs
dataset: {{name: digits}}
student: {{arch: convnet, depth: 2, width: 16}}
budget: {{epochs: 5}}
grid:
  selector: {selector}
  regime: {regime}
  ipc: {ipc}
  seed: {seed}
train: {train}
resources: {{cpus_per_trial: 1}}
teacher: {{arch: convnet, depth: 2, width: 16, epochs: 3}}
{extra}"""


def ids(text: str) -> list[str]:
    return [t.trial_id for t in expand(parse_spec(text))]


# ------------------------------------------------------------------------------------------------ trial ids


def test_smoke_ids_are_16_hex_and_unique():
    spec = load_spec(SMOKE)
    trials = expand(spec)
    n = len(spec.selectors) * len(spec.regimes) * len(spec.ipcs) * len(spec.seeds)
    assert len(trials) == n > 1
    for t in trials:
        assert re.fullmatch(r"[0-9a-f]{16}", t.trial_id), t.trial_id
    assert len({t.trial_id for t in trials}) == n
    assert len({trial_name(t) for t in trials}) == n


def test_ids_identical_across_processes():
    here = [t.trial_id for t in expand(load_spec(SMOKE))]
    code = (
        "import json, sys; from orchestrator.spec import load_spec; from orchestrator.grid import expand; "
        "print(json.dumps([t.trial_id for t in expand(load_spec(sys.argv[1]))]))"
    )
    seen = []
    for hash_seed in ("1", "4242"):  # different str hashing: set/dict iteration order must not leak into ids
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(REPO))
        proc = subprocess.run(
            [sys.executable, "-c", code, str(SMOKE)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        seen.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert seen[0] == seen[1] == here


def test_ids_independent_of_yaml_key_order(tmpsel):
    forward = f"""\
name: unit-grid
storage: ./ddsweep-runs
dataset: {{name: digits, image_size: 8}}
student: {{arch: convnet, depth: 2, width: 16}}
budget: {{epochs: 5}}
grid:
  selector: [random, {{name: {tmpsel}, offset: 0.8, mode: hard}}]
  regime: [hl]
  ipc: [1, 2]
  seed: [0, 1]
train: {{optimizer: adamw, lr: 0.01, batch_size: 32, weight_decay: 0.001}}
resources: {{cpus_per_trial: 1}}
"""
    backward = f"""\
resources: {{cpus_per_trial: 1}}
train: {{weight_decay: 0.001, batch_size: 32, lr: 0.01, optimizer: adamw}}
grid:
  seed: [0, 1]
  ipc: [1, 2]
  regime: [hl]
  selector: [random, {{mode: hard, offset: 0.8, name: {tmpsel}}}]
budget: {{epochs: 5}}
student: {{width: 16, depth: 2, arch: convnet}}
dataset: {{image_size: 8, name: digits}}
storage: ./ddsweep-runs
name: unit-grid
"""
    a, b = ids(forward), ids(backward)
    assert len(a) == 8 and len(set(a)) == 8
    assert a == b


def test_ids_independent_of_spelled_out_defaults_and_number_spelling():
    plain = sweep()
    explicit = sweep(train="{optimizer: adamw, lr: 0.01, batch_size: 32, schedule: step, momentum: 0.9}")
    explicit = explicit.replace(
        "{arch: convnet, depth: 2, width: 16}", "{arch: convnet, depth: 2, width: 16, norm: instance}"
    )
    explicit = explicit.replace("{name: digits}", "{name: digits, image_size: 8, test_fraction: 0.2}")
    explicit = explicit.replace("{epochs: 5}", "{epochs: 5.0}")
    assert explicit != plain
    assert ids(explicit) == ids(plain)


def test_fixed_setting_changes_every_id():
    base = ids(sweep())
    for changed in (
        sweep(train="{optimizer: adamw, lr: 0.02, batch_size: 32}"),
        sweep().replace("{epochs: 5}", "{epochs: 6}"),
        sweep().replace("width: 16", "width: 24"),
        sweep().replace("{name: digits}", "{name: digits, image_size: 16}"),
    ):
        other = ids(changed)
        assert len(other) == len(base)
        assert not set(other) & set(base)


def test_ids_cover_only_the_label_fields_the_regime_reads():
    def by_regime(train: str, selector: str = "[random]") -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for t in expand(parse_spec(sweep(regime="[hl, sl, sl_kd]", selector=selector, train=train))):
            out.setdefault(t.regime, set()).add(t.trial_id)
        return out

    base = by_regime("{lr: 0.01}")
    temp = by_regime("{lr: 0.01, temperature: 4}")
    topk = by_regime("{lr: 0.01, kd_topk: 5, kd_backend: stored}")
    assert temp["hl"] == base["hl"] and not temp["sl"] & base["sl"] and not temp["sl_kd"] & base["sl_kd"]
    assert topk["hl"] == base["hl"] and topk["sl"] == base["sl"] and not topk["sl_kd"] & base["sl_kd"]
    # the score runs of a dynamics selector train with hard labels: their part of the id ignores T too
    cad = by_regime("{lr: 0.01}", "[el2n]"), by_regime("{lr: 0.01, temperature: 4}", "[el2n]")
    assert cad[0]["hl"] == cad[1]["hl"]
    # what the row records is still the full recipe
    t = expand(parse_spec(sweep(regime="[hl]", train="{temperature: 4}")))[0]
    assert t.to_json()["train"]["temperature"] == 4


def test_ids_ignore_name_storage_and_resources():
    """Only what a trial computes enters its id: resources, the storage root and the sweep name do not."""
    moved = (
        sweep()
        .replace("name: unit-grid", "name: renamed")
        .replace("./ddsweep-runs", "/elsewhere")
        .replace("{cpus_per_trial: 1}", "{cpus_per_trial: 4, max_concurrent: 2}")
    )
    assert ids(moved) == ids(sweep())


def test_adding_a_seed_keeps_old_ids():
    old = ids(sweep())
    new = ids(sweep(seed="[0, 1, 2]"))
    assert set(old) < set(new) and len(new) == len(old) + 2


def test_order_is_deterministic(tmpsel, sl_regime):
    text = sweep(selector=f"[random, {tmpsel}]", regime=f"[hl, {sl_regime}]", ipc="[2, 1]", seed="[1, 0]")
    spec = parse_spec(text)
    trials = expand(spec)
    got = [(t.seed, t.ipc, t.selector.name, t.regime) for t in trials]
    want = list(itertools.product([1, 0], [2, 1], ["random", tmpsel], ["hl", sl_regime]))
    assert got == want  # seed slowest, then IPC, selector, regime; in the order the file lists them
    assert [t.trial_id for t in expand(parse_spec(text))] == [t.trial_id for t in trials]


# ------------------------------------------------------------------------------------------------ exclude


def test_exclude_removes_exactly_the_matching_trials(tmpsel, sl_regime):
    grid = dict(selector=f"[random, {tmpsel}]", regime=f"[hl, {sl_regime}]", ipc="[1, 2]", seed="[0, 1]")
    full = expand(parse_spec(sweep(**grid)))
    assert len(full) == 16
    kept = expand(
        parse_spec(
            sweep(**grid, extra=f"exclude: [{{regime: {sl_regime}, ipc: 2}}, {{selector: {tmpsel}, seed: 1}}]\n")
        )
    )

    def excluded(t) -> bool:
        return (t.regime == sl_regime and t.ipc == 2) or (t.selector.name == tmpsel and t.seed == 1)

    # 4 + 4 excluded, 1 of them by both rules
    assert len(kept) == 16 - 7
    assert [t.trial_id for t in kept] == [t.trial_id for t in full if not excluded(t)]


def test_exclude_by_selector_label(tmpsel):
    grid = dict(selector=f"[{{name: {tmpsel}, offset: 0.8}}, {{name: {tmpsel}, offset: 0.2}}]")
    full = expand(parse_spec(sweep(**grid)))
    by_label = expand(parse_spec(sweep(**grid, extra=f"exclude: [{{selector: '{tmpsel}(mode=easy,offset=0.8)'}}]\n")))
    by_name = expand(parse_spec(sweep(**grid, extra=f"exclude: [{{selector: {tmpsel}, ipc: 1}}]\n")))
    assert len(full) == 8
    assert [t.trial_id for t in by_label] == [t.trial_id for t in full if t.selector.opts["offset"] == 0.2]
    assert [t.trial_id for t in by_name] == [t.trial_id for t in full if t.ipc != 1]


def test_exclude_by_a_label_naming_only_some_options(tmpsel):
    """`name(k=v)` matches every entry of that name whose resolved options include k=v (a label need not list
    the defaults it does not care about); a label whose options match no entry is still an error."""
    grid = dict(selector=f"[{{name: {tmpsel}, offset: 0.8}}, {{name: {tmpsel}, offset: 0.2}}]")
    full = expand(parse_spec(sweep(**grid)))
    partial = expand(parse_spec(sweep(**grid, extra=f"exclude: [{{selector: '{tmpsel}(offset=0.8)', ipc: 1}}]\n")))
    assert [t.trial_id for t in partial] == [
        t.trial_id for t in full if not (t.selector.opts["offset"] == 0.8 and t.ipc == 1)
    ]
    with pytest.raises(SpecError, match=r"exclude\[0\]\.selector: .*offset=0\.5.* matches nothing"):
        parse_spec(sweep(**grid, extra=f"exclude: [{{selector: '{tmpsel}(offset=0.5)'}}]\n"))


def test_a_method_rule_is_not_applied_at_an_ipc_its_entry_is_excluded_from(tmp_path):
    """RDED's pool rule (mipc >= IPC x factor^2) holds for the (entry, IPC) pairs that run, not for excluded ones."""
    text = f"""
name: pool
storage: {tmp_path}
dataset: {{name: digits}}
student: {{arch: convnet, depth: 2, width: 8}}
teacher: {{arch: convnet, depth: 2, width: 8, norm: batch, epochs: 1, min_top1_factor: 1}}
budget: {{epochs: 1}}
grid: {{selector: [{{name: rded, mipc: 5}}, {{name: rded, mipc: 20}}], regime: [hl], ipc: [1, 10], seed: [0]}}
"""
    with pytest.raises(SpecError, match=r"grid\.selector\[0\]: .*mipc = 5"):
        parse_spec(text)
    spec = parse_spec(text + "exclude: [{selector: 'rded(mipc=5)', ipc: 10}]\n")
    assert sorted((t.selector.opts["mipc"], t.ipc) for t in expand(spec)) == [(5, 1), (20, 1), (20, 10)]


def test_grid_size_is_product_minus_excluded(sl_regime):
    text = sweep(
        regime=f"[hl, {sl_regime}]",
        ipc="[1, 2, 5]",
        seed="[0, 1, 2]",
        extra="exclude: [{ipc: 5, seed: 2}, {regime: hl, ipc: 1, seed: 0}]\n",
    )
    spec = parse_spec(text)
    product = len(spec.selectors) * len(spec.regimes) * len(spec.ipcs) * len(spec.seeds)
    assert product == 18
    assert len(expand(spec)) == product - 2 - 1


# ------------------------------------------------------------------------------------------------ selector options


def test_selector_options_give_different_ids_and_names(tmpsel):
    trials = expand(
        parse_spec(
            sweep(selector=f"[{{name: {tmpsel}, offset: 0.8}}, {{name: {tmpsel}, offset: 0.2}}]", ipc="[1]", seed="[0]")
        )
    )
    assert len(trials) == 2
    high, low = trials
    assert high.selector.opts == {"offset": 0.8, "mode": "easy"}
    assert low.selector.opts == {"offset": 0.2, "mode": "easy"}
    assert high.trial_id != low.trial_id
    assert "offset0.8" in trial_name(high) and "offset0.2" in trial_name(low)
    assert trial_name(high) != trial_name(low)


def test_selector_option_defaults_and_int_spelling(tmpsel):
    one = ids(sweep(selector=f"[{{name: {tmpsel}, offset: 1}}]"))
    one_float = ids(sweep(selector=f"[{{name: {tmpsel}, offset: 1.0}}]"))
    from_defaults = ids(sweep(selector=f"[{tmpsel}]", extra=f"selectors: {{{tmpsel}: {{offset: 1.0}}}}\n"))
    bare = ids(sweep(selector=f"[{tmpsel}]"))
    spelled = ids(sweep(selector=f"[{{name: {tmpsel}, offset: 0.5, mode: easy}}]"))
    assert one == one_float == from_defaults
    assert bare == spelled
    assert not set(bare) & set(one)


def test_grid_entry_overrides_selector_defaults(tmpsel):
    text = sweep(
        selector=f"[{tmpsel}, {{name: {tmpsel}, offset: 0.3}}]",
        extra=f"selectors: {{{tmpsel}: {{offset: 0.9, mode: hard}}}}\n",
    )
    spec = parse_spec(text)
    assert [s.opts for s in spec.selectors] == [{"offset": 0.9, "mode": "hard"}, {"offset": 0.3, "mode": "hard"}]


def test_bad_selector_option_is_a_spec_error(tmpsel):
    from orchestrator.spec import SpecError

    with pytest.raises(SpecError) as info:
        parse_spec(
            sweep(
                selector=f"[{{name: {tmpsel}, offset: 1.5}}, {{name: {tmpsel}, offset: [1]}}, "
                f"{{name: {tmpsel}, mode: medium}}]"
            )
        )
    problems = info.value.problems
    assert any(p.startswith("grid.selector[0].offset: 1.5 must be <= 1.0") for p in problems)
    assert any(p.startswith("grid.selector[1].offset: [1] is not a number") for p in problems)
    assert any(
        p.startswith("grid.selector[2].mode: 'medium' is not allowed; choose one of easy, hard") for p in problems
    )


# ------------------------------------------------------------------------------------------------ stages


def test_stages_deduplicate_subsets_across_regimes(sl_regime):
    trials = expand(parse_spec(sweep(regime=f"[hl, {sl_regime}]", ipc="[1, 2]", seed="[0, 1]")))
    assert len(trials) == 8
    stages = stages_for(trials)
    assert len(stages) == len(set(stages))
    subsets = [k for k in stages if k.kind == "subset"]
    assert len(subsets) == 4  # (ipc, seed) pairs; the regime does not change the subset
    assert {subset_key(t) for t in trials} == set(subsets)
    by_key: dict = {}
    for t in trials:
        by_key.setdefault(subset_key(t), set()).add(t.regime)
    assert all(regimes == {"hl", sl_regime} for regimes in by_key.values())
    # the soft-label trials share one teacher; nothing else is needed by a random selector
    assert sorted(k.kind for k in stages if k.kind != "subset") == ["teacher"]
    # first-need order, and duplicates in the input change nothing
    assert subsets == list(dict.fromkeys(subset_key(t) for t in trials))
    assert stages_for(trials + trials[::-1]) == stages


def test_trials_differing_only_by_regime_share_a_subset():
    t = next(t for t in expand(load_spec(SMOKE)) if t.regime == "hl")
    soft = dataclasses.replace(t, regime="sl")
    assert soft.trial_id != t.trial_id
    assert subset_key(soft) == subset_key(t)
    assert [k for k in stages_for([t, soft]) if k.kind == "subset"] == [subset_key(t)]


def test_teacher_enters_only_the_ids_of_trials_that_use_it(sl_regime):
    text = sweep(regime=f"[hl, {sl_regime}]")
    other = text.replace("epochs: 3}", "epochs: 4}")
    assert other != text
    a, b = expand(parse_spec(text)), expand(parse_spec(other))
    for x, y in zip(a, b):
        assert (x.trial_id == y.trial_id) == (x.regime == "hl"), (trial_name(x), x.teacher)
        assert (x.teacher is None) == (x.regime == "hl")


def test_subset_key_tracks_what_selects_the_images(tmpsel):
    t = next(t for t in expand(load_spec(SMOKE)) if t.selector.name == "random")
    others = [
        dataclasses.replace(t, ipc=t.ipc + 1),
        dataclasses.replace(t, seed=t.seed + 1),
        dataclasses.replace(t, selector=dataclasses.replace(t.selector, name=tmpsel)),
        dataclasses.replace(t, dataset=dataclasses.replace(t.dataset, options=(("image_size", 16),))),
    ]
    keys = {subset_key(x) for x in [t, *others]}
    assert len(keys) == 5
    # ...and ignores what only trains the student
    same = [
        dataclasses.replace(t, train=dataclasses.replace(t.train, lr=0.5)),
        dataclasses.replace(t, budget=dataclasses.replace(t.budget, value=1.0)),
        dataclasses.replace(t, regime="sl_kd"),
    ]
    assert {subset_key(x) for x in same} == {subset_key(t)}


def test_smoke_stages_deduplicated_and_ordered():
    trials = expand(load_spec(SMOKE))
    stages = stages_for(trials)
    assert len(stages) == len(set(stages)) == len({k.folder for k in stages})
    assert all(re.fullmatch(r"[a-z_]+/[0-9a-f]{16}", k.folder) for k in stages)
    subsets = [k for k in stages if k.kind == "subset"]
    assert len(subsets) == len({(t.selector, t.ipc, t.seed) for t in trials})
    position = {k: i for i, k in enumerate(stages)}
    for t in trials:  # everything a trial needs is planned
        assert all(k in position for k in requires(t))
    for k in stages:  # dependencies before dependants
        assert all(position[d] < position[k] for d in stage_deps(k))
