"""`ddsweep` command line: validate | plan | run | check-teacher | status | report | migrate | reproduce | list.

Every command that reads a sweep names its absolute storage on its first line. Exit codes: 0 ok,
1 some trials failed (run) or the report could not be written, 2 bad input (the sweep file, a store
that does not exist), 3 another driver runs the sweep, 4 the store needs `ddsweep migrate`, 5 no Ray
cluster at --address.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
from collections import Counter

from orchestrator.driver import ClusterUnreachable, StaleIds, check_teacher, make_plan, run, stale_message
from orchestrator.grid import expand, grid_size
from orchestrator.lock import DriverLock, SweepLocked
from orchestrator.report import ReportNotWritten, build, format_table, write_report
from orchestrator.results import SweepStore
from orchestrator.spec import SpecError, SweepSpec, load_spec
from workers.budget import plan as budget_plan
from workers.catalogue import ARCHS, DATASETS, REGIMES, SELECTORS, dataset_facts, seed_use
from workers.config import Named
from workers.graph import bytes_written, kd_epoch_keys, reads_dynamics, shard_keys

EXIT_FAILED = 1  # some trials failed, or the report could not be written
EXIT_SPEC = 2  # bad input
EXIT_LOCKED = 3  # another driver runs the sweep
EXIT_STALE = 4  # the store needs `ddsweep migrate`
EXIT_NO_CLUSTER = 5  # --address names no reachable Ray cluster


class NoSuchSweep(Exception):
    """`status`/`report` against a storage that has no folder for the sweep (a mistyped --storage)."""


def _load(args) -> SweepSpec:
    spec = load_spec(args.sweep, storage_override=getattr(args, "storage", None))
    for w in spec.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return spec


def _existing_store(spec: SweepSpec) -> SweepStore:
    store = spec.store()
    if not store.exists():
        raise NoSuchSweep(
            f"storage {spec.storage} has no sweep {spec.name!r} (no folder {store.path()}); check "
            "--storage or the file's `storage:` (a sweep's folder appears with its first `ddsweep run`)"
        )
    return store


def _warn_store(spec: SweepSpec, store: SweepStore, grid_ids: set[str], done: set[str]) -> None:
    """Rows that are damaged, or under an older trial-id rule, are neither counted nor reported: say so."""
    if store.damaged:
        where = sorted(set(store.damaged.values()))
        print(
            f"warning: {len(store.damaged)} unreadable row(s) in {store.results_dir} (zero bytes or truncated) "
            f"do not count as done and their trials run again; set aside: {', '.join(where[:3])}"
            + (" ..." if len(where) > 3 else ""),
            file=sys.stderr,
        )
    stale = store.stale_rows(grid_ids) if done - grid_ids else {}
    if stale:
        print(f"warning: {stale_message(spec, stale)}", file=sys.stderr)


def cmd_validate(args) -> int:
    spec = _load(args)
    print(f"{args.sweep}: ok ({len(expand(spec))} trials), storage {spec.storage}")
    return 0


def cmd_plan(args) -> int:
    spec = _load(args)
    p = make_plan(spec)
    print(f"sweep {spec.name}, storage {spec.storage}: {grid_size(spec, len(p.trials))}")
    _warn_store(spec, p.store, {t.trial_id for t in p.trials}, p.done_all)
    print(f"  done {len(p.done)}, pending {len(p.pending)}")
    kinds = Counter(k.kind for k in p.stages)
    missing = Counter(k.kind for k in p.stages_missing)
    for kind, n in kinds.items():
        print(f"  stage {kind}: {n} needed by pending trials, {missing.get(kind, 0)} to build")
    _print_bytes(p)
    info = dataset_facts(spec.dataset.name, spec.dataset.root, spec.dataset.opts)
    n_full, n_cls = info["num_train"], len(info["class_names"])
    batches = {r: spec.recipes[r].batch_size for r in spec.regimes}
    for budget, batch in itertools.product(spec.budgets or (spec.budget,), sorted(set(batches.values()))):
        who = ", ".join(r for r, b in batches.items() if b == batch)
        print(f"  budget {budget.unit}={budget.value:g} (train split N={n_full}, batch {batch}: {who}):")
        for ipc in spec.ipcs:
            bp = budget_plan(budget, ipc * n_cls, n_full, batch)
            print(
                f"    ipc {ipc:>4}: {bp.images_seen} images, {bp.steps} steps, {bp.subset_epochs:.1f} subset "
                f"epochs, {bp.full_epochs:.2f} full epochs"
            )
    for r in spec.regimes:
        t = spec.recipes[r]
        print(
            f"  recipe {r}: {t.optimizer} lr {t.lr:g} wd {t.weight_decay:g}, {t.schedule}, batch {t.batch_size}"
            + (f", views {t.augment}" if r != "sl_kd" else ", views RRC+flip+CutMix")
            + (f", T {t.temperature:g}{' x T^2' if t.t2_scale else ''}" if r != "hl" else "")
        )
    if any(reads_dynamics(s) for s in spec.selectors):
        t = spec.train
        print(
            f"  score runs: {t.optimizer} lr {t.lr:g} wd {t.weight_decay:g}, {t.schedule}, batch {t.batch_size}, "
            f"views {t.augment}"
        )
    if args.estimate:
        _estimate(spec, p, args.images_per_second or (_calibrate(spec) if args.calibrate else None))
    return 0


def _estimate(spec: SweepSpec, p, images_per_second: float | None) -> None:
    """Images processed per stage kind and by the pending trials, the disk written, and GPU-hours at a
    throughput (the cost model is workers/cost.py)."""
    from workers.cost import INFER_COST, Cost, gpu_hours, stage_cost, trial_cost

    print("  estimate (pending work; train = forward + backward, infer = forward only):")
    rows: dict[str, tuple[int, Cost]] = {}
    for k in p.stages_missing:
        n, c = rows.get(f"stage {k.kind}", (0, Cost()))
        rows[f"stage {k.kind}"] = (n + 1, c + stage_cost(k))
    for t in p.pending:
        n, c = rows.get(f"trials {t.regime}", (0, Cost()))
        rows[f"trials {t.regime}"] = (n + 1, c + trial_cost(t))
    total = Cost()
    for name, (n, c) in rows.items():
        total = total + c
        print(
            f"    {name:<18} x{n:<6} train {c.train:>14,} images  infer {c.infer:>14,} images  disk {_human(c.disk):>9}"
        )
    print(
        f"    {'total':<26} train {total.train:>14,} images  infer {total.infer:>14,} images  "
        f"disk {_human(total.disk):>9}"
    )
    print(f"    train-equivalent images (infer counts {INFER_COST:.2f}): {total.train_equivalent:,.0f}")
    if images_per_second:
        print(
            f"    at {images_per_second:,.0f} training images/s per GPU: "
            f"{gpu_hours(total.train_equivalent, images_per_second):,.2f} GPU-hours"
        )
    else:
        print("    GPU-hours: give --images-per-second N (training throughput per GPU), or --calibrate")


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _print_bytes(p) -> None:
    """The bytes the data stages will write (dataset caches, stored SL+KD labels), estimated from the facts."""
    missing = set(p.stages_missing)
    for ckey in (k for k in p.stages if k.kind == "cache"):
        shards = shard_keys(ckey)
        total = sum(bytes_written(k) for k in shards)
        todo = [k for k in shards if k in missing]
        rule = ckey.cfg["rule"]
        print(
            f"  cache of {rule['root']} (train {rule['train'][0]}/{rule['train'][1]}, val {rule['val'][0]}/"
            f"{rule['val'][1]}, {rule['interpolation']}): {_human(total)} in {len(shards)} shards; to write "
            f"{_human(sum(bytes_written(k) for k in todo))} ({len(todo)} shards)"
        )
    sets = [k for k in p.stages if k.kind == "kd_labels"]
    if sets:
        epochs = {e for k in sets for e in kd_epoch_keys(k)}
        todo = [e for e in epochs if e in missing]
        print(
            f"  stored SL+KD labels: {len(sets)} set(s), {_human(sum(bytes_written(e) for e in epochs))} in "
            f"{len(epochs)} epoch files; to write {_human(sum(bytes_written(e) for e in todo))} ({len(todo)} files)"
        )


def _calibrate(spec: SweepSpec) -> float:
    """Measure the student's training throughput here: 30 steps of the hl recipe's batch on random images of
    the data set's shape, on the GPU when there is one (imports torch: only on request)."""
    import time

    import torch

    from workers import models

    facts = dataset_facts(spec.dataset.name, spec.dataset.root, spec.dataset.opts)
    device = models.pick_device()
    if device == "cpu":  # as a trial would run: one torch thread per CPU it gets
        torch.set_num_threads(max(1, int(spec.resources.cpus_per_trial)))
    batch = spec.recipes["hl"].batch_size
    shape = tuple(facts["image_shape"])
    net = models.build(spec.student.name, spec.student.opts, len(facts["class_names"]), shape, 0).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, len(facts["class_names"]), (batch,), device=device)

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    for _ in range(5):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(30):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    rate = 30 * batch / (time.perf_counter() - t0)
    print(f"  calibration: {spec.student.label()} at batch {batch} on {device}: {rate:,.0f} training images/s")
    return rate


def cmd_run(args) -> int:
    spec = _load(args)
    return run(spec, address=args.address, checkpoint_interval_s=args.checkpoint_interval)


def cmd_check_teacher(args) -> int:
    """Evaluate the sweep's teacher weights on the cached val split: compare with the published figure."""
    spec = _load(args)
    try:
        r = check_teacher(spec, address=args.address)
    except (ValueError, RuntimeError) as err:
        print(f"ddsweep: {err}", file=sys.stderr)
        return 1
    d = spec.dataset.opts
    transform = (
        f"resize {d['val_resize']} / centre crop {d['val_crop']}, {d['interpolation']}"
        if "val_resize" in d
        else f"{spec.dataset.name} at {r['input_shape'][-1]} px"
    )
    print(
        f"teacher {spec.teacher.arch.label()} ({spec.teacher.weights}, {r['normalize']} normalisation), "
        f"{r['classes']} classes, on the val split ({r['val_images']} images, {transform}):"
    )
    print(
        f"  val top-1 {100 * r['val_top1']:.2f}%  top-5 {100 * r['val_top5']:.2f}%  "
        f"(minival top-1 {100 * r['minival_top1']:.2f}%)"
    )
    if r.get("reference"):
        name, top1, top5 = r["reference"]
        print(
            f"  {name} reaches {top1:.2f}% / {top5:.2f}% under resize 256 / centre crop 224, bilinear; a gap of more "
            "than a few tenths of a point means another transform, class order or file"
        )
    if not args.address:
        import ray

        ray.shutdown()
    return 0


def cmd_status(args) -> int:
    """Counts per state and axis, running trials, the driver, an ETA, failures by cause (orchestrator.status)."""
    from orchestrator import status

    spec = _load(args)
    store = _existing_store(spec)
    st = status.collect(spec, store)
    print(status.headline(st))
    _warn_store(spec, store, st.grid_ids, st.done_all)
    print(status.details(st))
    return 0


def cmd_report(args) -> int:
    spec = _load(args)
    store = _existing_store(spec)
    rep = build(spec)
    print(f"sweep {spec.name}, storage {spec.storage}: {rep.frame['trial_id'].nunique() if len(rep.frame) else 0} rows")
    _warn_store(spec, store, {t.trial_id for t in expand(spec)}, store.done_ids())
    table = rep.accuracy
    print(format_table(table))
    if not table.empty:
        table["selection_seed"] = table["selector"].map(_seed_uses(rep.frame))  # written into accuracy.csv too
        print(_seed_note(table))
    try:
        out = write_report(rep, args.out or store.uri("report"))
    except ReportNotWritten as err:
        print(f"ddsweep: {err}; the tables are above. Pass --out DIR to write the files elsewhere", file=sys.stderr)
        return EXIT_FAILED
    print(f"report written to {out}: {out.rstrip('/')}/report.md (tables as CSV, figures as PNG beside it)")
    return 0


def _seed_uses(rows) -> dict[str, str]:
    """selector label -> how its subset depends on the trial seed (workers.catalogue.seed_use)."""
    import json

    out = {}
    options = rows["selector_options"] if "selector_options" in rows else [None] * len(rows)
    for label, name, opts in zip(rows["selector_label"], rows["selector"], options):
        if label not in out:
            parsed = json.loads(opts) if isinstance(opts, str) else {}  # null in rows that lack the column
            out[label] = seed_use(Named.make(name, parsed)) if name in SELECTORS else "draw"
    return out


def _seed_note(table) -> str:
    """Which rows' seed spread includes selection noise (docs/methods.md §4): the seed draws their subset."""
    uses = dict(zip(table["selector"], table["selection_seed"]))
    group = {u: ", ".join(sorted(k for k, v in uses.items() if v == u)) or "-" for u in ("draw", "ties", "none")}
    return (
        "selection and seeds (column selection_seed of accuracy.csv):\n"
        f"  the seed draws the subset, the spread includes selection noise: {group['draw']}\n"
        f"  one subset for every seed up to ties (score_seed: fixed), training noise only: {group['ties']}\n"
        f"  one subset for every seed: {group['none']}"
    )


def cmd_migrate(args) -> int:
    """Re-key the rows a change of the trial-id rule left under old ids (docs/design.md §5)."""
    spec = _load(args)
    store = _existing_store(spec)
    stale = store.stale_rows({t.trial_id for t in expand(spec)})
    print(f"sweep {spec.name}, storage {spec.storage}: {len(stale)} row(s) under an older trial-id rule")
    if not stale or args.dry_run:
        for old, new in list(stale.items())[:20]:
            print(f"  {old} -> {new}")
        return 0
    with DriverLock(store.st, store.name):  # never while a driver runs this sweep
        moved, superseded = store.migrate(stale)
    print(
        f"re-keyed {moved} row(s)"
        + (f"; {superseded} duplicate(s) moved to results/.superseded/" if superseded else "")
    )
    return 0


def cmd_reproduce(args) -> int:
    """Run one finished trial again, in this process, from its row (its config and its thread count), and
    compare: on the same device and thread count the metrics are the same to the last digit."""
    import json

    import pyarrow.parquet as pq

    from workers.config import TrialConfig
    from workers.storage import child_uri
    from workers.trial import TrialContext, run_trial

    row = pq.read_table(args.row).to_pylist()[0]
    storage = args.storage or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(args.row))))
    cfg = TrialConfig.from_json(json.loads(row["config_json"]))
    threads = args.threads or row.get("num_threads")
    print(
        f"reproducing {row['trial_name']} ({row['trial_id']}) with {threads or 'default'} threads, storage {storage}",
        file=sys.stderr,
    )
    got = run_trial(cfg, TrialContext(artifacts_root=child_uri(storage, "artifacts"), num_threads=threads))
    same = all(got[k] == row[k] for k in ("top1", "top5", "loss", "minival_top1"))
    got.pop("history")
    print(json.dumps({"trial_id": cfg.trial_id, "same_as_row": same, **got}, indent=1, default=str))
    return 0 if same else EXIT_FAILED


def cmd_list(args) -> int:
    kinds = {"selectors": SELECTORS, "regimes": REGIMES, "datasets": DATASETS, "archs": ARCHS}
    chosen = [args.kind] if args.kind else list(kinds)
    for k in chosen:
        if len(chosen) > 1:
            print(f"{k}:")
        for e in kinds[k].entries():
            opts = ", ".join(f"{n}={o.default!r}" for n, o in e.options.items())
            print(f"{'  ' if len(chosen) > 1 else ''}{e.name:<16} {e.description}" + (f"  [{opts}]" if opts else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddsweep", description="Distributed sweeps for dataset distillation research.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_sweep(name: str, help: str):
        sp = sub.add_parser(name, help=help)
        sp.add_argument("sweep", help="sweep YAML file")
        sp.add_argument("--storage", default=None, help="storage root; overrides the file's `storage`")
        return sp

    with_sweep("validate", "check a sweep file; print every problem").set_defaults(fn=cmd_validate)
    sp = with_sweep("plan", "grid size, pending trials, stages to build, budget per IPC")
    sp.add_argument("--estimate", action="store_true", help="images processed, disk written, GPU-hours")
    sp.add_argument(
        "--images-per-second", type=float, default=None, help="training throughput per GPU for the GPU-hour estimate"
    )
    sp.add_argument(
        "--calibrate",
        action="store_true",
        help="measure the student's training throughput on this machine (imports torch)",
    )
    sp.set_defaults(fn=cmd_plan)
    sp = with_sweep("run", "run every pending trial (resumes a stopped sweep)")
    sp.add_argument("--address", default=None, help="Ray cluster address (default: start an embedded local Ray)")
    sp.add_argument(
        "--checkpoint-interval",
        type=float,
        default=60.0,
        help="seconds between a trial's epoch checkpoints (default 60)",
    )
    sp.set_defaults(fn=cmd_run)
    sp = with_sweep("check-teacher", "val top-1 of the teacher's weights on the cached val split (a sanity check)")
    sp.add_argument("--address", default=None, help="Ray cluster address (default: start an embedded local Ray)")
    sp.set_defaults(fn=cmd_check_teacher)
    with_sweep("status", "done / started / failed / pending, per axis").set_defaults(fn=cmd_status)
    sp = with_sweep("report", "accuracy table and curves under <storage>/<sweep>/report/")
    sp.add_argument("--out", default=None, help="write the report files here instead (e.g. for a read-only store)")
    sp.set_defaults(fn=cmd_report)
    sp = with_sweep("migrate", "re-key rows written under an older trial-id rule (nothing is re-run)")
    sp.add_argument("--dry-run", action="store_true", help="only list what would be re-keyed")
    sp.set_defaults(fn=cmd_migrate)
    sp = sub.add_parser("reproduce", help="run a finished trial again from its row and compare the metrics")
    sp.add_argument("row", help="a results row: <storage>/<sweep>/results/<trial_id>.parquet")
    sp.add_argument("--storage", default=None, help="the storage of its artifacts (default: the row's)")
    sp.add_argument("--threads", type=int, default=None, help="torch threads (default: the row's num_threads)")
    sp.set_defaults(fn=cmd_reproduce)
    sp = sub.add_parser("list", help="registered selectors, regimes, datasets, architectures")
    sp.add_argument("kind", nargs="?", choices=("selectors", "regimes", "datasets", "archs"))
    sp.set_defaults(fn=cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except SpecError as err:
        print(err, file=sys.stderr)
        return EXIT_SPEC
    except NoSuchSweep as err:
        print(f"ddsweep: {err}", file=sys.stderr)
        return EXIT_SPEC
    except SweepLocked as err:
        print(f"ddsweep: {err}", file=sys.stderr)
        return EXIT_LOCKED
    except StaleIds as err:
        print(f"ddsweep: {err}", file=sys.stderr)
        return EXIT_STALE
    except ClusterUnreachable as err:
        print(f"ddsweep: {err}", file=sys.stderr)
        return EXIT_NO_CLUSTER
    except BrokenPipeError:  # `ddsweep status ... | head`: the reader left; end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
