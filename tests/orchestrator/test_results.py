"""The Parquet store: atomic publish, never replaces a row, de-duplicates on load, explicit schema."""

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator import results
from orchestrator.results import SweepStore
from workers.naming import trial_name


def row(trial_id="abc", top1=0.5, minutes=0):
    t = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=minutes)
    return {
        "sweep": "s",
        "trial_id": trial_id,
        "trial_name": "random-hl-ipc1-s0",
        "selector": "random",
        "regime": "hl",
        "ipc": 1,
        "seed": 0,
        "top1": top1,
        "started_at": t,
        "finished_at": t,
    }


def test_write_then_load_round_trips_with_full_schema(tmp_path):
    assert SweepStore(tmp_path, "s").write_row(row())
    df = results.load(tmp_path, "s")
    assert list(df.columns) == results.SCHEMA.names
    assert len(df) == 1 and df.loc[0, "top1"] == 0.5 and pd.isna(df.loc[0, "gpu_name"])
    # plain pandas reads the folder too (docs/design.md §6)
    assert len(pd.read_parquet(tmp_path / "s" / "results")) == 1


def test_an_existing_row_is_never_replaced(tmp_path):
    assert SweepStore(tmp_path, "s").write_row(row(top1=0.5))
    before = (tmp_path / "s" / "results" / "abc.parquet").stat()
    assert not SweepStore(tmp_path, "s").write_row(row(top1=0.9, minutes=5))
    after = (tmp_path / "s" / "results" / "abc.parquet").stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert results.load(tmp_path, "s").loc[0, "top1"] == 0.5
    visible = [p.name for p in (tmp_path / "s" / "results").iterdir() if not p.name.startswith(".")]
    assert visible == ["abc.parquet"]  # (hidden: the index of rows checked readable)


def test_load_keeps_the_earliest_row_per_trial(tmp_path):
    SweepStore(tmp_path, "s").write_row(row("abc", top1=0.7, minutes=10))
    # a duplicate under another name (as an object store would hold it): earlier finish wins
    table = pq.read_table(tmp_path / "s" / "results" / "abc.parquet").to_pylist()[0]
    table.update(top1=0.1, finished_at=datetime(2025, 1, 1, tzinfo=timezone.utc))
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist([table], schema=results.SCHEMA), tmp_path / "s" / "results" / "abc__2.parquet")
    SweepStore(tmp_path, "s").write_row(row("def", top1=0.3))
    df = results.load(tmp_path, "s")
    assert sorted(df["trial_id"]) == ["abc", "def"]
    assert df.set_index("trial_id").loc["abc", "top1"] == 0.1
    assert list(results.load(tmp_path, "s", trial_ids={"def"})["trial_id"]) == ["def"]


CRASH = r"""
import os, sys
from datetime import datetime, timezone
from orchestrator.results import SweepStore
real_fsync = os.fsync
def die(fd):
    os._exit(9)        # killed after the temporary file is written, before it is published
os.fsync = die
SweepStore(sys.argv[1], "s").write_row({"trial_id": "abc", "top1": 0.5,
                  "finished_at": datetime.now(timezone.utc)})
"""


def test_a_crash_mid_write_leaves_no_readable_partial_row(tmp_path):
    p = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 9, p.stderr
    folder = tmp_path / "s" / "results"
    leftovers = list(folder.iterdir())
    assert leftovers and all(f.name.startswith(".") for f in leftovers)
    assert results.load(tmp_path, "s").empty and SweepStore(tmp_path, "s").done_ids() == set()
    assert pd.read_parquet(folder).empty  # hidden names are skipped by plain pandas too
    assert SweepStore(tmp_path, "s").clean_temporaries() == len(leftovers)
    assert SweepStore(tmp_path, "s").write_row(row())


def test_failures_are_recorded_and_cleared(tmp_path):
    SweepStore(tmp_path, "s").record_failure("abc", "n", 2, "ValueError: x", "tb")
    assert SweepStore(tmp_path, "s").failures()["abc"]["error"] == "ValueError: x"
    SweepStore(tmp_path, "s").clear_failure("abc")
    assert SweepStore(tmp_path, "s").failures() == {}


def test_status_counts_a_retryable_failure_as_started_and_a_final_one_as_failed(tmp_path, capsys):
    from orchestrator import cli
    from orchestrator.grid import expand
    from orchestrator.spec import parse_spec

    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        f"name: st\nstorage: {tmp_path}\ndataset: {{name: digits}}\nstudent: {{arch: mlp}}\nbudget: {{epochs: 1}}\n"
        "grid: {selector: [random], regime: [hl], ipc: [1], seed: [0, 1]}\n"
    )
    a, b = expand(parse_spec(sweep.read_text()))
    (tmp_path / "st" / "checkpoints" / a.trial_id).mkdir(parents=True)
    SweepStore(tmp_path, "st").record_failure(
        a.trial_id, trial_name(a), 1, "RuntimeError: node lost", "tb", final=False
    )
    assert cli.main(["status", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "2 trials: 0 done, 1 started, 0 failed, 1 pending" in out
    assert "1 x RuntimeError: node lost" in out and f"{trial_name(a)} (attempt 1, retrying)" in out

    SweepStore(tmp_path, "st").mark_failures_final({a.trial_id: ("RuntimeError: node lost", "tb")})
    assert cli.main(["status", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "2 trials: 0 done, 0 started, 1 failed, 1 pending" in out
    assert "1 failed for good, 0 retrying" in out and f"{trial_name(a)} (attempt 1)\n" in out
    assert set(SweepStore(tmp_path, "st").failures()) == {a.trial_id}


def test_rows_written_before_a_column_existed_load_with_it_null_or_derived(tmp_path):
    """Old rows lack selector_label, id_schema and num_threads: they read as null (the label is derived)."""
    old = pa.schema([f for f in results.SCHEMA if f.name not in ("selector_label", "id_schema", "num_threads")])
    r = {n: None for n in old.names}
    r.update(row("abc"), selector="el2n_window", selector_options='{"offset": 0.8, "runs": 10, "epoch": 20}')
    (tmp_path / "s" / "results").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist([{n: r.get(n) for n in old.names}], schema=old), tmp_path / "s" / "results" / "abc.parquet"
    )
    assert SweepStore(tmp_path, "s").write_row(row("def"))
    df = results.load(tmp_path, "s").set_index("trial_id")
    assert df.loc["abc", "selector_label"] == "el2n_window(offset=0.8)" and pd.isna(df.loc["abc", "num_threads"])
    assert set(df.index) == {"abc", "def"}
    again = results.load(tmp_path, "s").set_index("trial_id")  # through the row cache now
    assert again.loc["abc", "selector_label"] == "el2n_window(offset=0.8)"
