"""The Tune function trainable: run one trial with workers.run_trial, publish its row, report to Tune.

Runs inside Ray worker processes. It imports torch only through workers.trial, inside the call.
"""

from __future__ import annotations

import json
import traceback
from datetime import datetime, timezone
from typing import Any

from orchestrator.progress import TrialHeartbeat
from orchestrator.results import SweepStore
from orchestrator.scheduler import build_stage, is_stage
from workers import __version__
from workers.catalogue import SELECTORS
from workers.config import ID_SCHEMA, TrialConfig, canonical_json
from workers.naming import selector_label, trial_name
from workers.storage import Storage


def build_row(sweep: str, cfg: TrialConfig, metrics: dict[str, Any], attempt: int, started_at: datetime) -> dict:
    import ray

    history = metrics.pop("history", [])
    return {
        "sweep": sweep,
        "trial_id": cfg.trial_id,
        "trial_name": trial_name(cfg),
        "selector": cfg.selector.name,
        "selector_options": json.dumps(cfg.selector.opts, sort_keys=True),
        "selector_label": selector_label(cfg.selector),
        "regime": cfg.regime,
        "ipc": cfg.ipc,
        "seed": cfg.seed,
        "budget_unit": cfg.budget.unit,
        "budget_value": float(cfg.budget.value),
        **metrics,
        "attempt": attempt,
        "started_at": started_at,
        "finished_at": datetime.now(timezone.utc),
        "ddsweep_version": __version__,
        "ray_version": ray.__version__,
        "config_json": canonical_json(cfg.to_json()),
        "history_json": json.dumps(history),
        "id_schema": ID_SCHEMA,
    }


def count_attempt(ckpt: str) -> int:
    """Starts of this trial so far, this one included: Tune retries, node losses and relaunches all count.
    Kept beside the trial's checkpoint, so it goes away with it when the row is written."""
    st = Storage(ckpt)
    f = st.path("attempts")
    try:
        n = int(st.read_bytes(f)) + 1
    except (FileNotFoundError, OSError, ValueError):
        n = 1
    st.write_atomic(f, str(n).encode())
    return n


def run_one(
    trial_id: str,
    trials_json: dict[str, str],
    storage: str,
    sweep: str,
    num_threads: int,
    report=None,
    checkpoint_interval_s: float = 60.0,
    device_fraction: float = 0.5,
    data_parallel: dict | None = None,
) -> dict | None:
    """Run a trial unless its row exists. Returns the row written, or None when there was nothing to do.
    `data_parallel` ({workers, cpus, gpus}, workers > 1): a `full` trial trains on that many DDP ranks
    (orchestrator/distributed.py); other trials ignore it."""
    from workers.trial import TrialContext, clear_checkpoint, run_trial

    store = SweepStore(storage, sweep)
    if store.has_row(trial_id):  # relaunched after its row was published
        return None
    cfg = TrialConfig.from_json(json.loads(trials_json[trial_id]))
    ckpt = store.checkpoint_uri(trial_id)
    attempt = count_attempt(ckpt)
    started_at = datetime.now(timezone.utc)
    beat = TrialHeartbeat(store, trial_id, trial_name(cfg), attempt)  # `ddsweep status` sees it running
    ctx = TrialContext(
        artifacts_root=store.artifacts_uri,
        checkpoint_dir=ckpt,
        report=report,
        num_threads=num_threads,
        checkpoint_interval_s=checkpoint_interval_s,
        device_fraction=device_fraction,
        on_progress=beat.progress,
    )
    try:  # everything up to the published row: a failure anywhere is recorded with its traceback
        with beat:
            if data_parallel and data_parallel["workers"] > 1 and uses_whole_split(cfg):
                from orchestrator.distributed import run_trial_data_parallel

                metrics = run_trial_data_parallel(
                    trial_id,
                    trials_json[trial_id],
                    store.artifacts_uri,
                    ckpt,
                    **data_parallel,
                    num_threads=num_threads,
                    checkpoint_interval_s=checkpoint_interval_s,
                    device_fraction=device_fraction,
                )
            else:
                metrics = run_trial(cfg, ctx)
        row = build_row(sweep, cfg, metrics, attempt, started_at)
        if not store.write_row(row) and not store.has_row(trial_id):
            raise RuntimeError(
                f"the row of {trial_id} could not be published: {store.row_path(trial_id)} exists and is not a file"
            )
    except Exception as err:
        store.record_failure(
            trial_id,
            trial_name(cfg),
            attempt,
            f"{type(err).__name__}: {err}",
            traceback.format_exc(),
            final=False,
        )  # Tune may retry; the driver decides
        raise
    clear_checkpoint(ctx)
    store.clear_failure(trial_id)
    return row


def trainable(
    config: dict,
    trials_json: dict[str, str],
    storage: str,
    sweep: str,
    num_threads: int,
    checkpoint_interval_s: float,
    device_fraction: float = 0.5,
    data_parallel: dict | None = None,
) -> None:
    from ray import tune

    if is_stage(config):  # a shared stage, scheduled beside the trials (orchestrator/scheduler.py)
        tune.report(build_stage(config, SweepStore(storage, sweep).artifacts_uri, data_parallel, num_threads))
        return
    row = run_one(
        config["trial_id"],
        trials_json,
        storage,
        sweep,
        num_threads,
        # no intermediate results: a function trainable's tune.report blocks until the driver asks for the next
        # one, so each evaluation row sent to Tune made the trial wait on the driver's loop (docs/ray.md §8)
        report=None,
        checkpoint_interval_s=checkpoint_interval_s,
        device_fraction=device_fraction,
        data_parallel=data_parallel,
    )
    final = {"ddsweep_done": 1}
    if row is not None:
        final.update({"top1": row["top1"], "minival_top1": row["minival_top1"], "total_seconds": row["total_seconds"]})
    tune.report(final)


def uses_whole_split(cfg: TrialConfig) -> bool:
    """Trials that train on the whole train split (`full`): the ones `resources.stage_workers` spreads over
    several DDP ranks. Subset trials are small; a sweep runs many of them side by side instead."""
    return not SELECTORS[cfg.selector.name].balanced
