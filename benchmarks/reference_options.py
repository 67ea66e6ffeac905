"""Before/after figures for issue #14 items 2 and 3 on digits: how much each selector's subset changes between the
option value ddsweep used before the issue and the reference code's behaviour (the new default).

    python benchmarks/reference_options.py [STORAGE] [--ipcs 10 20] [--seeds 0 1]

Setup: the teacher, student and recipe of sweeps/digits_scalability.yaml (ConvNet-D2 width 32, BatchNorm teacher
of 30 epochs, 30-epoch score runs). Every subset is built by ddsweep's own subset stage (its score runs and
teacher features through the stage graph, cached under STORAGE, default a temporary folder). It prints:

(item 2) D2-Pruning. For every per-class call of the graph selection, the picks of a dense restatement of the
reference's GraphDensitySampler (adymaharana/d2pruning `core/data/sampling.py`, graph_mode 'sum', weighted:
both directions of every kNN edge, neighbour scores floored at 1e-7, argmax first on ties) on exactly the
candidates and difficulty ddsweep passed in, and how many ddsweep's picks share with it: under the old options
(`graph: one_way, difficulty: el2n, hard_drop: 0`) and the new defaults (`two_way, forgetting, 0.4`), and each
graph under the other's inputs. Then the overlap of the old and new default subsets.

(item 3) The subsets of `dyn_unc` (K - J windows, default) vs `dyn_unc {last_window: true}` (K - J + 1, before),
and of `ccs` (`aum_source: train_batches`, default) vs `ccs {aum_source: eval}` (before), beside each one's
overlap across trial seeds 0 and 1 (CCS samples inside its strata with the seed: the floor an option change has
to clear); and, on the score run of `ccs`, the Spearman correlation of AUM from the two sources over the train
split and how many of the hardest 30% (CCS's default `hard_drop`, per class) both sources drop. One thread; under
a minute on a laptop CPU.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from orchestrator.grid import expand
from orchestrator.spec import parse_spec
from workers import stages
from workers.artifacts import ArtifactStore
from workers.data import load_splits
from workers.graph import stage_deps, subset_key
from workers.naming import selector_label
from workers.scores import dynamics as dyn
from workers.selectors import algorithms as alg

SWEEP = """
name: reference-options
dataset: {{name: digits}}
teacher: {{arch: convnet, depth: 2, width: 32, norm: batch, epochs: 30}}
student: {{arch: convnet, depth: 2, width: 32}}
budget: {{full_epochs: 10}}
grid: {{selector: [{selectors}], regime: [hl], ipc: [{ipcs}], seed: [{seeds}]}}
train: {{optimizer: adamw, lr: 0.01, weight_decay: 0.0005, batch_size: 64, schedule: cosine, augment: crop}}
"""
D2_OLD = "{name: d2, graph: one_way, difficulty: el2n, hard_drop: 0.0}"
D2_NEW = "d2"
DYN_OLD, DYN_NEW = "{name: dyn_unc, last_window: true}", "dyn_unc"
CCS_OLD, CCS_NEW = "{name: ccs, aum_source: eval}", "ccs"


def d2_reference(x: np.ndarray, s: np.ndarray, ipc: int, k: int = 5, gamma: float = 0.1) -> list[int]:
    """GraphDensitySampler restated densely (the same restatement as tests/workers/test_selector_algorithms.py):
    kNN (self excluded); for every kNN edge (i, j) connect[i, j] = exp(-d_ij)·max(s_j, 1e-7) and connect[j, i] =
    exp(-d_ij)·max(s_i, 1e-7); density = row sums + s. Then ipc times: the argmax (first on ties), its neighbours
    (connect[i] > 0) lose exp(-gamma·d)·density_i, and every pick is set to min(density) - 1."""
    x = x.astype(np.float64)
    d = np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0.0))
    n = len(x)
    off = d + np.diag(np.full(n, np.inf))
    connect = np.zeros((n, n))
    for i in range(n):
        for j in np.lexsort((np.arange(n), off[i]))[:k]:
            connect[i, j] = math.exp(-d[i, j]) * max(s[j], 1e-7)
            connect[j, i] = math.exp(-d[i, j]) * max(s[i], 1e-7)
    density = connect.sum(axis=1) + s
    batch: list[int] = []
    while len(batch) < ipc:
        i = int(np.argmax(density))
        nbrs = np.flatnonzero(connect[i] > 0)
        density[nbrs] -= np.exp(-d[i, nbrs] * gamma) * density[i]
        batch.append(i)
        density[batch] = density.min() - 1
    return batch


def build_fresh(key, store: ArtifactStore, out: Path) -> np.ndarray:
    """Run the subset stage itself (not its cached artifact), so the patched graph selection sees every call."""
    for dep in stage_deps(key):
        stages.build(dep, store)
    out.mkdir(parents=True, exist_ok=True)
    stages.build_subset(key, store, out)
    return np.load(out / "indices.npy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("storage", nargs="?", default=None)
    ap.add_argument("--ipcs", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    a = ap.parse_args()
    torch.set_num_threads(1)
    storage = Path(a.storage or tempfile.mkdtemp(prefix="reference-options-"))
    store = ArtifactStore(storage / "artifacts")
    sels = [D2_OLD, D2_NEW, DYN_OLD, DYN_NEW, CCS_OLD, CCS_NEW]
    text = SWEEP.format(selectors=", ".join(sels), ipcs=", ".join(map(str, a.ipcs)), seeds=", ".join(map(str, a.seeds)))
    spec = parse_spec(text)
    trials = expand(spec)
    labels = {s: selector_label(named) for s, named in zip(sels, spec.selectors)}
    print(f"storage {storage}; digits, IPCs {a.ipcs}, seeds {a.seeds}")

    calls: list[tuple[np.ndarray, np.ndarray, int, dict, np.ndarray]] = []
    real_d2 = alg.d2

    def recording_d2(x, s, ipc, **kw):
        got = real_d2(x, s, ipc, **kw)
        calls.append((np.array(x), np.array(s, dtype=np.float64), ipc, kw, np.asarray(got)))
        return got

    subsets: dict[tuple[str, int, int], np.ndarray] = {}
    d2_calls: dict[tuple[str, int, int], list] = {}
    alg.d2 = recording_d2
    try:
        for t in trials:
            label = selector_label(t.selector)
            calls.clear()
            key = subset_key(t)
            subsets[label, t.ipc, t.seed] = build_fresh(key, store, storage / "fresh" / key.digest)
            d2_calls[label, t.ipc, t.seed] = list(calls)
    finally:
        alg.d2 = real_d2

    def overlap(x: str, y: str, ipc: int, sx: int, sy: int) -> int:
        return len(set(subsets[labels[x], ipc, sx]) & set(subsets[labels[y], ipc, sy]))

    s0 = a.seeds[0]
    print(
        "\n## item 2: D2 picks shared with the dense reference GraphDensitySampler on the same inputs (seed "
        f"{s0}; summed over classes)"
    )
    for ipc in a.ipcs:
        for name, sel in (("before (one_way, el2n, no drop)", D2_OLD), ("after  (two_way, forgetting, 0.4)", D2_NEW)):
            same = swapped = 0
            for x, s, k_ipc, kw, got in d2_calls[labels[sel], ipc, s0]:
                ref = set(d2_reference(x, s, k_ipc, kw["k"], kw["gamma_r"]))
                same += len(ref & set(got.tolist()))
                other = real_d2(x, s, k_ipc, **{**kw, "two_way": not kw["two_way"]})
                swapped += len(ref & set(np.asarray(other).tolist()))
            total = ipc * 10
            print(f"  ipc {ipc:>3} {name}: {same} of {total}; the other graph on these inputs: {swapped} of {total}")
        print(f"  ipc {ipc:>3} old vs new default subsets: {overlap(D2_OLD, D2_NEW, ipc, s0, s0)} of {ipc * 10}")

    print("\n## item 3: subset overlap, old option vs new default (same seed), and across seeds for each")
    for what, old, new in (
        ("dyn_unc windows K-J+1 -> K-J", DYN_OLD, DYN_NEW),
        ("ccs AUM eval -> train_batches", CCS_OLD, CCS_NEW),
    ):
        for ipc in a.ipcs:
            line = f"  {what:<31} ipc {ipc:>3}: old vs new {overlap(old, new, ipc, s0, s0)} of {ipc * 10}"
            if len(a.seeds) > 1:
                s1 = a.seeds[1]
                line += (
                    f"; seeds {s0} vs {s1}: old {overlap(old, old, ipc, s0, s1)}, new {overlap(new, new, ipc, s0, s1)}"
                )
            print(line)

    ccs_trial = next(t for t in trials if selector_label(t.selector) == labels[CCS_NEW])
    (run,) = [k for k in stage_deps(subset_key(ccs_trial)) if k.kind == "dynamics"]
    train_aum = dyn.aum(np.load(store.path(run) / "train_margin.npy").astype(np.float64))
    eval_aum = dyn.aum(np.load(store.path(run) / "margin.npy")[1:].astype(np.float64))
    rho = spearmanr(train_aum, eval_aum).statistic
    labels_y = load_splits(ccs_trial.dataset).train_y
    both = total = 0
    for c in np.unique(labels_y):
        idx = np.flatnonzero(labels_y == c)
        n = int(0.3 * len(idx))
        total += n
        both += len(
            set(idx[np.argsort(train_aum[idx], kind="stable")[:n]])
            & set(idx[np.argsort(eval_aum[idx], kind="stable")[:n]])
        )
    print(
        f"  ccs AUM, train_batches vs eval over {len(train_aum)} train images: Spearman {rho:.3f}; hardest 30% "
        f"per class dropped by both: {both} of {total}"
    )


if __name__ == "__main__":
    main()
