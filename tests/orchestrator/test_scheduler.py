"""The sweep searcher: one queue over stages and trials in critical-path order, driven here as Tune drives it
(suggest when there is room, on_trial_complete when an item ends) without a cluster."""

from __future__ import annotations

import pytest

from orchestrator.driver import make_plan
from orchestrator.scheduler import StageGraph, build_stage, critical_paths, is_stage, stage_trial_id, sweep_searcher
from orchestrator.spec import parse_spec
from workers.artifacts import ArtifactStore
from workers.graph import requires, stage_deps

FINISHED = "FINISHED"


def spec_for(tmp_path, selectors: str, seeds: str = "[0]", extra: str = ""):
    return parse_spec(f"""
name: q
storage: {tmp_path}
dataset: {{name: digits}}
student: {{arch: convnet, depth: 2, width: 8}}
budget: {{epochs: 2}}
grid: {{selector: {selectors}, regime: [hl], ipc: [1], seed: {seeds}}}
selectors: {{el2n_easy: {{runs: 2, epoch: 3}}}}
{extra}
""")


class Driver:
    """Plays Tune: asks for items, ends them in the order a test says."""

    def __init__(self, spec, max_concurrent=None):
        self.plan = make_plan(spec)
        self.store = spec.store()
        self.graph = StageGraph(self.plan.stages_missing)
        self.failed_trials = []
        self.searcher = sweep_searcher(
            self.plan.pending,
            self.graph,
            self.store,
            on_failed=self.failed_trials.append,
            max_concurrent=max_concurrent,
        )
        self.n = 0
        self.running: dict[str, dict] = {}

    def ask(self):
        self.n += 1
        tune_id = f"t{self.n}"
        out = self.searcher.suggest(tune_id)
        if isinstance(out, dict):
            self.running[tune_id] = out
        return out

    def end(self, config: dict, result: dict | None = None, error: bool = False) -> None:
        tune_id = next(k for k, v in self.running.items() if v is config)
        del self.running[tune_id]
        if result is None and not error:
            result = {"stage_built": 1} if is_stage(config) else {"ddsweep_done": 1}
        self.searcher.on_trial_complete(tune_id, result=result, error=error)


def kind(item) -> str:
    return item["stage_kind"] if is_stage(item) else "trial"


def test_long_score_runs_go_first_and_a_trial_starts_as_soon_as_its_stages_exist(tmp_path):
    d = Driver(spec_for(tmp_path, "[random, el2n_easy]"))
    assert sorted(k.kind for k in d.plan.stages_missing) == ["dynamics", "dynamics", "subset", "subset"]
    first = [d.ask() for _ in range(3)]
    # the two EL2N score runs carry the longest path (runs, then a subset, then a trial); random's subset next
    assert [kind(x) for x in first] == ["dynamics", "dynamics", "subset"]
    assert d.ask() is None  # el2n's subset needs both runs; no trial has its stages yet
    d.end(first[2])  # random's subset built: its trial is ready while both score runs still train
    trial = d.ask()
    assert trial == {"trial_id": d.plan.pending[0].trial_id} and d.plan.pending[0].selector.name == "random"
    d.end(first[0])
    assert d.ask() is None  # one run of two: el2n's subset still waits
    d.end(first[1])
    el2n_subset = d.ask()
    assert kind(el2n_subset) == "subset" and '"el2n_easy"' in el2n_subset["stage_config"]
    assert d.ask() is None
    d.end(el2n_subset)
    last = d.ask()
    assert last["trial_id"] == d.plan.pending[1].trial_id
    assert d.ask() == FINISHED  # everything handed out; Tune stops asking
    assert d.graph.built == set(d.plan.stages_missing)


def test_max_concurrent_bounds_trials_not_stages(tmp_path):
    d = Driver(spec_for(tmp_path, "[random, el2n_easy]", seeds="[0, 1, 2]"), max_concurrent=1)
    items = [d.ask() for _ in range(5)]  # 2 runs, then the 3 random subsets (one per seed)
    assert [kind(x) for x in items] == ["dynamics", "dynamics", "subset", "subset", "subset"]
    for x in items[2:]:
        d.end(x)
    t1 = d.ask()
    assert kind(t1) == "trial"
    assert d.ask() is None  # two more random trials are ready, but one runs already
    d.end(t1)
    assert kind(d.ask()) == "trial"


def test_a_failed_stage_fails_what_needs_it_with_its_traceback_and_nothing_of_it_launches(tmp_path):
    spec = spec_for(tmp_path, "[random, el2n_easy]")
    d = Driver(spec)
    runs = [d.ask(), d.ask()]
    random_subset = d.ask()
    d.end(runs[0], {"stage_built": 0, "stage_error": "stage X failed: boom", "stage_traceback": "Traceback: tb"})
    el2n = [t for t in d.plan.pending if t.selector.name == "el2n_easy"]
    assert [t.trial_id for t in d.failed_trials] == [el2n[0].trial_id]
    record = d.store.failures()[el2n[0].trial_id]
    assert record["error"] == "stage X failed: boom" and record["traceback"] == "Traceback: tb"
    el2n_subset = next(k for k in d.plan.stages_missing if k.kind == "subset" and "el2n" in k.config_json)
    assert d.graph.status(el2n_subset) == "failed"  # the dependant fails with the root cause
    d.end(runs[1])  # the other run still finishes and is kept
    d.end(random_subset)
    assert kind(d.ask()) == "trial"
    assert d.ask() == FINISHED  # el2n's subset is never handed out


def test_a_stage_trial_lost_with_no_retries_left_fails_its_trials(tmp_path):
    d = Driver(spec_for(tmp_path, "[random]"))
    subset = d.ask()
    d.end(subset, error=True)
    assert len(d.failed_trials) == 1
    assert stage_trial_id(next(iter(d.graph.failed))) in d.store.failures()[d.failed_trials[0].trial_id]["error"]
    assert d.ask() == FINISHED


def test_a_stage_stopped_before_it_ended_is_offered_again(tmp_path):
    d = Driver(spec_for(tmp_path, "[random]"))
    subset = d.ask()
    tune_id = next(iter(d.running))
    d.searcher.on_trial_complete(tune_id)  # Tune removed it while pending: no result, no error
    again = d.ask()
    assert again["stage_config"] == subset["stage_config"] and d.graph.failed == {}


def brute_force_path(item, plan, graph) -> float:
    """The longest chain of work from `item` to the end of a trial, by enumerating every chain."""
    from workers.cost import stage_cost, trial_cost

    if not hasattr(item, "kind"):
        return trial_cost(item).train_equivalent + 1
    own = stage_cost(item).train_equivalent + 1
    after = [brute_force_path(d, plan, graph) for d in graph.keys if item in stage_deps(d)]

    def needs(t, key) -> bool:
        todo = list(requires(t))
        while todo:
            k = todo.pop()
            if k == key:
                return True
            todo.extend(stage_deps(k))
        return False

    after += [brute_force_path(t, plan, graph) for t in plan.pending if needs(t, item)]
    return own + max(after, default=0.0)


def test_critical_paths_match_every_chain_enumerated(tmp_path):
    spec = spec_for(
        tmp_path,
        "[random, el2n_easy, herding, rded]",
        extra="teacher: {arch: convnet, depth: 2, width: 8, epochs: 2, min_top1_factor: 1}",
    )
    plan = make_plan(spec)
    graph = StageGraph(plan.stages_missing)
    assert {"teacher", "features", "features_part", "dynamics", "subset"} <= {k.kind for k in graph.keys}
    from orchestrator.scheduler import _closure

    needs = {t.trial_id: [k for r in requires(t) for k in _closure(r) if k in graph.missing] for t in plan.pending}
    path = critical_paths(plan.pending, graph, needs)
    for item in [*graph.keys, *plan.pending]:
        key = item if hasattr(item, "kind") else item.trial_id
        assert path[key] == pytest.approx(brute_force_path(item, plan, graph)), item
    teacher = next(k for k in graph.keys if k.kind == "teacher")
    assert path[teacher] > max(path[t.trial_id] for t in plan.pending)  # what everything waits on goes first


def test_a_stage_trial_builds_its_artifact_or_reports_its_error_with_the_traceback(tmp_path):
    spec = spec_for(tmp_path, "[random]")
    key = make_plan(spec).stages_missing[0]
    root = str(tmp_path / "artifacts")
    config = {"trial_id": stage_trial_id(key), "stage_kind": key.kind, "stage_config": key.config_json}
    assert build_stage(config, root) == {"stage_built": 1}
    assert ArtifactStore(root).missing([key]) == []
    broken = dict(config, stage_config=key.config_json.replace('"random"', '"no_such_selector"'))
    out = build_stage(broken, root)
    assert out["stage_built"] == 0 and out["stage_error"].startswith("stage subset:")
    assert "no_such_selector" in out["stage_error"]
    assert "Traceback" in out["stage_traceback"] and "stages.py" in out["stage_traceback"]
