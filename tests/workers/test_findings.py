"""The paper's first two predictions on digits, fixed seeds, safe margins (slow; no Ray needed).

1. Under SL+KD the spread over selectors is far smaller than under HL.
2. Under HL at the smallest IPC, easy samples beat hard ones.
Compute-matched: every trial sees 5 full-dataset-equivalent epochs of images.
"""

from pathlib import Path

import pytest

from orchestrator.grid import expand
from orchestrator.spec import parse_spec
from workers.trial import TrialContext, run_trial

pytestmark = pytest.mark.slow

SWEEP = """
name: findings
dataset: {name: digits}
teacher: {arch: convnet, depth: 2, width: 32, epochs: 20}
student: {arch: convnet, depth: 2, width: 32}
budget: {full_epochs: 5}
grid:
  selector: [random, herding, el2n_easy, el2n, forgetting]
  regime: [hl, sl_kd]
  ipc: [1]
  seed: [0, 1]
selectors: {el2n: {runs: 3, epoch: 10}, el2n_easy: {runs: 3, epoch: 10}, forgetting: {epochs: 20}}
train: {optimizer: adamw, lr: 0.01, weight_decay: 0.0005, batch_size: 64, temperature: 20, kd_min_scale: 0.5}
"""


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("art")
    acc: dict[tuple[str, str], list[float]] = {}
    for t in expand(parse_spec(SWEEP)):
        m = run_trial(t, TrialContext(artifacts_root=Path(root)))
        acc.setdefault((t.selector.name, t.regime), []).append(m["top1"])
    return {k: sum(v) / len(v) for k, v in acc.items()}


def spread(table, regime):
    vals = [v for (s, r), v in table.items() if r == regime]
    return max(vals) - min(vals)


def test_soft_labels_with_kd_compress_the_selector_spread(table):
    hl, kd = spread(table, "hl"), spread(table, "sl_kd")
    assert hl > 0.2, table
    assert kd < 0.5 * hl and kd < 0.1, table


def test_easy_beats_hard_at_the_smallest_ipc_under_hard_labels(table):
    assert table[("el2n_easy", "hl")] > table[("el2n", "hl")] + 0.15, table
