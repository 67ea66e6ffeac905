"""Trial ids are a promise to users whose stores live for months (docs/design.md §5).

The golden ids of sweeps/smoke.yaml were computed before the code-health refactor (issue #9) and must
never change silently. If this test fails, a change altered existing ids: give a new setting its
neutral value in workers.config.NEUTRAL_SINCE_SCHEMA_1, or bump ID_SCHEMA, say so in CHANGELOG.md and
let users run `ddsweep migrate`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from orchestrator import cli
from orchestrator.grid import expand
from orchestrator.results import SweepStore
from orchestrator.spec import load_spec, parse_spec
from workers import config
from workers.config import TrialConfig, canonical_json, short_hash, trial_identity
from workers.naming import trial_name

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "smoke_trial_ids.json"


def test_smoke_sweep_ids_are_frozen():
    golden = json.loads(GOLDEN.read_text())
    got = {trial_name(t): t.trial_id for t in expand(load_spec(REPO / "sweeps" / "smoke.yaml"))}
    changed = {k: (golden.get(k), v) for k, v in got.items() if golden.get(k) != v}
    assert not changed and set(got) == set(golden), f"trial ids changed (name: (golden, now)): {changed}"


def test_a_setting_added_at_its_neutral_value_leaves_ids_unchanged():
    t = expand(load_spec(REPO / "sweeps" / "smoke.yaml"))[0]
    d = t.to_json()
    later = copy.deepcopy(d)
    later["train"]["future_setting"] = "off"  # a hypothetical setting added later; "off" = the old behaviour
    later["selector"]["options"]["new_option"] = 7
    neutral = {
        **config.NEUTRAL_SINCE_SCHEMA_1,
        ("train", "future_setting"): "off",
        ("selector", t.selector.name, "new_option"): 7,
    }
    assert short_hash(trial_identity(later, neutral)) == t.trial_id
    changed = copy.deepcopy(later)
    changed["train"]["future_setting"] = "on"  # a non-neutral value is a different trial
    assert short_hash(trial_identity(changed, neutral)) != t.trial_id
    other = copy.deepcopy(later)
    other["selector"]["name"] = "not-" + t.selector.name  # the option is neutral for its own method only
    assert "new_option" in trial_identity(other, neutral)["selector"]["options"]


def test_a_new_schema_version_enters_the_hash(monkeypatch):
    t = expand(load_spec(REPO / "sweeps" / "smoke.yaml"))[0]
    schema_1 = t.trial_id
    assert "id_schema" not in t.identity()  # schema 1: the version is implicit, so schema-1 ids stay as they were
    monkeypatch.setattr(config, "ID_SCHEMA", 2)
    assert trial_identity(t.to_json())["id_schema"] == 2
    assert short_hash(trial_identity(t.to_json())) != schema_1


def test_ids_leave_out_only_what_the_regime_never_reads():
    spec = parse_spec((REPO / "sweeps" / "smoke.yaml").read_text())
    hl, sl, kd = expand(spec)[:3]
    assert (hl.regime, sl.regime, kd.regime) == ("hl", "sl", "sl_kd")
    assert "temperature" not in hl.identity()["train"] and "kd_topk" not in hl.identity()["train"]
    assert "temperature" in sl.identity()["train"] and "kd_topk" not in sl.identity()["train"]
    assert {"temperature", "kd_topk", "kd_backend", "kd_min_scale"} <= set(kd.identity()["train"])


SWEEP = """
name: ids
dataset: {name: digits}
student: {arch: convnet, depth: 2, width: 8}
budget: {epochs: 2}
grid: {selector: [random], regime: [hl], ipc: [1, 2], seed: [0]}
"""


def _old_rule_row(store: SweepStore, t: TrialConfig) -> str:
    """A row as ddsweep wrote it before 28 Nov 2026: the id hashed the whole config (temperature included)."""
    from datetime import datetime, timezone

    old = short_hash(t.to_json())
    assert old != t.trial_id
    store.write_row(
        {
            "sweep": "ids",
            "trial_id": old,
            "trial_name": trial_name(t),
            "selector": "random",
            "regime": "hl",
            "ipc": t.ipc,
            "seed": 0,
            "top1": 0.5,
            "config_json": canonical_json(t.to_json()),
            "finished_at": datetime.now(timezone.utc),
        }
    )
    return old


def test_rows_under_an_older_id_rule_are_reported_never_rerun_and_migrate(tmp_path, capsys):
    sweep = tmp_path / "ids.yaml"
    sweep.write_text(SWEEP + f"storage: {tmp_path / 'store'}\n")
    spec = load_spec(sweep)
    a, b = expand(spec)
    store = spec.store()
    old = _old_rule_row(store, a)

    assert cli.main(["status", str(sweep)]) == 0
    captured = capsys.readouterr()
    assert "1 finished row(s)" in captured.err and f"ddsweep migrate {sweep}" in captured.err
    assert "0 done" in captured.out  # not counted as done under the current id ...
    assert cli.main(["run", str(sweep)]) == cli.EXIT_STALE  # ... and never silently re-run
    assert "older trial-id rule" in capsys.readouterr().err
    assert store.done_ids() == {old}

    assert cli.main(["migrate", str(sweep), "--dry-run"]) == 0
    assert f"{old} -> {a.trial_id}" in capsys.readouterr().out and store.done_ids() == {old}
    assert cli.main(["migrate", str(sweep)]) == 0
    assert "re-keyed 1 row(s)" in capsys.readouterr().out
    assert store.done_ids() == {a.trial_id}
    df = store.load()
    assert df.loc[0, "trial_id"] == a.trial_id and df.loc[0, "top1"] == 0.5 and df.loc[0, "id_schema"] == 1
    assert cli.main(["status", str(sweep)]) == 0
    captured = capsys.readouterr()
    assert "1 done" in captured.out and "warning" not in captured.err


def test_migration_keeps_the_earlier_row_when_both_exist(tmp_path):
    spec = parse_spec(SWEEP + f"storage: {tmp_path / 'store'}\n")
    a, _ = expand(spec)
    store = spec.store()
    old = _old_rule_row(store, a)
    from datetime import datetime, timezone

    assert store.write_row(
        {
            "sweep": "ids",
            "trial_id": a.trial_id,
            "top1": 0.9,
            "config_json": canonical_json(a.to_json()),
            "finished_at": datetime.now(timezone.utc),
        }
    )
    assert store.stale_rows({a.trial_id}) == {old: a.trial_id}  # still stale: it maps onto a grid id
    assert store.migrate(store.stale_rows({a.trial_id})) == (0, 1)
    assert store.done_ids() == {a.trial_id} and store.load().loc[0, "top1"] == 0.9
    assert (Path(store.results_dir) / ".superseded" / f"{old}.parquet").is_file()


def test_the_fast_trial_id_is_the_hash_of_the_identity_under_any_neutral_table(monkeypatch):
    """TrialConfig.trial_id assembles cached JSON fragments; it must equal short_hash(identity()) exactly,
    also when the neutral table drops settings in every kind of section."""
    neutral = {
        ("train", "augment"): "crop",
        ("selector", "rded", "mipc"): 40,
        ("teacher.arch", "convnet", "width"): 32,
        ("teacher", "epochs"): 15,
        ("dataset", "digits", "image_size"): 8,
        ("scoring", "momentum"): 0.9,
    }
    monkeypatch.setattr(config, "NEUTRAL_SINCE_SCHEMA_1", neutral)
    monkeypatch.setattr(config, "_PLAIN_SECTIONS", {})
    trials = expand(load_spec(REPO / "sweeps" / "smoke.yaml"))  # fresh part objects: empty caches
    assert all(t.trial_id == short_hash(trial_identity(t.to_json())) for t in trials)
    dropped = trials[0].identity()
    assert "augment" not in dropped["train"] and "image_size" not in dropped["dataset"]["options"]
    golden = json.loads(GOLDEN.read_text())
    assert sum(golden[trial_name(t)] != t.trial_id for t in trials) == len(trials)  # the drops changed every id
    for sweep in ("digits_scalability.yaml", "digits_cad_epochs.yaml"):
        monkeypatch.setattr(config, "NEUTRAL_SINCE_SCHEMA_1", {})
        assert all(t.trial_id == short_hash(t.identity()) for t in expand(load_spec(REPO / "sweeps" / sweep)))


def test_imagefolder_sizes_made_explicit_leave_old_ids_unchanged(tmp_path):
    """Issue #11: the cache's sizes, filter, label file, bad-file policy and shard size are written into every
    trial's config; at the values that reproduce the old decode they are left out of the id."""
    from imagetrees import make_tree

    root = make_tree(tmp_path / "data")
    text = f"""
name: folder
dataset: {{name: imagefolder, root: {root}, image_size: 8, minival_per_class: 2}}
student: {{arch: convnet, depth: 2, width: 8}}
teacher: {{arch: convnet, depth: 2, width: 8, epochs: 1}}
budget: {{epochs: 1}}
grid: {{selector: [random], regime: [hl, sl], ipc: [1], seed: [0]}}
"""
    new = expand(parse_spec(text))
    opts = new[0].dataset.opts
    assert (opts["train_resize"], opts["train_crop"], opts["val_resize"], opts["val_crop"]) == (8, 8, 8, 8)
    for t in new:  # a config as written before issue #11: image_size and minival_per_class only
        old = t.to_json()
        old["dataset"]["options"] = {"image_size": 8, "minival_per_class": 2}
        if old["teacher"]:
            del old["teacher"]["normalize"]
        assert TrialConfig.from_json(old).trial_id == t.trial_id
    bigger = expand(parse_spec(text.replace("image_size: 8,", "image_size: 8, train_crop: 12,")))
    assert {t.trial_id for t in bigger}.isdisjoint({t.trial_id for t in new})
    imagenet = expand(parse_spec(text.replace("image_size: 8,", "image_size: 8, interpolation: bicubic,")))
    assert {t.trial_id for t in imagenet}.isdisjoint({t.trial_id for t in new})


def test_trials_that_set_the_old_values_keep_their_ids_from_before_issue_14():
    """Issue #14 changed defaults (EL2N's score-run schedule, SRe2L/CDA's recover views): those smoke trials got
    new ids by design. Each new option's neutral value is the old behaviour, so a sweep that sets the old values
    keeps every old id (tests/golden/smoke_trial_ids_before_issue14.json: the ids that changed, as they were)."""
    before = json.loads((REPO / "tests" / "golden" / "smoke_trial_ids_before_issue14.json").read_text())
    text = (REPO / "sweeps" / "smoke.yaml").read_text()
    for old, new in (
        ("el2n_easy: {runs: 2}", "el2n_easy: {runs: 2, schedule_epochs: epoch}"),
        ("sre2l: {iterations: 40}", "sre2l: {iterations: 40, crop: rrc, jitter: both}"),
        ("cda: {iterations: 40}", "cda: {iterations: 40, jitter: both}"),
    ):
        assert old in text
        text = text.replace(old, new)
    got = {}
    for t in expand(parse_spec(text)):
        name = trial_name(t)
        for explicit in ("-schedule_epochsepoch", "-croprrc", "-jitterboth"):
            name = name.replace(explicit, "")
        got[name] = t.trial_id
    golden = json.loads(GOLDEN.read_text())
    assert {k: got[k] for k in before} == before
    assert all(got[k] == v for k, v in golden.items() if k not in before)  # the others never changed
    assert len(before) == 54 and all(golden[k] != v for k, v in before.items())
