"""Ray driver: plan what is pending, build shared stages as Ray tasks, run trials with Ray Tune."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator import grid
from orchestrator.lock import DriverLock
from orchestrator.results import SweepStore
from orchestrator.spec import SweepSpec
from workers.artifacts import ArtifactStore
from workers.catalogue import STAGES
from workers.config import ID_SCHEMA, ArtifactKey, TrialConfig
from workers.graph import cache_key, requires, shard_keys, stage_deps, stage_uses_accelerator
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
        [k for k in stages if not artifacts.exists(k)],
        store.stale_rows(ids) if done - ids else {},
    )


def _say(msg: str) -> None:
    print(f"[ddsweep] {msg}", flush=True)


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")  # set inside `ray job submit`
    if address:
        ray.init(address=address, log_to_driver=False)
    else:  # embedded local cluster; dashboard off (it would bind only 127.0.0.1 if enabled)
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            dashboard_host="127.0.0.1",
            log_to_driver=False,
            configure_logging=True,
            logging_level=logging.WARNING,
        )


@dataclass(frozen=True)
class StageFailure:
    """Why a stage failed: the one-line error (the root cause, as the user has to fix it) and the remote
    traceback, which failure records of the trials that needed the stage keep."""

    error: str
    traceback: str = ""

    def __str__(self) -> str:
        return self.error


def build_stages(
    keys: list[ArtifactKey], artifacts_root: str, cpus: float, gpus: float
) -> dict[ArtifactKey, StageFailure]:
    """Build missing shared stages as Ray tasks, de-duplicated, one dependency level at a time.

    Returns {stage: failure} for the stages that failed (their dependants are not attempted); the
    caller records the trials that needed them as failed and runs the rest. A stage kind may declare its
    own CPUs (a cache shard decodes on one core); the others get the trial's."""
    import ray

    if not keys:
        return {}

    @ray.remote(num_cpus=cpus, num_gpus=0, max_retries=2)
    def build_one(kind: str, config_json: str, root: str) -> str:
        from workers import stages
        from workers.artifacts import ArtifactStore

        key = ArtifactKey(kind, config_json)
        stages.build(key, ArtifactStore(root))
        return str(key)

    t0 = time.time()
    _say(f"building {len(keys)} shared stage(s)")
    level: dict[ArtifactKey, int] = {}
    for k in keys:  # grid.stages_for lists dependencies before dependants
        level[k] = 1 + max((level.get(d, 0) for d in stage_deps(k)), default=0)
    failed: dict[ArtifactKey, StageFailure] = {}
    done = 0
    for lv in sorted(set(level.values())):
        batch = []
        for k in (k for k in keys if level[k] == lv):
            bad = [d for d in stage_deps(k) if d in failed]
            if bad:
                failed[k] = failed[bad[0]]  # the root cause, as the user has to fix it
            else:
                batch.append(k)
        refs = [
            build_one.options(
                num_cpus=STAGES[k.kind].cpus if STAGES[k.kind].cpus is not None else cpus,
                num_gpus=gpus if stage_uses_accelerator(k) else 0,
            ).remote(k.kind, k.config_json, artifacts_root)
            for k in batch
        ]
        for i, (k, ref) in enumerate(zip(batch, refs), 1):
            try:
                ray.get(ref)
            except ray.exceptions.RayTaskError as err:
                cause = err.as_instanceof_cause() if hasattr(err, "as_instanceof_cause") else err
                msg = str(cause).strip().splitlines()[-1]
                remote = getattr(err, "traceback_str", None) or str(err)
                remote = "Traceback of the Ray task (most recent call last):\n" + re.sub(r"\x1b\[[0-9;]*m", "", remote)
                failed[k] = StageFailure(f"stage {k} failed: {msg}", remote)
                _say(f"  {failed[k]}")
            done += 1
            if i == len(refs) or i % 25 == 0:
                _say(f"  stages built: {done}/{len(keys)} (level {lv})")
    _say(f"stages ready in {time.time() - t0:.1f}s" + (f"; {len(failed)} failed" if failed else ""))
    return failed


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
        f"sweep {spec.name!r}: {len(plan.trials)} trials, {len(plan.done)} done, {len(plan.pending)} pending "
        f"(storage {spec.storage})"
    )
    store.save_spec(spec.source)
    if not plan.pending:
        _say("nothing to run")
        return 0

    init_ray(address)
    import ray
    from ray import tune

    res = spec.resources
    failed_stages = build_stages(
        plan.stages_missing, store.artifacts_uri, cpus=res.cpus_per_trial, gpus=res.gpus_per_trial
    )
    if failed_stages:
        plan.pending = _drop_trials_of_failed_stages(store, plan.pending, failed_stages)
        if not plan.pending:
            _say("no trial can run: every pending trial needs a failed stage")
            return 1

    from orchestrator.trainable import trainable

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
        ),
        {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial},
    )
    progress = _progress_callback(names, len(plan.trials), len(plan.done))
    tuner = tune.Tuner(
        fn,
        param_space={"trial_id": tune.grid_search([t.trial_id for t in plan.pending])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=res.max_concurrent,
            reuse_actors=True,
            trial_dirname_creator=lambda t: t.config["trial_id"],
        ),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=store.path("tune"),
            storage_filesystem=None if st.local else st.fs,
            failure_config=tune.FailureConfig(max_failures=res.max_failures),
            callbacks=[progress],
            verbose=0,
        ),
    )
    grid_results = tuner.fit()
    errored = [r.config["trial_id"] for r in grid_results if r.error is not None and r.config]
    store.mark_failures_final(errored)  # Tune gave up on these
    done = store.done_ids()
    missing = [t for t in plan.trials if t.trial_id not in done]
    fails = {k: f for k, f in store.failures().items() if f.get("final", True)}
    failed = [t for t in missing if t.trial_id in fails]
    _say(
        f"finished: {len(plan.trials) - len(missing)}/{len(plan.trials)} trials have a row"
        + (f"; {len(failed)} failed (see {store.failures_dir})" if failed else "")
        + (
            f"; {len(missing) - len(failed)} not finished (stopped); run again to continue"
            if len(missing) > len(failed)
            else ""
        )
    )
    for t in missing:
        f = fails.get(t.trial_id)
        if f:
            _say(f"  FAILED {trial_name(t)} after {f['attempt']} attempt(s): {f['error']}")
    _say(f"rows: {store.results_dir}")
    if not address:
        ray.shutdown()
    return 0 if not missing else 1


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
    failed = build_stages([k for k in keys if not artifacts.exists(k)], store.artifacts_uri, res.cpus_per_trial, 0)
    if failed:
        raise RuntimeError(next(iter(failed.values())).error)

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


def _drop_trials_of_failed_stages(
    store: SweepStore, pending: list[TrialConfig], failed: dict[ArtifactKey, StageFailure]
) -> list[TrialConfig]:
    """Record trials whose stages failed as failures (failures/<trial_id>.json); return the others."""

    def closure(key: ArtifactKey) -> list[ArtifactKey]:
        return [key] + [k for d in stage_deps(key) for k in closure(d)]

    keep = []
    for t in pending:
        bad = [k for r in requires(t) for k in closure(r) if k in failed]
        if bad:
            f = failed[bad[0]]
            store.record_failure(t.trial_id, trial_name(t), 0, f.error, f.traceback)
        else:
            keep.append(t)
    _say(f"{len(pending) - len(keep)} trial(s) skipped because a stage they need failed")
    return keep


def _with_storage(spec: SweepSpec, storage: str) -> SweepSpec:
    from dataclasses import replace

    return replace(spec, storage=storage)


def _progress_callback(names: dict[str, str], total: int, already: int):
    """One line per finished or failed trial: 'done 7/24 el2n-hl-ipc10-s0 top1=0.812 (elapsed 14s)'."""
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self) -> None:
            self.count, self.failed, self.t0 = already, 0, time.time()

        def _name(self, trial) -> str:
            return names.get(trial.config["trial_id"], "?")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.count += 1
            r = trial.last_result or {}
            top1 = f" top1={r['top1']:.3f}" if "top1" in r else ""
            _say(f"done {self.count}/{total} {self._name(trial)}{top1} (elapsed {time.time() - self.t0:.0f}s)")

        def on_trial_recover(self, iteration, trials, trial, **info):
            _say(f"retrying {self._name(trial)} after an error")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.failed += 1
            _say(f"FAILED {self._name(trial)} (no retries left; {self.failed} failed so far)")

    return Progress()
