"""Issue #10: no failure goes unrecorded, no result lands where the user won't find it, bad input gets a
clear answer. Each test here failed on the code before the fix."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import BIN, REPO, write_sweep

from orchestrator import cli, report
from orchestrator.grid import expand
from orchestrator.results import SweepStore
from orchestrator.spec import SpecError, load_spec, parse_spec
from workers.config import canonical_json

BASE = """
name: hard
dataset: {name: digits}
student: {arch: convnet, depth: 2, width: 8}
budget: {epochs: 2}
grid: {selector: [random], regime: [hl], ipc: [1], seed: [0]}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    return info.value.problems


# ---------------------------------------------------------------- 1. failures that vanish
def test_a_seed_the_row_schema_cannot_store_is_refused_at_validation():
    p = problems(BASE.replace("seed: [0]", "seed: [99999999999999999999]"))
    assert any(x.startswith("grid.seed[0]: 99999999999999999999 must be <= 9223372036854775807") for x in p), p
    p = problems(BASE.replace("ipc: [1]", "ipc: [99999999999999999999]"))
    assert any(x.startswith("grid.ipc[0]") for x in p), p


def test_a_failure_while_writing_the_row_is_recorded_with_its_traceback(tmp_path):
    """The row write is part of the trial: if it raises, failures/<id>.json says why (here: a seed past int64,
    which validation now refuses but a hand-written trial JSON can still carry)."""
    from orchestrator.trainable import run_one

    spec = parse_spec(BASE + f"storage: {tmp_path}\n")
    (t,) = expand(spec)
    big = json.loads(canonical_json(t.to_json()))
    big["seed"] = 2**70
    from workers.config import TrialConfig

    cfg = TrialConfig.from_json(big)
    with pytest.raises(OverflowError):
        run_one(cfg.trial_id, {cfg.trial_id: json.dumps(big)}, str(tmp_path), "hard", num_threads=1)
    store = SweepStore(str(tmp_path), "hard")
    fail = store.failures()[cfg.trial_id]
    assert fail["error"].startswith("OverflowError") and "write_row" in fail["traceback"]
    assert not fail["final"] and store.done_ids() == set()


def _row(trial_id: str, top1: float = 0.5) -> dict:
    return {
        "sweep": "hard",
        "trial_id": trial_id,
        "selector": "random",
        "regime": "hl",
        "ipc": 1,
        "seed": 0,
        "top1": top1,
        "finished_at": datetime.now(timezone.utc),
    }


def test_a_damaged_row_is_reported_moved_aside_and_its_trial_is_pending_again(tmp_path, capsys):
    sweep = tmp_path / "hard.yaml"
    sweep.write_text(BASE.replace("ipc: [1]", "ipc: [1, 2]") + f"storage: {tmp_path / 'store'}\n")
    spec = load_spec(sweep)
    a, b = expand(spec)
    store = spec.store()
    assert store.write_row(_row(a.trial_id))
    assert store.write_row(_row(b.trial_id))
    good = Path(store.row_path(a.trial_id)).read_bytes()
    Path(store.row_path(b.trial_id)).write_bytes(good[: len(good) // 2])  # truncated
    zero = Path(store.row_path("0" * 16))
    zero.write_bytes(b"")  # zero bytes

    assert cli.main(["status", str(sweep)]) == 0
    out = capsys.readouterr()
    assert "2 trials: 1 done, 0 started, 0 failed, 1 pending" in out.out
    assert "2 unreadable row(s)" in out.err and ".damaged" in out.err
    assert store.done_ids() == {a.trial_id}
    assert sorted(p.name for p in (Path(store.results_dir) / ".damaged").iterdir()) == sorted(
        [f"{b.trial_id}.parquet", zero.name]
    )
    assert cli.main(["report", str(sweep)]) == 0  # no ArrowInvalid
    assert "random" in capsys.readouterr().out


# ---------------------------------------------------------------- 4-6. results that land somewhere unexpected
def test_storage_tilde_is_expanded_and_a_relative_storage_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert parse_spec(BASE + "storage: ~/runs\n").storage == str(tmp_path / "home" / "runs")
    monkeypatch.chdir(tmp_path)
    assert parse_spec(BASE + "storage: rel/runs\n").storage == str(tmp_path / "rel" / "runs")
    uri = "s3://bucket/x?endpoint_override=127.0.0.1:9&scheme=http"
    assert parse_spec(BASE + f"storage: {uri}\n").storage == uri


def test_a_relative_storage_inside_a_ray_job_working_dir_is_refused(tmp_path, monkeypatch):
    job = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    job.mkdir(parents=True)
    monkeypatch.chdir(job)
    p = problems(BASE + "storage: ./ddsweep-runs\n")
    assert any(x.startswith("storage: './ddsweep-runs' is relative") and "deletes" in x for x in p), p
    assert parse_spec(BASE + f"storage: {tmp_path / 'abs'}\n").storage == str(tmp_path / "abs")


def test_every_command_names_the_absolute_storage_first(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "hard.yaml"
    sweep.write_text(BASE + "storage: ./store\n")
    (tmp_path / "store" / "hard").mkdir(parents=True)
    for cmd in ("validate", "plan", "status", "report"):
        assert cli.main([cmd, str(sweep)]) == 0
        first = capsys.readouterr().out.splitlines()[0]
        assert f"storage {tmp_path / 'store'}" in first, (cmd, first)


def test_a_sweep_name_must_match_as_a_whole():
    assert any(x.startswith("name:") for x in problems(BASE.replace("name: hard", 'name: "c20\\n"')))


def test_report_prints_the_table_even_where_it_cannot_write(tmp_path, capsys):
    sweep = tmp_path / "hard.yaml"
    sweep.write_text(BASE + f"storage: {tmp_path / 'store'}\n")
    spec = load_spec(sweep)
    (t,) = expand(spec)
    spec.store().write_row({**_row(t.trial_id), "config_json": canonical_json(t.to_json())})
    (tmp_path / "store" / "hard" / "report").write_text("not a folder")  # as unwritable as a read-only archive
    assert cli.main(["report", str(sweep)]) == 1
    out = capsys.readouterr()
    assert "random" in out.out and "50.00" in out.out
    assert f"cannot write the report to {tmp_path / 'store' / 'hard' / 'report'}" in out.err and "--out" in out.err
    assert cli.main(["report", str(sweep), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "accuracy.csv").is_file()


@pytest.mark.parametrize("cmd", ["status", "report"])
def test_a_store_that_does_not_exist_is_an_error_not_an_empty_folder(tmp_path, capsys, cmd):
    sweep = tmp_path / "hard.yaml"
    sweep.write_text(BASE)
    assert cli.main([cmd, str(sweep), "--storage", str(tmp_path / "typo")]) == 2
    assert "has no sweep 'hard'" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()


# ---------------------------------------------------------------- 9. bad input that gets past validation
def test_an_exclude_list_that_removes_every_trial_is_an_error():
    p = problems(BASE + "exclude: [{selector: random}]\n")
    assert any(x.startswith("exclude: removes every trial") for x in p), p


# ---------------------------------------------------------------- 12. messages
def test_status_into_a_closed_pipe_ends_quietly(tmp_path):
    sweep = write_sweep(tmp_path / "s.yaml", ipc=tuple(range(1, 41)))
    (tmp_path / "store" / "tiny").mkdir(parents=True)
    p = subprocess.run(
        f"{BIN / 'ddsweep'} status {sweep} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert p.stdout.count("\n") == 1 and "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr


# ---------------------------------------------------------------- 13, 15. analysis traps
def test_rows_carry_a_canonical_selector_label_that_report_and_status_group_by(tmp_path, capsys):
    from orchestrator.trainable import build_row

    text = BASE.replace("selector: [random]", "selector: [{name: el2n_window, offset: 0.8}, el2n_window]")
    text = text.replace("seed: [0]", "seed: [0, 1]") + f"storage: {tmp_path}\n"
    sweep = tmp_path / "w.yaml"
    sweep.write_text(text)
    spec = load_spec(sweep)
    metrics = {"top1": 0.5, "minival_top1": 0.5, "history": []}
    for t in expand(spec):
        row = build_row(
            "hard",
            t,
            dict(metrics, top1=0.8 if t.selector.opts["offset"] == 0.8 else 0.4),
            1,
            datetime.now(timezone.utc),
        )
        spec.store().write_row(row)
    df = spec.store().load()
    assert set(df["selector_label"]) == {"el2n_window(offset=0.8)", "el2n_window"}
    table = report.accuracy_table(df)
    assert len(table) == 2 and sorted(table["top1_mean"]) == [40.0, 80.0]
    assert cli.main(["status", str(sweep)]) == 0
    assert "el2n_window(offset=0.8)" in capsys.readouterr().out


def test_the_accuracy_plot_labels_the_ipcs_and_shares_the_y_axis(tmp_path):
    import pandas as pd

    table = pd.DataFrame(
        {
            "selector": ["random"] * 6,
            "regime": ["hl", "hl", "hl", "sl", "sl", "sl"],
            "ipc": [1, 10, 50] * 2,
            "top1_mean": [30, 60, 90, 50, 70, 95],
            "top1_std": [1.0] * 6,
            "seeds": [2] * 6,
        }
    )
    fig = report.plot_accuracy(table)
    axes = fig.axes
    assert [int(t) for t in axes[0].get_xticks()] == [1, 10, 50]
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["1", "10", "50"]
    assert axes[0].get_shared_y_axes().joined(axes[0], axes[1])
    assert axes[0].get_ylim() == axes[1].get_ylim()
