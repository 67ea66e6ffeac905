"""`ddsweep plan --estimate` against a hand computation on a small sweep (issue #12)."""

from __future__ import annotations

import re

from orchestrator import cli
from workers.data.digits import load

SWEEP = """
name: est
dataset: {{name: digits}}
teacher: {{arch: convnet, depth: 2, width: 8, epochs: 3, batch_size: 64}}
student: {{arch: convnet, depth: 2, width: 8}}
budget: {{epochs: 10}}
grid: {{selector: [random, {{name: el2n, runs: 2, epoch: 5}}], regime: [hl, sl], ipc: [2], seed: [0]}}
train: {{eval_points: 4, batch_size: 32, sl: {{kd_backend: online}}}}
storage: {storage}
"""


def numbers(line: str) -> list[int]:
    return [int(x.replace(",", "")) for x in re.findall(r"(\d[\d,]*) images", line)]


def test_the_estimate_matches_a_hand_computation(tmp_path, capsys):
    sweep = tmp_path / "est.yaml"
    sweep.write_text(SWEEP.format(storage=tmp_path / "store"))
    assert cli.main(["plan", str(sweep), "--estimate", "--images-per-second", "1000"]) == 0
    out = {
        line.split()[0] + " " + line.split()[1]: line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("    ") and " images" in line
    }
    s = load(None, 8, 10, 0.2)
    n, test, minival = len(s.train_y), len(s.test_y), 10 * 10
    evals = 4 * (test + minival)
    # teacher: 3 epochs over the train split, then its minival check
    assert numbers(out["stage teacher"]) == [3 * n, minival]
    # EL2N: 2 score runs of 5 epochs, recorded on clean images at init and after each epoch
    assert numbers(out["stage dynamics"]) == [2 * 5 * n, 2 * 6 * n]
    # 4 trials (random and el2n x hl and sl): 10 epochs over 20 images; sl adds one teacher label per image
    assert numbers(out["trials hl"]) == [2 * 10 * 20, 2 * evals]
    assert numbers(out["trials sl"]) == [2 * 10 * 20, 2 * (evals + 20)]
    train = 3 * n + 2 * 5 * n + 4 * 200
    infer = minival + 2 * 6 * n + 4 * evals + 2 * 20
    assert numbers(out["total train"]) == [train, infer]
    assert cli.main(["plan", str(sweep), "--estimate", "--images-per-second", "1000"]) == 0
    text = capsys.readouterr().out
    shown = float(re.search(r"per GPU: ([\d.,]+) GPU-hours", text).group(1))
    assert abs(shown - (train + infer / 3) / 1000 / 3600) < 0.005
