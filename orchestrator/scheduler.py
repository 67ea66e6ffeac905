"""No barrier between shared stages and trials, and one queue that decides what runs next.

A sweep's missing stages and its pending trials are one dependency graph: a stage needs the stages it is
built from, a trial needs the stages it reads. Tune runs both. `sweep_searcher` is the Tune searcher that
hands out the next item whenever Tune has room: among the stages whose dependencies are built and the
trials whose stages are built, the one with the longest estimated path of work still behind it
(workers/cost.py; critical-path list scheduling). So a long score run that many trials wait for starts
before a quick trial, a quick trial starts before a stage that only a few cheap trials need, and a trial
starts as soon as its own stages exist and nothing longer is ready. Nothing waits inside a slot: an item
is handed out only once all it needs is built. A failed stage fails every stage and trial that needs it,
with its traceback, and those are never launched (docs/design.md §7).

Running stages as Tune trials (not as Ray tasks beside Tune) keeps one scheduler in charge of the
cluster: Ray hands freed resources to queued tasks before Tune's placement groups, and Tune keeps an idle
cached trial actor while it waits for the searcher, so tasks queued beside Tune delayed every ready trial
until the last stage had started, and could wait forever on resources an idle actor held (docs/ray.md §8).

`StageBuilds` builds stages as plain Ray tasks where no trial competes (`ddsweep check-teacher`).
"""

from __future__ import annotations

import heapq
import json
import re
import time
import traceback
from collections.abc import Callable
from typing import Any

from orchestrator.console import say
from orchestrator.results import SweepStore
from workers.catalogue import STAGES
from workers.config import ArtifactKey, TrialConfig
from workers.graph import requires, stage_deps, stage_uses_accelerator
from workers.naming import trial_name

STAGE_PREFIX = "stage-"  # the Tune trial name of a stage: stage-<kind>-<digest prefix>


class StageGraph:
    """The missing stages of a sweep and what became of each: built, failed (with the root cause), or not yet.

    A failed stage fails its missing dependants with the same cause, as the user fixes the root."""

    def __init__(self, keys: list[ArtifactKey]) -> None:
        self.keys = list(keys)  # dependencies before dependants (grid.stages_for)
        self.missing = set(self.keys)
        self.dependants: dict[ArtifactKey, list[ArtifactKey]] = {k: [] for k in self.keys}
        for k in self.keys:
            for d in stage_deps(k):
                if d in self.missing:
                    self.dependants[d].append(k)
        self.t0 = time.time()
        self.built: set[ArtifactKey] = set()
        self.failed: dict[ArtifactKey, tuple[str, str]] = {}  # key -> (message, traceback)
        self._fresh: list[ArtifactKey] = []  # finished since the last drain()

    def finish(self, key: ArtifactKey, error: tuple[str, str] | None = None) -> None:
        """Record that `key` was built (error None) or failed; its missing dependants fail with the same cause."""
        if key in self.built or key in self.failed:
            return
        self._fresh.append(key)
        if error is None:
            self.built.add(key)
        else:
            self.failed[key] = error
            say(f"  {error[0]}")
            todo = list(self.dependants[key])
            while todo:
                d = todo.pop()
                if d not in self.built and d not in self.failed:
                    self.failed[d] = error
                    self._fresh.append(d)
                    todo.extend(self.dependants[d])
        done = len(self.built) + len(self.failed)
        if done == len(self.keys) or done % 25 == 0 or error is not None:
            say(
                f"  stages built: {len(self.built)}/{len(self.keys)}"
                + (f", {len(self.failed)} failed" if self.failed else "")
                + f" ({time.time() - self.t0:.0f}s)"
            )

    def drain(self) -> list[ArtifactKey]:
        """The stages finished (built or failed) since the last drain."""
        fresh, self._fresh = self._fresh, []
        return fresh

    def status(self, key: ArtifactKey) -> str:
        """'built' (or never missing), 'failed' or 'building' (not finished, whether started or not)."""
        if key not in self.missing or key in self.built:
            return "built"
        return "failed" if key in self.failed else "building"

    def unfinished(self) -> int:
        return len(self.keys) - len(self.built) - len(self.failed)

    def summary(self) -> str:
        return f"stages {len(self.built)}/{len(self.keys)}" if self.keys else ""


class StageBuilds(StageGraph):
    """Every missing stage submitted at once as a Ray task whose arguments are the object refs of the stages it
    depends on, so Ray runs it once they are built; readiness and failures polled without blocking. For
    builds no trial competes with (`ddsweep check-teacher` builds its data cache)."""

    def __init__(self, keys: list[ArtifactKey], artifacts_root: str, cpus: float, gpus: float) -> None:
        import ray

        super().__init__(keys)

        @ray.remote(max_retries=2)
        def build_one(kind: str, config_json: str, root: str, *deps: Any) -> float:
            from workers import stages
            from workers.artifacts import ArtifactStore

            stages.build(ArtifactKey(kind, config_json), ArtifactStore(root))
            return time.time()

        self.refs: dict[ArtifactKey, Any] = {}
        for k in self.keys:
            deps = [self.refs[d] for d in stage_deps(k) if d in self.refs]
            opts = stage_resources(k, cpus, gpus)
            self.refs[k] = build_one.options(num_cpus=opts["cpu"], num_gpus=opts["gpu"]).remote(
                k.kind, k.config_json, artifacts_root, *deps
            )
        self._waiting = {ref: k for k, ref in self.refs.items()}

    def poll(self) -> None:
        """Take note of every stage that finished (built or failed) since the last call; never blocks."""
        import ray

        if not self._waiting:
            return
        ready, _ = ray.wait(list(self._waiting), num_returns=len(self._waiting), timeout=0)
        for ref in ready:
            key = self._waiting.pop(ref)
            try:
                ray.get(ref)
                self.finish(key)
            except ray.exceptions.RayError as err:
                if key in self.failed:  # a dependency failed first: its cause is the one the user fixes
                    continue
                cause = err.as_instanceof_cause() if hasattr(err, "as_instanceof_cause") else err
                message = str(cause).strip().splitlines()[-1]
                remote = re.sub(r"\x1b\[[0-9;]*m", "", getattr(err, "traceback_str", None) or str(err))
                self.finish(
                    key,
                    (f"stage {key} failed: {message}", "Traceback of the Ray task (most recent call last):\n" + remote),
                )

    def wait(self, poll_s: float = 0.5) -> None:
        """Block until every stage has finished, built or failed."""
        while self.unfinished():
            self.poll()
            time.sleep(poll_s)


def stage_resources(key: ArtifactKey, cpus: float, gpus: float) -> dict[str, float]:
    """What one stage holds: the trial's CPUs unless its kind declares its own (a cache shard decodes on one
    core), and the trial's GPUs when it runs a network."""
    own = STAGES[key.kind].cpus
    return {"cpu": cpus if own is None else own, "gpu": gpus if stage_uses_accelerator(key) else 0}


def stage_trial_id(key: ArtifactKey) -> str:
    return f"{STAGE_PREFIX}{key.kind}-{key.digest[:16]}"


def is_stage(config: dict) -> bool:
    return "stage_kind" in config


def build_stage(config: dict, artifacts_root: str, data_parallel: dict | None = None, num_threads: int = 1) -> dict:
    """Build the stage a stage trial's `config` names (inside a Tune trial); returns what the trial reports:
    `stage_built` 1, or 0 with the error and its traceback. An error in the builder is not retried (it would
    fail again); a lost worker is, by Tune (resources.max_failures). Torch gets `num_threads` (the trial's),
    or the CPUs the stage kind declares."""
    key = ArtifactKey(config["stage_kind"], config["stage_config"])
    try:
        dp = data_parallel or {}
        if dp.get("workers", 1) > 1 and STAGES[key.kind].data_parallel:
            from orchestrator.distributed import build_data_parallel

            build_data_parallel(key, artifacts_root, dp["workers"], dp["cpus"], dp["gpus"])
        else:
            import torch

            from workers import stages
            from workers.artifacts import ArtifactStore

            own = STAGES[key.kind].cpus
            torch.set_num_threads(num_threads if own is None else max(1, int(own)))
            stages.build(key, ArtifactStore(artifacts_root))
    except Exception as err:
        message = "".join(traceback.format_exception_only(err)).strip().splitlines()[-1]
        return {
            "stage_built": 0,
            "stage_error": f"stage {key} failed: {message}",
            "stage_traceback": "Traceback of the stage (most recent call last):\n" + traceback.format_exc(),
        }
    return {"stage_built": 1}


def sweep_searcher(
    pending: list[TrialConfig],
    stages: StageGraph,
    store: SweepStore,
    on_failed: Callable[[TrialConfig], None] | None = None,
    max_concurrent: int | None = None,
):
    """The Tune searcher over `pending` trials and the stages in `stages` not started yet (see the module doc).

    Each waiting trial is filed under one stage it still needs; when that stage finishes the trial is filed
    under the next one, or becomes ready, or failed (recorded, never launched): O(trials + stages) filing.
    Ready items sit in two heaps ordered by their path of work (`critical_paths`), ties in grid order.
    `max_concurrent` bounds the trials running at once, not the stages."""
    from ray.tune.search import Searcher

    needs = {t.trial_id: [k for r in requires(t) for k in _closure(r) if k in stages.missing] for t in pending}
    path = critical_paths(pending, stages, needs)
    ready: list[tuple[float, int, str]] = []  # (-path, grid index, trial id)
    ready_stages: list[tuple[float, int, ArtifactKey]] = []
    waiting: dict[ArtifactKey, list[int]] = {}
    order = list(pending)
    index = {k: j for j, k in enumerate(stages.keys)}
    queued: set[ArtifactKey] = set()
    handed: dict[str, ArtifactKey | str] = {}  # Tune's trial id -> what it runs
    live = [0]  # trials handed out and not finished

    def file(i: int) -> None:
        t = order[i]
        states = [(stages.status(k), k) for k in needs[t.trial_id]]
        failed = [k for s, k in states if s == "failed"]
        building = [k for s, k in states if s == "building"]
        if failed:
            message, tb = stages.failed[failed[0]]
            store.record_failure(t.trial_id, trial_name(t), 0, message, tb)
            if on_failed is not None:
                on_failed(t)
        elif building:
            waiting.setdefault(building[0], []).append(i)
        else:
            heapq.heappush(ready, (-path[t.trial_id], i, t.trial_id))

    def offer(k: ArtifactKey) -> None:
        """Queue stage `k` once every stage it needs is built (once: a queued stage stays queued or runs)."""
        if k in queued or stages.status(k) != "building":
            return
        if all(stages.status(d) == "built" for d in stage_deps(k)):
            queued.add(k)
            heapq.heappush(ready_stages, (-path[k], index[k], k))

    def refresh() -> None:
        for key in stages.drain():
            for i in waiting.pop(key, []):
                file(i)
            if key in stages.built:
                for d in stages.dependants[key]:
                    offer(d)

    for i in range(len(order)):
        file(i)
    for k in stages.keys:
        offer(k)

    class SweepSearcher(Searcher):
        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            return True

        def suggest(self, trial_id: str) -> dict | str | None:
            refresh()
            trial_room = max_concurrent is None or live[0] < max_concurrent
            take_trial = ready and trial_room and (not ready_stages or ready[0][0] <= ready_stages[0][0])
            if take_trial:
                live[0] += 1
                tid = heapq.heappop(ready)[2]
                handed[trial_id] = tid
                return {"trial_id": tid}
            if ready_stages:
                k = heapq.heappop(ready_stages)[2]
                handed[trial_id] = k
                return {"trial_id": stage_trial_id(k), "stage_kind": k.kind, "stage_config": k.config_json}
            return Searcher.FINISHED if not ready and not waiting else None

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            item = handed.pop(trial_id, None)
            if isinstance(item, str):
                live[0] -= 1
            elif item is not None:
                if result and result.get("stage_built") == 1:
                    stages.finish(item)
                elif result and "stage_error" in result:
                    stages.finish(item, (result["stage_error"], result["stage_traceback"]))
                elif error:
                    stages.finish(
                        item,
                        (
                            f"stage {item} failed: its Tune trial {stage_trial_id(item)} errored with no retries "
                            "left (a lost worker or node; see Ray's output)",
                            "",
                        ),
                    )
                else:  # stopped before it ran to its end: not built, not failed; offered again
                    queued.discard(item)
                    offer(item)
            refresh()

        def save(self, checkpoint_path: str) -> None:  # the store, not Tune's state, decides what runs
            with open(checkpoint_path, "w") as f:
                json.dump({"ready": len(ready), "waiting": sum(map(len, waiting.values()))}, f)

        def restore(self, checkpoint_path: str) -> None:
            pass

    return SweepSearcher()


def critical_paths(
    pending: list[TrialConfig], stages: StageGraph, needs: dict[str, list[ArtifactKey]]
) -> dict[Any, float]:
    """Per trial id and per stage key: the estimated work (train-equivalent images, workers/cost.py) on the
    longest chain from it to the end of a trial that needs it, itself included (+1 so that free items still
    order by what follows them)."""
    from workers.cost import stage_cost, trial_cost

    path: dict[Any, float] = {t.trial_id: trial_cost(t).train_equivalent + 1 for t in pending}
    tail = {k: 0.0 for k in stages.keys}  # the longest path behind each stage
    for t in pending:
        for k in needs[t.trial_id]:
            tail[k] = max(tail[k], path[t.trial_id])
    for k in reversed(stages.keys):  # dependants before their dependencies
        path[k] = stage_cost(k).train_equivalent + 1 + max([tail[k], *(path[d] for d in stages.dependants[k])])
    return path


def _closure(key: ArtifactKey) -> list[ArtifactKey]:
    return [key] + [k for d in stage_deps(key) for k in _closure(d)]
