"""Ray driver: plan what is pending, then one Ray Tune run over the shared stages and the trials."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import console as _console
from orchestrator import grid
from orchestrator.console import quiet_ray
from orchestrator.console import say as _say
from orchestrator.lock import DriverLock
from orchestrator.results import SweepStore
from orchestrator.scheduler import StageBuilds, StageGraph, is_stage, stage_resources, sweep_searcher
from orchestrator.spec import SweepSpec
from workers.artifacts import ArtifactStore
from workers.catalogue import STAGES
from workers.config import ID_SCHEMA, ArtifactKey, TrialConfig
from workers.graph import cache_key, shard_keys
from workers.naming import trial_name
from workers.storage import is_uri

log = logging.getLogger("ddsweep")


@dataclass
class Plan:
    trials: list[TrialConfig]
    done: set[str]
    pending: list[TrialConfig]
    stages: list[ArtifactKey]
    stages_missing: list[ArtifactKey]
    stale: dict[str, str]  # rows written under an older trial-id rule: {file id: current id}
    store: SweepStore  # the store it read (its `damaged` lists rows it found unreadable)
    done_all: set[str]  # every readable row, the grid's or not


class StaleIds(Exception):
    """The store holds rows of this sweep under an older trial-id rule: `ddsweep migrate` re-keys them."""

    def __init__(self, spec: SweepSpec, stale: dict[str, str]) -> None:
        super().__init__(stale_message(spec, stale))


def stale_message(spec: SweepSpec, stale: dict[str, str]) -> str:
    return (
        f"{len(stale)} finished row(s) of sweep {spec.name!r} in {spec.store().results_dir} were written under "
        f"an older trial-id rule (before id schema {ID_SCHEMA}); their trials would run again. Re-key them with "
        f"`ddsweep migrate {spec.source_path or 'SWEEP.yaml'}` (nothing is re-run or lost), then run again"
    )


def make_plan(spec: SweepSpec) -> Plan:
    store = spec.store()
    trials = grid.expand(spec)
    ids = {t.trial_id for t in trials}
    done = store.done_ids()
    pending = [t for t in trials if t.trial_id not in done]
    stages = grid.stages_for(pending)
    artifacts = ArtifactStore(store.artifacts_uri)
    return Plan(
        trials,
        done & ids,
        pending,
        stages,
        artifacts.missing(stages),
        store.stale_rows(ids) if done - ids else {},
        store,
        done,
    )


class ClusterUnreachable(Exception):
    """--address names no Ray cluster that answers: fail at once instead of Ray's minutes of retries."""


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """A GCS address (host:port) must accept a TCP connection within `timeout_s`; `auto`, `local` and
    `ray://` client addresses are left to Ray."""
    import socket

    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as err:
        why = err.strerror or str(err) if isinstance(err, OSError) else f"{port!r} is not a port"
        raise ClusterUnreachable(
            f"cannot reach a Ray cluster at {address} ({why}); start one there (`ray start --head`), give its "
            "address as HOST:6379 (or `auto` on a cluster node), or leave out --address to run a local Ray"
        ) from None


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")  # set inside `ray job submit`
    if address:
        check_address(address)
        ray.init(address=address, log_to_driver=False)
    else:  # a new embedded local cluster (never one a `ray start` left running); dashboard off
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            dashboard_host="127.0.0.1",
            log_to_driver=False,
            configure_logging=True,
            logging_level=logging.WARNING,
        )


def run(spec: SweepSpec, address: str | None = None, checkpoint_interval_s: float = 60.0) -> int:
    """Run everything pending. Returns 0 when every trial has a row, 1 when some failed."""
    if not is_uri(spec.storage):  # workers run elsewhere (another cwd, another node): absolute paths only
        spec = _with_storage(spec, str(Path(spec.storage).resolve()))
    store = spec.store()
    with DriverLock(store.st, store.name):
        return _run_locked(spec, store, address, checkpoint_interval_s)


def _run_locked(spec: SweepSpec, store: SweepStore, address: str | None, checkpoint_interval_s: float) -> int:
    store.clean_temporaries()
    plan = make_plan(spec)
    if plan.stale:
        raise StaleIds(spec, plan.stale)
    _say(
        f"sweep {spec.name!r}, storage {spec.storage}: {len(plan.trials)} trials, {len(plan.done)} done, "
        f"{len(plan.pending)} pending"
    )
    if plan.store.damaged:
        _say(
            f"warning: {len(plan.store.damaged)} unreadable row(s) set aside in {store.results_dir}/.damaged/; "
            "their trials run again"
        )
    store.save_spec(spec.source)
    if not plan.pending:
        _say("nothing to run")
        return 0

    import ray

    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = Path(store.path("tune")) if store.st.local else Path(tempfile.mkdtemp(prefix="ddsweep-"))
    with quiet_ray(log_dir / f"driver-{stamp}.log") as console:
        try:
            init_ray(address)
            missing = _launch(spec, store, plan, checkpoint_interval_s, stamp, console)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting for Tune's graceful stop
            console.interrupted = True
            missing = [t for t in plan.trials if t.trial_id not in store.done_ids()]
        finally:
            _console.set_live(None)  # the live status line of a terminal (orchestrator.progress)
            if not address and ray.is_initialized():
                ray.shutdown()
    _say(f"Ray's own output: {console.log_path}")
    if console.interrupted:
        _say(
            f"interrupted: {len(plan.trials) - len(missing)}/{len(plan.trials)} trials have a row. Run the same "
            f"command again to continue (rows are kept, started trials resume from their checkpoints): "
            f"ddsweep run {spec.source_path or 'SWEEP.yaml'}"
        )
        return 130
    return 0 if not missing else 1


def _trial_resources(pending: list[TrialConfig], res):
    """Tune's resources per item: a trial's CPUs and GPUs; a stage's (scheduler.stage_resources); and a Tune slot
    that only waits for its Ray Train group for a `full` trial or a data-parallel stage spread over
    `stage_workers` DDP ranks (the ranks hold the CPUs and GPUs; orchestrator/distributed.py)."""
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

    from orchestrator.trainable import uses_whole_split

    spread = {t.trial_id for t in pending if uses_whole_split(t)} if res.stage_workers > 1 else set()
    factories: dict[tuple, Any] = {}

    def factory(cpu: float, gpu: float):
        if (cpu, gpu) not in factories:
            factories[(cpu, gpu)] = resource_dict_to_pg_factory({"cpu": cpu, "gpu": gpu})
        return factories[(cpu, gpu)]

    def resources(config: dict):
        if is_stage(config):
            kind = config["stage_kind"]
            if res.stage_workers > 1 and STAGES[kind].data_parallel:
                return factory(0.01, 0)
            r = stage_resources(ArtifactKey(kind, config["stage_config"]), res.cpus_per_trial, res.gpus_per_trial)
            return factory(r["cpu"], r["gpu"])
        if config.get("trial_id") in spread:
            return factory(0.01, 0)
        return factory(res.cpus_per_trial, res.gpus_per_trial)

    return resources


def _launch(
    spec: SweepSpec, store: SweepStore, plan: Plan, checkpoint_interval_s: float, stamp: str, console
) -> list[TrialConfig]:
    """Build the missing stages, run the pending trials with Tune; returns the trials still without a row."""
    from ray import tune

    from orchestrator.trainable import trainable

    # Tune's per-trial result.json / progress.csv / TensorBoard files: nobody reads them (the rows are the record),
    # and writing them cost the smoke sweep 12% of its wall time on 2 CPUs (docs/ray.md §8)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    res = spec.resources
    stages = StageGraph(plan.stages_missing)
    if plan.stages_missing:
        _say(f"building {len(plan.stages_missing)} shared stage(s); trials start as soon as theirs are built")

    st = store.st
    names = {t.trial_id: trial_name(t) for t in plan.pending}
    trials_json = {t.trial_id: json.dumps(t.to_json(), sort_keys=True) for t in plan.pending}
    fn = tune.with_resources(
        tune.with_parameters(
            trainable,
            trials_json=trials_json,
            storage=store.storage,
            sweep=store.name,
            num_threads=max(1, int(res.cpus_per_trial)),
            device_fraction=res.device_fraction,
            checkpoint_interval_s=checkpoint_interval_s,
            data_parallel={"workers": res.stage_workers, "cpus": res.cpus_per_trial, "gpus": res.gpus_per_trial},
        ),
        _trial_resources(plan.pending, res),
    )
    progress = _progress_callback(names, len(plan.trials), len(plan.done), stages)
    searcher = sweep_searcher(
        plan.pending,
        stages,
        store,
        on_failed=progress.stage_failed,
        max_concurrent=res.max_concurrent,
    )
    tuner = tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=len(plan.pending) + len(plan.stages_missing),  # the searcher says when it is done
            reuse_actors=True,
            trial_dirname_creator=lambda t: t.config["trial_id"],
        ),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{stamp}",
            storage_path=store.path("tune"),
            storage_filesystem=None if st.local else st.fs,
            failure_config=tune.FailureConfig(max_failures=res.max_failures),
            callbacks=[progress],
            verbose=0,
        ),
    )
    grid_results = tuner.fit()
    errored = {
        r.config["trial_id"]: (f"{type(r.error).__name__}: {r.error}", "".join(traceback.format_exception(r.error)))
        for r in grid_results
        if r.error is not None and r.config and not is_stage(r.config)
    }
    store.mark_failures_final(errored)  # Tune gave up on these
    done = store.done_ids()
    missing = [t for t in plan.trials if t.trial_id not in done]
    fails = {k: f for k, f in store.failures().items() if f.get("final", True)}
    failed = [t for t in missing if t.trial_id in fails]
    stopped = len(missing) - len(failed)
    _say(
        f"finished: {len(plan.trials) - len(missing)}/{len(plan.trials)} trials have a row"
        + (f"; {len(failed)} failed (see {store.failures_dir})" if failed else "")
        + (f"; {stopped} not finished" if stopped and console.interrupted else "")
        + (f"; {stopped} not finished (stopped); run again to continue" if stopped and not console.interrupted else "")
    )
    for t in missing:
        f = fails.get(t.trial_id)
        if f:
            _say(f"  FAILED {trial_name(t)} after {f['attempt']} attempt(s): {f['error']}")
    _say(f"rows: {store.results_dir}")
    return missing


# Published figures of torchvision checkpoints, by the first 8 hex digits of the file's sha256 (the suffix of
# torchvision's file names): what `ddsweep check-teacher` should reproduce on ImageNet's val split under
# resize 256 / centre crop 224, bilinear (torchvision's eval transform of these weights).
TORCHVISION_REFERENCE = {"f37072fd": ("torchvision ResNet-18 IMAGENET1K_V1", 69.758, 89.078)}


def check_teacher(spec: SweepSpec, address: str | None = None) -> dict:
    """The val top-1 of the sweep's teacher weights on the cached val split: builds the cache stages that are
    missing (Ray tasks), then evaluates in one Ray task with the trial's resources. Returns the figures."""
    t = spec.teacher
    if t is None or not t.weights:
        raise ValueError("teacher.weights: check-teacher evaluates a weights file; the sweep's teacher has none")
    store = spec.store()
    artifacts = ArtifactStore(store.artifacts_uri)
    ckey = cache_key(spec.dataset)
    keys = [] if ckey is None else [*shard_keys(ckey), ckey]
    init_ray(address)
    import ray

    res = spec.resources
    builds = StageBuilds(artifacts.missing(keys), store.artifacts_uri, res.cpus_per_trial, 0)
    builds.wait()
    if builds.failed:
        raise RuntimeError(next(iter(builds.failed.values()))[0])

    @ray.remote(max_retries=0)
    def check_one(dataset: dict, teacher: dict, root: str) -> dict:
        from workers.artifacts import ArtifactStore
        from workers.teacher import check_teacher as check

        return check(dataset, teacher, ArtifactStore(root))

    ref = check_one.options(num_cpus=res.cpus_per_trial, num_gpus=res.gpus_per_trial).remote(
        spec.dataset.to_json(), t.to_json(), store.artifacts_uri
    )
    try:
        out = ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = err.as_instanceof_cause() if hasattr(err, "as_instanceof_cause") else err
        raise RuntimeError(str(cause).strip().splitlines()[-1]) from None
    out["reference"] = TORCHVISION_REFERENCE.get((t.weights_sha256 or "")[:8])
    return out


def _with_storage(spec: SweepSpec, storage: str) -> SweepSpec:
    from dataclasses import replace

    return replace(spec, storage=storage)


def _progress_callback(names: dict[str, str], total: int, already: int, stages: StageGraph):
    """One line per finished or failed trial, with the stages built so far:
    'done 7/24 el2n-hl-ipc10-s0 top1=0.812 (stages 30/53, elapsed 14s)'; in a terminal also one live
    status line under them (orchestrator.progress.LiveLine). Stage trials are counted as stages, not trials."""
    from ray.tune import Callback

    from orchestrator.progress import LiveLine

    live = LiveLine(total, already)
    _console.set_live(live if live.enabled else None)

    class Progress(Callback):
        def __init__(self) -> None:
            self.count, self.failed, self.t0 = already, 0, time.time()

        def on_trial_start(self, iteration, trials, trial, **info):
            if not is_stage(trial.config):
                live.trial_started(trial.config["trial_id"])

        def on_step_begin(self, iteration, trials, **info):
            running = sum(1 for t in trials if t.status == "RUNNING" and not is_stage(t.config))
            live.update(running, stages.unfinished())
            live.draw(force=False)

        def _name(self, trial) -> str:
            return names.get(trial.config["trial_id"], trial.config["trial_id"])

        def _when(self) -> str:
            built = stages.summary()
            return f"({built + ', ' if built else ''}elapsed {time.time() - self.t0:.0f}s)"

        def on_trial_complete(self, iteration, trials, trial, **info):
            if is_stage(trial.config):
                return
            live.trial_finished(trial.config["trial_id"])
            self.count += 1
            r = trial.last_result or {}
            top1 = f" top1={r['top1']:.3f}" if "top1" in r else ""
            _say(f"done {self.count}/{total} {self._name(trial)}{top1} {self._when()}")

        def on_trial_recover(self, iteration, trials, trial, **info):
            _say(f"retrying {self._name(trial)} after an error")

        def on_trial_error(self, iteration, trials, trial, **info):
            if is_stage(trial.config):  # the searcher fails the stage and the trials that need it
                return
            live.trial_finished(trial.config["trial_id"], ok=False)
            self.failed += 1
            _say(f"FAILED {self._name(trial)} (no retries left; {self.failed} failed so far)")

        def stage_failed(self, trial: TrialConfig) -> None:
            live.failed += 1
            self.failed += 1
            _say(f"FAILED {names.get(trial.trial_id, '?')}: a stage it needs failed {self._when()}")

    return Progress()
