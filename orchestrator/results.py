"""A sweep's store: one Parquet row per finished trial, published atomically and never replaced.

`SweepStore(storage, name)` is everything under `<storage>/<name>/`: `results/<trial_id>.parquet`,
`failures/<trial_id>.json`, `checkpoints/<trial_id>/`, `sweep.yaml` (the spec's source), the driver
lock and the report folder (docs/design.md §6). `load(storage, name)` is the DataFrame entry point.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from workers.config import ID_SCHEMA, TrialConfig
from workers.naming import trial_name
from workers.storage import Storage, child_uri

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
        ("data_placement", pa.string()),  # where the training images lived: device, host or stream
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
        ("id_schema", pa.int64()),  # the trial-id rule the row's trial_id follows (null: 1)
    ]
)


class SweepStore:
    """One sweep's folder under a storage root (a local/NFS folder or an object-store URI)."""

    def __init__(self, storage: str | Storage, name: str) -> None:
        self.st = storage if isinstance(storage, Storage) else Storage(storage)
        self.name = name

    @property
    def storage(self) -> str:
        return self.st.uri

    def path(self, *parts: str) -> str:
        """A path inside the sweep folder, for the store's own filesystem (`self.st.fs`)."""
        return self.st.path(self.name, *parts)

    def uri(self, *parts: str) -> str:
        """A folder or URI for workers (keeps an object store's query, e.g. ?endpoint_override=...)."""
        return child_uri(self.st.uri, self.name, *parts)

    @property
    def artifacts_uri(self) -> str:
        """Shared stages live beside the sweeps, under `<storage>/artifacts`, shared by every sweep."""
        return child_uri(self.st.uri, "artifacts")

    @property
    def results_dir(self) -> str:
        return self.path("results")

    @property
    def failures_dir(self) -> str:
        return self.path("failures")

    def checkpoint_uri(self, trial_id: str) -> str:
        return self.uri("checkpoints", trial_id)

    def has_checkpoint(self, trial_id: str) -> bool:
        return self.st.exists(self.path("checkpoints", trial_id))

    def row_path(self, trial_id: str) -> str:
        return self.path("results", f"{trial_id}.parquet")

    # ---------------------------------------------------------------- rows
    def has_row(self, trial_id: str) -> bool:
        return self.st.exists(self.row_path(trial_id))

    def write_row(self, row: dict[str, Any]) -> bool:
        """Publish one trial's row. Returns False (and writes nothing) when the trial already has a row.

        Locally: written under a hidden temporary name in the same folder (readers skip names starting
        with '.'), fsynced, then hard-linked to the final name: `os.link` fails if the row exists, so an
        existing row is never replaced, even by a racing duplicate. Object stores: check, then one PUT.
        """
        table = pa.Table.from_pylist([{name: row.get(name) for name in SCHEMA.names}], schema=SCHEMA)
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        return self.st.publish_new(self.row_path(row["trial_id"]), buf.getvalue().to_pybytes())

    def done_ids(self) -> set[str]:
        return {name[: -len(".parquet")] for name in self.st.list(self.results_dir, ".parquet")}

    def load(self, trial_ids: set[str] | None = None):
        """Rows as a pandas DataFrame, one per trial_id (the earliest finished), optionally filtered."""
        import pyarrow.dataset as ds

        files = [f"{self.results_dir}/{name}" for name in self.st.list(self.results_dir, ".parquet")]
        if trial_ids is not None:
            files = [f for f in files if f.rsplit("/", 1)[1][: -len(".parquet")] in trial_ids]
        if not files:
            return SCHEMA.empty_table().to_pandas()
        df = ds.dataset(files, format="parquet", schema=SCHEMA, filesystem=self.st.fs).to_table().to_pandas()
        df = df.sort_values("finished_at", kind="stable").drop_duplicates("trial_id", keep="first")
        if trial_ids is not None:
            df = df[df["trial_id"].isin(trial_ids)]
        return df.reset_index(drop=True)

    # ---------------------------------------------------------------- failures
    def record_failure(
        self, trial_id: str, trial_name: str, attempt: int, error: str, traceback_text: str, final: bool = True
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
        self.st.write_atomic(f"{self.failures_dir}/{trial_id}.json", json.dumps(payload, indent=1).encode())

    def failures(self) -> dict[str, dict]:
        out = {}
        for name in self.st.list(self.failures_dir, ".json"):
            try:
                out[name[:-5]] = json.loads(self.st.read_bytes(f"{self.failures_dir}/{name}"))
            except (json.JSONDecodeError, FileNotFoundError):
                continue
        return out

    def mark_failures_final(self, trial_ids) -> None:
        for tid in trial_ids:
            try:
                payload = json.loads(self.st.read_bytes(f"{self.failures_dir}/{tid}.json"))
            except (json.JSONDecodeError, FileNotFoundError, OSError):
                continue
            if not payload.get("final"):
                self.st.write_atomic(
                    f"{self.failures_dir}/{tid}.json", json.dumps({**payload, "final": True}, indent=1).encode()
                )

    def clear_failure(self, trial_id: str) -> None:
        self.st.delete(f"{self.failures_dir}/{trial_id}.json")

    # ---------------------------------------------------------------- trial-id migration (docs/design.md §5)
    def stale_rows(self, grid_ids: set[str]) -> dict[str, str]:
        """Rows whose trial has another id under the current id rule: {file's id: current id}, for the rows
        whose current id is in `grid_ids` (rows of other settings are left alone). Reads only the rows not
        in the grid, once each."""
        out = {}
        for old in sorted(self.done_ids() - grid_ids):
            try:
                table = pq.read_table(self.st.fs.open_input_file(self.row_path(old)), columns=["config_json"])
                new = TrialConfig.from_json(json.loads(table.column("config_json")[0].as_py())).trial_id
            except Exception:  # an unreadable or foreign file is not a stale row; `status` reports damage
                continue
            if new != old and new in grid_ids:
                out[old] = new
        return out

    def migrate(self, stale: dict[str, str]) -> tuple[int, int]:
        """Re-key rows found by `stale_rows`: each is rewritten under its current id (trial_id, trial_name,
        id_schema updated; everything else kept), then the old file is removed. A trial that already has a
        row under its current id keeps it (the loaders' rule: the earliest row wins) and the stale copy moves
        to results/.superseded/. Failure records and checkpoints under old ids are dropped (a resumed trial
        starts over). Returns (rows re-keyed, rows superseded)."""
        moved = superseded = 0
        for old, new in stale.items():
            table = pq.read_table(self.st.fs.open_input_file(self.row_path(old)), schema=SCHEMA)
            row = table.to_pylist()[0]
            cfg = TrialConfig.from_json(json.loads(row["config_json"]))
            row.update(trial_id=new, trial_name=trial_name(cfg), id_schema=ID_SCHEMA)
            if self.write_row(row):
                moved += 1
            else:
                data = self.st.read_bytes(self.row_path(old))
                self.st.write_atomic(self.path("results", ".superseded", f"{old}.parquet"), data)
                superseded += 1
            self.st.delete(self.row_path(old))
            self.clear_failure(old)
            self.st.delete_dir(self.path("checkpoints", old))
        return moved, superseded

    # ---------------------------------------------------------------- housekeeping
    def clean_temporaries(self) -> int:
        """Remove hidden temporary files left by a killed writer (local storage; object stores have none)."""
        if not self.st.local:
            return 0
        n = 0
        for sub in ("results", "failures"):
            for f in Path(self.path(sub)).glob(".*.tmp"):
                f.unlink(missing_ok=True)
                n += 1
        return n

    def save_spec(self, source: str) -> None:
        self.st.write_atomic(self.path("sweep.yaml"), source.encode())


def load(storage: str, sweep: str, trial_ids: set[str] | None = None):
    """All rows of a sweep as a pandas DataFrame, one per trial_id (the earliest finished)."""
    return SweepStore(storage, sweep).load(trial_ids)
