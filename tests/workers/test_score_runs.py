"""Score runs as the methods' authors ran them (docs/methods.md §4, §4.4; issue #14).

Real score runs on digits through the stage mechanism: a run scored early in a long schedule is the prefix of
that long run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from orchestrator.grid import expand
from orchestrator.spec import SpecError, parse_spec
from workers import stages
from workers.artifacts import ArtifactStore
from workers.config import TrialConfig, canonical_json
from workers.graph import selector_inputs, subset_key

SPEC = """
name: runs
dataset: {{name: digits}}
student: {{arch: convnet, depth: 2, width: 8}}
budget: {{full_epochs: 2}}
grid: {{selector: [{selectors}], regime: [hl], ipc: [2], seed: [0, 1]}}
train: {{batch_size: 128, augment: crop}}
"""


def trials(*selectors: str) -> list[TrialConfig]:
    return expand(parse_spec(SPEC.format(selectors=", ".join(selectors))))


def runs_of(trial: TrialConfig):
    return [k for k in selector_inputs(trial) if k.kind == "dynamics"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ArtifactStore(tmp_path_factory.mktemp("runs") / "artifacts")


def arrays(store: ArtifactStore, key, name: str) -> np.ndarray:
    stages.build(key, store)
    return np.load(store.path(key) / f"{name}.npy")


# ------------------------------------------------------------------ EL2N/GraNd: scored early in a long schedule (§4.4)
def test_el2n_runs_span_the_long_schedule_and_keep_plain_keys_otherwise():
    default, old, grand = (
        t
        for t in trials(
            "{name: el2n, runs: 1}", "{name: el2n, runs: 1, schedule_epochs: epoch}", "{name: grand, runs: 1}"
        )
        if t.seed == 0
    )
    (run,) = runs_of(default)
    assert run.cfg["epochs"] == 20 and run.cfg["schedule_epochs"] == 200  # Paul et al.: epoch 20 of 200
    (plain,) = runs_of(old)
    assert "schedule_epochs" not in plain.cfg and plain.cfg["epochs"] == 20  # the key from before the option
    (at_init,) = runs_of(grand)
    assert "schedule_epochs" not in at_init.cfg and at_init.cfg["epochs"] == 0  # nothing trains: no schedule


def test_a_run_scored_early_is_the_prefix_of_the_long_run(store):
    """Paul et al. score checkpoints of a normal-length run: the 3-epoch run of a 6-epoch schedule must equal the
    first 3 epochs of the 6-epoch run (hl recipe: SGD, x0.1 at half), and differ from a 3-epoch schedule."""
    early, long_run, squeezed = (
        runs_of(t)[0]
        for t in trials(
            "{name: el2n, runs: 1, epoch: 3, schedule_epochs: 6}",
            "{name: forgetting, epochs: 6}",
            "{name: el2n, runs: 1, epoch: 3, schedule_epochs: epoch}",
        )
        if t.seed == 0
    )
    a, b, c = (arrays(store, k, "el2n") for k in (early, long_run, squeezed))
    assert a.shape == (4, 1338) and b.shape == (7, 1338)
    np.testing.assert_array_equal(a, b[:4])
    np.testing.assert_array_equal(c[:2], b[:2])  # both at the full rate until the squeezed schedule drops at 1.5
    assert np.abs(c[3].astype(np.float64) - b[3]).mean() > 1e-3


def test_a_schedule_shorter_than_the_scored_epoch_is_refused():
    with pytest.raises(SpecError, match="schedule_epochs = 5 is shorter than the scored epoch 20"):
        trials("{name: el2n_easy, schedule_epochs: 5}")
    with pytest.raises(SpecError, match="not a number of epochs"):
        trials("{name: el2n_easy, schedule_epochs: long}")


def test_a_row_from_before_an_option_runs_its_neutral_value_under_its_old_id():
    """An old row's config lacks schedule_epochs: it ran the squeezed schedule, so it reads back as `epoch`."""
    old = next(t for t in trials("{name: el2n, schedule_epochs: epoch}") if t.seed == 0)
    row = json.loads(canonical_json(old.to_json()))
    del row["selector"]["options"]["schedule_epochs"]
    back = TrialConfig.from_json(row)
    assert back.selector.opts["schedule_epochs"] == "epoch" and back.trial_id == old.trial_id
    assert subset_key(back) == subset_key(old)
