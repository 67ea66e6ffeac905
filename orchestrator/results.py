"""The results store: one Parquet file per finished trial, published atomically, never replaced.

Layout under `<storage>/<sweep>/`: `results/<trial_id>.parquet`, `failures/<trial_id>.json`,
`checkpoints/<trial_id>/`, `sweep.yaml` (the resolved spec's source). DESIGN.md §5-§6.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from workers.storage import Storage

SCHEMA = pa.schema(
    [
        # identity
        ("sweep", pa.string()),
        ("trial_id", pa.string()),
        ("trial_name", pa.string()),
        ("selector", pa.string()),
        ("selector_options", pa.string()),
        ("regime", pa.string()),
        ("ipc", pa.int64()),
        ("seed", pa.int64()),
        ("dataset", pa.string()),
        ("student_arch", pa.string()),
        ("teacher_arch", pa.string()),
        ("subset_key", pa.string()),
        # budget
        ("budget_unit", pa.string()),
        ("budget_value", pa.float64()),
        ("images_seen", pa.int64()),
        ("subset_epochs", pa.float64()),
        ("full_epochs", pa.float64()),
        ("steps", pa.int64()),
        # outcome (fractions in [0, 1]); best_top1 is the best *test* top-1 over evaluations, labelled as such
        ("top1", pa.float64()),
        ("top5", pa.float64()),
        ("loss", pa.float64()),
        ("best_top1", pa.float64()),
        ("minival_top1", pa.float64()),
        # cost
        ("select_seconds", pa.float64()),
        ("train_seconds", pa.float64()),
        ("total_seconds", pa.float64()),
        ("gpu_name", pa.string()),
        ("peak_gpu_mem_bytes", pa.int64()),
        ("soft_label_bytes", pa.int64()),
        # provenance
        ("attempt", pa.int64()),
        ("resumed_from_epoch", pa.int64()),
        ("host", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("ddsweep_version", pa.string()),
        ("torch_version", pa.string()),
        ("ray_version", pa.string()),
        ("config_json", pa.string()),
        ("history_json", pa.string()),
    ]
)


def _st(storage) -> Storage:
    return storage if isinstance(storage, Storage) else Storage(storage)


def sweep_dir(storage, sweep: str) -> str:
    """`<storage>/<sweep>` as a path string (a local path, or a path inside the object store)."""
    return _st(storage).path(sweep)


def results_dir(storage, sweep) -> str:
    return _st(storage).path(sweep, "results")


def failures_dir(storage, sweep) -> str:
    return _st(storage).path(sweep, "failures")


def checkpoint_dir(storage, sweep, trial_id: str) -> str:
    return _st(storage).path(sweep, "checkpoints", trial_id)


def row_path(storage, sweep, trial_id: str) -> str:
    return _st(storage).path(sweep, "results", f"{trial_id}.parquet")


def has_row(storage, sweep, trial_id: str) -> bool:
    return _st(storage).exists(row_path(storage, sweep, trial_id))


def write_row(storage, sweep, row: dict[str, Any]) -> bool:
    """Publish one trial's row. Returns False (and writes nothing) when the trial already has a row.

    Locally: written under a hidden temporary name in the same folder (readers skip names starting
    with '.'), fsynced, then hard-linked to the final name: `os.link` fails if the row exists, so an
    existing row is never replaced, even by a racing duplicate. Object stores: check, then one PUT.
    """
    table = pa.Table.from_pylist([{name: row.get(name) for name in SCHEMA.names}], schema=SCHEMA)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    return _st(storage).publish_new(row_path(storage, sweep, row["trial_id"]), buf.getvalue().to_pybytes())


def load(storage, sweep: str, trial_ids: set[str] | None = None):
    """All rows of a sweep as a pandas DataFrame, one per trial_id (the earliest finished), optionally filtered."""
    import pyarrow.dataset as ds

    st = _st(storage)
    folder = results_dir(st, sweep)
    files = [f"{folder}/{name}" for name in st.list(folder, ".parquet")]
    if not files:
        return SCHEMA.empty_table().to_pandas()
    df = ds.dataset(files, format="parquet", schema=SCHEMA, filesystem=st.fs).to_table().to_pandas()
    df = df.sort_values("finished_at", kind="stable").drop_duplicates("trial_id", keep="first")
    if trial_ids is not None:
        df = df[df["trial_id"].isin(trial_ids)]
    return df.reset_index(drop=True)


def done_ids(storage, sweep: str) -> set[str]:
    st = _st(storage)
    return {name[: -len(".parquet")] for name in st.list(results_dir(st, sweep), ".parquet")}


def record_failure(
    storage,
    sweep: str,
    trial_id: str,
    trial_name: str,
    attempt: int,
    error: str,
    traceback_text: str,
    final: bool = True,
) -> None:
    """`final`: no retry is left (the driver marks it after Tune gives up); an attempt that failed while
    Tune may still retry is recorded with final=False, so `status` shows it as started, not failed."""
    payload = {
        "trial_id": trial_id,
        "trial_name": trial_name,
        "attempt": attempt,
        "error": error,
        "traceback": traceback_text,
        "at": time.time(),
        "final": final,
    }
    st = _st(storage)
    st.write_atomic(f"{failures_dir(st, sweep)}/{trial_id}.json", json.dumps(payload, indent=1).encode())


def failures(storage, sweep: str) -> dict[str, dict]:
    st = _st(storage)
    folder = failures_dir(st, sweep)
    out = {}
    for name in st.list(folder, ".json"):
        try:
            out[name[:-5]] = json.loads(st.read_bytes(f"{folder}/{name}"))
        except (json.JSONDecodeError, FileNotFoundError):
            continue
    return out


def mark_failures_final(storage, sweep: str, trial_ids) -> None:
    st = _st(storage)
    folder = failures_dir(st, sweep)
    for tid in trial_ids:
        try:
            payload = json.loads(st.read_bytes(f"{folder}/{tid}.json"))
        except (json.JSONDecodeError, FileNotFoundError, OSError):
            continue
        if not payload.get("final"):
            st.write_atomic(f"{folder}/{tid}.json", json.dumps({**payload, "final": True}, indent=1).encode())


def clear_failure(storage, sweep: str, trial_id: str) -> None:
    st = _st(storage)
    st.delete(f"{failures_dir(st, sweep)}/{trial_id}.json")


def clean_temporaries(storage, sweep: str) -> int:
    """Remove hidden temporary files left by a killed writer (local storage; object stores have none)."""
    st = _st(storage)
    if not st.local:
        return 0
    n = 0
    for sub in ("results", "failures"):
        for f in Path(st.path(sweep, sub)).glob(".*.tmp"):
            f.unlink(missing_ok=True)
            n += 1
    return n


def best_window(df, selector: str = "el2n_window", option: str = "offset", by=("dataset", "ipc", "regime")):
    """EL2N-Best (METHODS.md §4.10): per (data set, IPC, regime) the window offset with the best mean
    **minival** top-1 over seeds; its mean test top-1 is reported beside it and never used to choose.
    Ties go to the smaller offset. Returns one row per group: by..., offset, minival_top1, top1, seeds,
    candidates (how many offsets were compared)."""
    import pandas as pd

    rows = df[df["selector"] == selector].copy()
    cols = [*by, option, "minival_top1", "top1", "seeds", "candidates"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    rows[option] = rows["selector_options"].map(lambda s: json.loads(s)[option])
    g = (
        rows.groupby([*by, option])
        .agg(minival_top1=("minival_top1", "mean"), top1=("top1", "mean"), seeds=("seed", "nunique"))
        .reset_index()
    )
    g = g.sort_values([*by, "minival_top1", option], ascending=[True] * len(by) + [False, True])
    best = g.groupby(list(by), sort=True).head(1).copy()
    best["candidates"] = g.groupby(list(by))[option].transform("count").loc[best.index]
    return best[cols].reset_index(drop=True)
