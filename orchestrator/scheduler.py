"""No barrier between shared stages and trials: a trial starts as soon as the stages it needs exist.

Every missing stage is submitted at once as a Ray task whose arguments include the object refs of
the stages it depends on, so Ray runs it when they are built (a failed dependency fails it with the
root cause). Tune asks `ReadyTrials`, a Tune searcher, for the next trial whenever it has room; the
searcher hands out pending trials in grid order, each as soon as all its stages are built, records a
trial whose stage failed as failed (with the stage's traceback) and never launches it. Trials never
wait inside a slot, so stages always find resources once running trials end (docs/design.md §7).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from orchestrator.console import say
from orchestrator.results import SweepStore
from workers.catalogue import STAGES
from workers.config import ArtifactKey, TrialConfig
from workers.graph import requires, stage_deps, stage_uses_accelerator
from workers.naming import trial_name


class StageBuilds:
    """The missing stages of a sweep, building as Ray tasks; readiness and failures polled without blocking."""

    def __init__(
        self, keys: list[ArtifactKey], artifacts_root: str, cpus: float, gpus: float, workers: int = 1
    ) -> None:
        import ray

        @ray.remote(num_cpus=cpus, num_gpus=0, max_retries=2)
        def build_one(kind: str, config_json: str, root: str, *deps: Any) -> float:
            from workers import stages
            from workers.artifacts import ArtifactStore

            stages.build(ArtifactKey(kind, config_json), ArtifactStore(root))
            return time.time()

        # A long run with stage_workers > 1: a task holding nothing launches its Ray Train group, whose workers
        # hold the CPUs and GPUs (orchestrator/distributed.py); retried, it resumes from the stage's checkpoint.
        @ray.remote(num_cpus=0, num_gpus=0, max_retries=2)
        def build_data_parallel(kind: str, config_json: str, root: str, *deps: Any) -> float:
            from orchestrator.distributed import build_data_parallel

            build_data_parallel(ArtifactKey(kind, config_json), root, workers, cpus, gpus)
            return time.time()

        self.t0 = time.time()
        self.refs: dict[ArtifactKey, Any] = {}
        for k in keys:  # grid.stages_for lists dependencies before dependants
            deps = [self.refs[d] for d in stage_deps(k) if d in self.refs]
            # a stage kind may declare its own CPUs (a cache shard decodes on one core); the others get the trial's
            own = STAGES[k.kind].cpus
            if workers > 1 and STAGES[k.kind].data_parallel:
                self.refs[k] = build_data_parallel.remote(k.kind, k.config_json, artifacts_root, *deps)
                continue
            opts = {"num_cpus": cpus if own is None else own, "num_gpus": gpus if stage_uses_accelerator(k) else 0}
            self.refs[k] = build_one.options(**opts).remote(k.kind, k.config_json, artifacts_root, *deps)
        self.built: set[ArtifactKey] = set()
        self.failed: dict[ArtifactKey, tuple[str, str]] = {}  # key -> (message, traceback)
        self._waiting = {ref: k for k, ref in self.refs.items()}
        self._fresh: list[ArtifactKey] = []  # finished since the last drain()
        if keys:
            say(f"building {len(keys)} shared stage(s); trials start as soon as theirs are built")

    def poll(self) -> list[ArtifactKey]:
        """Take note of every stage that finished (built or failed) since the last call; never blocks."""
        import ray

        if not self._waiting:
            return []
        ready, _ = ray.wait(list(self._waiting), num_returns=len(self._waiting), timeout=0)
        finished = []
        for ref in ready:
            key = self._waiting.pop(ref)
            finished.append(key)
            self._fresh.append(key)
            try:
                ray.get(ref)
                self.built.add(key)
            except ray.exceptions.RayError as err:
                root = next((d for d in stage_deps(key) if d in self.failed), None)
                if root is not None:  # a dependency failed: report the root cause, as the user fixes that
                    self.failed[key] = self.failed[root]
                else:
                    cause = err.as_instanceof_cause() if hasattr(err, "as_instanceof_cause") else err
                    message = str(cause).strip().splitlines()[-1]
                    remote = re.sub(r"\x1b\[[0-9;]*m", "", getattr(err, "traceback_str", None) or str(err))
                    self.failed[key] = (
                        f"stage {key} failed: {message}",
                        "Traceback of the Ray task (most recent call last):\n" + remote,
                    )
                    say(f"  {self.failed[key][0]}")
            done = len(self.built) + len(self.failed)
            if done == len(self.refs) or done % 25 == 0:
                say(
                    f"  stages built: {len(self.built)}/{len(self.refs)}"
                    + (f", {len(self.failed)} failed" if self.failed else "")
                    + f" ({time.time() - self.t0:.0f}s)"
                )
        return finished

    def drain(self) -> list[ArtifactKey]:
        """The stages finished since the last drain, whoever polled (the searcher's view of progress)."""
        fresh, self._fresh = self._fresh, []
        return fresh

    def wait(self, poll_s: float = 0.5) -> None:
        """Block until every stage has finished, built or failed."""
        while len(self.built) + len(self.failed) < len(self.refs):
            self.poll()
            time.sleep(poll_s)

    def status(self, key: ArtifactKey) -> str:
        """'built' (or never missing), 'failed' or 'building'."""
        if key not in self.refs or key in self.built:
            return "built"
        return "failed" if key in self.failed else "building"

    def summary(self) -> str:
        return f"stages {len(self.built)}/{len(self.refs)}" if self.refs else ""


def _closure(key: ArtifactKey) -> list[ArtifactKey]:
    return [key] + [k for d in stage_deps(key) for k in _closure(d)]


def ready_trials_searcher(
    pending: list[TrialConfig],
    stages: StageBuilds,
    store: SweepStore,
    on_failed: Callable[[TrialConfig], None] | None = None,
):
    """A Tune searcher over `pending` that suggests a trial once its stages are built (see the module doc).

    Each waiting trial is filed under one stage it still needs; when that stage finishes the trial is
    filed under the next one, or becomes ready (a heap in grid order), or failed: O(trials + stages)."""
    import heapq

    from ray.tune.search import Searcher

    needs = {t.trial_id: [k for r in requires(t) for k in _closure(r) if k in stages.refs] for t in pending}
    ready: list[tuple[int, str]] = []
    waiting: dict[ArtifactKey, list[int]] = {}
    order = list(pending)

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
            heapq.heappush(ready, (i, t.trial_id))

    for i in range(len(order)):
        file(i)

    class ReadyTrials(Searcher):
        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            return True

        def suggest(self, trial_id: str) -> dict | str | None:
            stages.poll()
            for key in stages.drain():
                for i in waiting.pop(key, []):
                    file(i)
            if ready:
                return {"trial_id": heapq.heappop(ready)[1]}
            return Searcher.FINISHED if not waiting else None

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            pass

        def save(self, checkpoint_path: str) -> None:  # the store, not Tune's state, decides what runs
            with open(checkpoint_path, "w") as f:
                json.dump({"ready": len(ready), "waiting": sum(map(len, waiting.values()))}, f)

        def restore(self, checkpoint_path: str) -> None:
            pass

    return ReadyTrials()
