"""A sweep's store: one Parquet row per finished trial, published atomically and never replaced.

`SweepStore(storage, name)` is everything under `<storage>/<name>/`: `results/<trial_id>.parquet`,
`failures/<trial_id>.json`, `checkpoints/<trial_id>/`, `sweep.yaml` (the spec's source), the driver
lock and the report folder (docs/design.md §6). `load(storage, name)` is the DataFrame entry point.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from workers.config import ID_SCHEMA, Named, TrialConfig
from workers.naming import selector_label, trial_name
from workers.storage import Storage, child_uri

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        # identity
        ("sweep", pa.string()),
        ("trial_id", pa.string()),
        ("trial_name", pa.string()),
        ("selector", pa.string()),
        ("selector_options", pa.string()),
        ("selector_label", pa.string()),  # name + the options that differ from their defaults (workers.naming)
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
        ("device", pa.string()),  # cpu, cuda, cuda:1, ...
        ("precision", pa.string()),  # fp32 or bf16: what the student trained and was evaluated in
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
        ("num_threads", pa.int64()),  # torch threads the trial trained with (reproduce with the same)
        ("workers", pa.int64()),  # data-parallel ranks the trial trained on (resources.stage_workers; null: 1)
    ]
)


CACHE = ".rows.cache"  # (Parquet) every row read so far, with its file's name, size and mtime (SweepStore.rows)
CACHE_SCHEMA = pa.schema([*SCHEMA, ("_file", pa.string()), ("_size", pa.int64()), ("_mtime", pa.int64())])


class SweepStore:
    """One sweep's folder under a storage root (a local/NFS folder or an object-store URI)."""

    def __init__(self, storage: str | Storage, name: str) -> None:
        self.st = storage if isinstance(storage, Storage) else Storage(storage)
        self.name = name
        self.damaged: dict[str, str] = {}  # unreadable rows found by done_ids: file name -> where it went

    def exists(self) -> bool:
        """Whether the sweep has a folder in this storage (it is created by the first `run`)."""
        return self.st.exists(self.path())

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

    def checkpointed_ids(self) -> set[str]:
        """Trials with a checkpoint folder (started, not finished): one listing."""
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(self.path("checkpoints"), allow_not_found=True, recursive=False)
        return {i.base_name for i in self.st.fs.get_file_info(sel) if i.type == pafs.FileType.Directory}

    def row_path(self, trial_id: str) -> str:
        return self.path("results", f"{trial_id}.parquet")

    # ---------------------------------------------------------------- rows
    def has_row(self, trial_id: str) -> bool:
        import pyarrow.fs as pafs

        return self.st.fs.get_file_info(self.row_path(trial_id)).type == pafs.FileType.File

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
        """The trials with a readable row (see `rows`)."""
        names = self.rows(columns=["_file"]).column("_file").to_pylist()
        return {name[: -len(".parquet")] for name in names}

    def rows(self, columns: list[str] | None = None) -> pa.Table:
        """Every readable row, read through a cache: rows are never rewritten, so `results/.rows.cache`
        (hidden; one file) holds each row read so far with its file's name, size and mtime, and only new
        or changed row files are read, in parallel. A row file that cannot be read (zero bytes,
        truncated, not Parquet) is not a row: it is moved to results/.damaged/ where the store allows it
        (listed in `self.damaged`), so its trial runs again. On a read-only store the cache is not saved."""
        files = self.st.stat_files(self.results_dir, ".parquet")
        cache_path = self.path("results", CACHE)
        keys = ["_file", "_size", "_mtime"]
        try:
            with self.st.fs.open_input_file(cache_path) as f:
                known = pq.read_table(f, columns=keys)
        except Exception:  # absent, or damaged itself: rebuild it
            known = CACHE_SCHEMA.empty_table().select(keys)
        stamps = zip(*(known.column(k).to_pylist() for k in keys))
        valid = {name for name, size, mtime in stamps if files.get(name) == (size, mtime)}
        new_names = sorted(set(files) - valid)
        if not new_names:
            return self._read_cache(cache_path, columns, keep=valid) if valid else CACHE_SCHEMA.empty_table()
        new = self._read_rows(new_names, files)
        old = self._read_cache(cache_path, None, keep=valid) if valid else CACHE_SCHEMA.empty_table()
        table = pa.concat_tables([old, new])
        try:
            buf = pa.BufferOutputStream()
            pq.write_table(table, buf)
            self.st.write_atomic(cache_path, buf.getvalue().to_pybytes())
        except OSError as err:  # a read-only store: rows are read from their files each time instead
            log.info("row cache %s not written (%s)", cache_path, err)
        return table.select(columns) if columns else table

    def _read_cache(self, path: str, columns: list[str] | None, keep: set[str]) -> pa.Table:
        import pyarrow.compute as pc

        with self.st.fs.open_input_file(path) as f:
            table = pq.read_table(f, columns=columns and list(dict.fromkeys(["_file", *columns])))
        table = table.filter(pc.is_in(table.column("_file"), value_set=pa.array(sorted(keep))))
        return table.select(columns) if columns else table

    def _read_rows(self, names: list[str], stamps: dict[str, tuple[int, int]]) -> pa.Table:
        from concurrent.futures import ThreadPoolExecutor

        def read(name: str) -> pa.Table | None:
            try:
                with self.st.fs.open_input_file(f"{self.results_dir}/{name}") as f:
                    t = pq.ParquetFile(f).read(use_threads=False)
            except Exception:  # ArrowInvalid (truncated, zero bytes, not Parquet), OSError
                return None
            return t if t.num_rows >= 1 else None

        with ThreadPoolExecutor(max_workers=8) as pool:
            tables = dict(zip(names, pool.map(read, names)))
        for name, t in tables.items():
            if t is None:
                self.damaged[name] = self._set_aside(name)
        good = {name: t for name, t in tables.items() if t is not None}
        if not good:
            return CACHE_SCHEMA.empty_table()
        # rows written before a column existed lack it: concat fills it with nulls, then one cast
        table = pa.concat_tables(list(good.values()), promote_options="permissive")
        cols = [
            table.column(n).cast(SCHEMA.field(n).type)
            if n in table.column_names
            else pa.nulls(table.num_rows, SCHEMA.field(n).type)
            for n in SCHEMA.names
        ]
        counts = [t.num_rows for t in good.values()]
        meta = [
            [name for name, c in zip(good, counts) for _ in range(c)],
            [stamps[name][0] for name, c in zip(good, counts) for _ in range(c)],
            [stamps[name][1] for name, c in zip(good, counts) for _ in range(c)],
        ]
        arrays = cols + [pa.array(meta[0], pa.string()), pa.array(meta[1], pa.int64()), pa.array(meta[2], pa.int64())]
        return pa.Table.from_arrays(arrays, schema=CACHE_SCHEMA)

    def _set_aside(self, name: str) -> str:
        target = self.path("results", ".damaged", name)
        try:
            self.st.fs.create_dir(self.path("results", ".damaged"))
            self.st.fs.move(f"{self.results_dir}/{name}", target)
            return target
        except OSError as err:
            return f"left in place ({err})"

    def load(self, trial_ids: set[str] | None = None):
        """Readable rows as a pandas DataFrame, one per trial_id (the earliest finished), optionally filtered.
        Rows written before a column existed read it as null; `selector_label` is then derived."""
        table = self.rows()
        if trial_ids is not None:
            import pyarrow.compute as pc

            table = table.filter(pc.is_in(table.column("trial_id"), value_set=pa.array(sorted(trial_ids), pa.string())))
        df = table.select(SCHEMA.names).to_pandas()
        if df.empty:
            return df
        df = df.sort_values("finished_at", kind="stable").drop_duplicates("trial_id", keep="first")
        missing = df["selector_label"].isna()
        if missing.any():
            df.loc[missing, "selector_label"] = [
                selector_label(Named.make(s, json.loads(o if isinstance(o, str) else "{}")))
                for s, o in zip(df.loc[missing, "selector"], df.loc[missing, "selector_options"])
            ]
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

    def mark_failures_final(self, errors: dict[str, tuple[str, str]]) -> None:
        """Tune gave up on these trials ({trial_id: (error, traceback)}): their failure records become final.
        A trial whose attempt could not record its own failure gets one from Tune's error."""
        for tid, (error, tb) in errors.items():
            try:
                payload = json.loads(self.st.read_bytes(f"{self.failures_dir}/{tid}.json"))
            except (json.JSONDecodeError, FileNotFoundError, OSError):
                self.record_failure(tid, "", 0, error, tb, final=True)
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
