"""EL2N scored at epoch 20 of a 200-epoch schedule (Paul et al.) vs at the end of a 20-epoch schedule (issue #14).

    python benchmarks/make_digits_folder.py /tmp/digits32          # 4,900 train / 1,000 val 32-px images
    python benchmarks/score_schedule.py /tmp/digits32 [STORAGE]
        [--runs 4] [--epoch 20] [--seeds 0 1] [--ipcs 10 50] [--dataset digits]

Prints (1) the learning rate and training fit at the scored epoch under each schedule, (2) Spearman rank
correlations of the EL2N scores: between the two schedules, and within one schedule between disjoint halves
of its runs (the noise floor a schedule difference has to clear), (3) how many of the images EL2N-easy and
EL2N-hard keep are the same under both schedules, and the same count for subsets picked from disjoint halves of
the runs, within the long schedule (the noise floor) and across the schedules, (4) the test and minival top-1 of
students trained on those subsets (hard labels, the `hl` recipe, 5 full-data epochs of compute, mean over seeds).
Everything runs through ddsweep's own stages and trials (no Ray); artifacts go under STORAGE (default a temporary
folder), so a rerun reuses them. `--dataset digits` runs the same study on the embedded 8-px digits.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from orchestrator.grid import expand
from orchestrator.spec import parse_spec
from workers import stages
from workers.artifacts import ArtifactStore
from workers.graph import selector_inputs, subset_key
from workers.naming import selector_label
from workers.schedules import lr_factor
from workers.trial import TrialContext, run_trial

SWEEP = """
name: score-schedule
dataset: {dataset}
student: {student}
budget: {{full_epochs: 5}}
grid:
  selector: [{selectors}]
  regime: [hl]
  ipc: [{ipcs}]
  seed: [{seeds}]
train: {{augment: crop_flip}}   # the hl recipe (SGD 0.01, x0.1 at half, batch 256) with crop+flip views
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", help="an ImageFolder root (benchmarks/make_digits_folder.py)")
    ap.add_argument("storage", nargs="?", default=None)
    ap.add_argument("--dataset", choices=("imagefolder", "digits"), default="imagefolder")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--epoch", type=int, default=20)
    ap.add_argument("--schedule", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--ipcs", type=int, nargs="+", default=[10, 50])
    a = ap.parse_args()
    torch.set_num_threads(1)  # small models: one thread is faster, and CPU results depend on the count
    if a.dataset == "imagefolder":
        dataset = f"{{name: imagefolder, root: {Path(a.root).resolve()}, image_size: 32}}"
        student = "{arch: convnet, depth: 3, width: 32}"
    else:
        dataset, student = "{name: digits}", "{arch: convnet, depth: 2, width: 32}"
    storage = Path(a.storage or tempfile.mkdtemp(prefix="score-schedule-"))
    store = ArtifactStore(storage / "artifacts")
    sched = {"long": a.schedule, "squeezed": "epoch"}
    selectors = [
        f"{{name: {name}, runs: {a.runs}, epoch: {a.epoch}, schedule_epochs: {s}}}"
        for s in sched.values()
        for name in ("el2n_easy", "el2n")
    ]
    text = SWEEP.format(
        dataset=dataset,
        student=student,
        selectors=", ".join(selectors),
        ipcs=", ".join(map(str, a.ipcs)),
        seeds=", ".join(map(str, a.seeds)),
    )
    trials = expand(parse_spec(text))
    print(f"storage {storage}; {len(trials)} student trials; EL2N at epoch {a.epoch}, {a.runs} runs per schedule\n")

    # (1)-(3): the score runs of each schedule
    el2n, fit = {}, {}
    for name, s in sched.items():
        t = next(t for t in trials if t.selector.opts["schedule_epochs"] == s)
        runs = [k for k in selector_inputs(t) if k.kind == "dynamics"]
        for k in runs:
            stages.build(k, store)
        el2n[name] = np.stack([np.load(store.path(k) / "el2n.npy")[a.epoch] for k in runs]).astype(np.float64)
        p_y = np.stack([np.load(store.path(k) / "prob_true.npy")[a.epoch] for k in runs]).astype(np.float64)
        recipe = t.scoring
        length = a.epoch if s == "epoch" else s
        rate = recipe.lr * lr_factor(recipe.schedule, a.epoch - 1, length)  # the rate of the last epoch trained
        fit[name] = (rate, float((p_y > 0.5).mean()), float(p_y.mean()))
    print("## (1) at the scored epoch: learning rate of its last epoch, train images with p_y > 0.5, mean p_y")
    for name, (rate, acc, mean_p) in fit.items():
        where = f"epoch {a.epoch} of {sched[name]}"
        print(f"  {name:<9} ({where}): lr {rate:.4g}, {acc:.3f}, {mean_p:.3f}")

    half = a.runs // 2
    print(f"\n## (2) Spearman rho of EL2N (mean over runs), {len(el2n['long'][0])} train images")
    for name, e in el2n.items():
        rho = spearmanr(e[:half].mean(0), e[half:].mean(0)).statistic
        print(f"  noise floor, {name}: runs 0-{half - 1} vs {half}-{a.runs - 1}: {rho:.3f}")
    cross_half = spearmanr(el2n["long"][:half].mean(0), el2n["squeezed"][half:].mean(0)).statistic
    cross_all = spearmanr(el2n["long"].mean(0), el2n["squeezed"].mean(0)).statistic
    print(f"  long runs 0-{half - 1} vs squeezed runs {half}-{a.runs - 1}: {cross_half:.3f}")
    print(f"  long vs squeezed, all {a.runs} runs each (same run seeds): {cross_all:.3f}")

    # (3) and (4): the subsets and the students trained on them
    results: dict[tuple[str, str, int], list[tuple[float, float, np.ndarray]]] = {}
    ctx = TrialContext(artifacts_root=storage / "artifacts", num_threads=1)
    for t in trials:
        m = run_trial(t, ctx)
        idx = np.load(store.path(subset_key(t)) / "indices.npy")
        which = "long" if t.selector.opts["schedule_epochs"] != "epoch" else "squeezed"
        results.setdefault((t.selector.name, which, t.ipc), []).append((m["top1"], m["minival_top1"], idx))
        print(f"  ran {selector_label(t.selector)} ipc {t.ipc} seed {t.seed}: top1 {m['top1']:.3f}", flush=True)
    print(
        f"\n## (3) images kept by both schedules' subsets (seed {a.seeds[0]}, all {a.runs} runs each); then, from "
        f"halves of the runs, long 0-{half - 1} vs long {half}-{a.runs - 1} (the noise floor) and long "
        f"0-{half - 1} vs squeezed {half}-{a.runs - 1}"
    )
    labels = _train_labels(trials[0])
    for name in ("el2n_easy", "el2n"):
        for ipc in a.ipcs:
            same = len(set(results[name, "long", ipc][0][2]) & set(results[name, "squeezed", ipc][0][2]))
            hard = name == "el2n"
            lo, hi = (_keep(e, labels, ipc, hard) for e in (el2n["long"][:half].mean(0), el2n["long"][half:].mean(0)))
            sq = _keep(el2n["squeezed"][half:].mean(0), labels, ipc, hard)
            print(
                f"  {name:<10} ipc {ipc:>3}: {same} of {ipc * 10}; halves: floor {len(lo & hi)}, "
                f"across schedules {len(lo & sq)}"
            )
    print(f"\n## (4) students: mean test top-1 % (minival) over seeds {a.seeds}")
    for name in ("el2n_easy", "el2n"):
        for ipc in a.ipcs:
            cells = []
            for which in ("long", "squeezed"):
                test, minival = (100 * np.mean([x[k] for x in results[name, which, ipc]]) for k in (0, 1))
                cells.append(f"{which} {test:5.1f} ({minival:5.1f})")
            print(f"  {name:<10} ipc {ipc:>3}: " + "   ".join(cells))


def _train_labels(trial) -> np.ndarray:
    from workers.data import load_splits

    return load_splits(trial.dataset).train_y


def _keep(scores: np.ndarray, labels: np.ndarray, ipc: int, hardest: bool) -> set[int]:
    """Per class the ipc highest (hardest) or lowest EL2N, ties by position (a helper for the noise floor)."""
    out: set[int] = set()
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        order = np.argsort(-scores[idx] if hardest else scores[idx], kind="stable")
        out |= set(idx[order[:ipc]].tolist())
    return out


if __name__ == "__main__":
    main()
