"""`ddsweep` command line: validate | plan | run | check-teacher | status | report | migrate | list."""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter

from orchestrator.driver import StaleIds, check_teacher, make_plan, run, stale_message
from orchestrator.grid import expand
from orchestrator.lock import DriverLock, SweepLocked
from orchestrator.report import accuracy_table, current_rows, format_table, write_report
from orchestrator.spec import SpecError, SweepSpec, load_spec
from workers.budget import plan as budget_plan
from workers.catalogue import ARCHS, DATASETS, REGIMES, SELECTORS, dataset_facts
from workers.graph import bytes_written, kd_epoch_keys, shard_keys
from workers.naming import trial_name

EXIT_SPEC = 2  # bad input
EXIT_LOCKED = 3  # another driver runs the sweep
EXIT_STALE = 4  # the store needs `ddsweep migrate`


def _load(args) -> SweepSpec:
    spec = load_spec(args.sweep, storage_override=getattr(args, "storage", None))
    for w in spec.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return spec


def cmd_validate(args) -> int:
    spec = _load(args)

    print(f"{args.sweep}: ok ({len(expand(spec))} trials)")
    return 0


def cmd_plan(args) -> int:
    spec = _load(args)
    p = make_plan(spec)
    if p.stale:
        print(f"warning: {stale_message(spec, p.stale)}", file=sys.stderr)
    print(
        f"sweep {spec.name}: {len(p.trials)} trials = {len(spec.selectors)} selectors x {len(spec.regimes)} "
        f"regimes x {len(spec.ipcs)} IPCs x {len(spec.seeds)} seeds"
        + (
            f" minus {len(spec.selectors) * len(spec.regimes) * len(spec.ipcs) * len(spec.seeds) - len(p.trials)} "
            f"excluded"
            if spec.exclude
            else ""
        )
    )
    print(f"  done {len(p.done)}, pending {len(p.pending)}")
    kinds = Counter(k.kind for k in p.stages)
    missing = Counter(k.kind for k in p.stages_missing)
    for kind, n in kinds.items():
        print(f"  stage {kind}: {n} needed by pending trials, {missing.get(kind, 0)} to build")
    _print_bytes(p)
    info = dataset_facts(spec.dataset.name, spec.dataset.root, spec.dataset.opts)
    n_full, n_cls = info["num_train"], len(info["class_names"])
    batches = {r: spec.recipes[r].batch_size for r in spec.regimes}
    for batch in sorted(set(batches.values())):
        who = ", ".join(r for r, b in batches.items() if b == batch)
        print(f"  budget {spec.budget.unit}={spec.budget.value:g} (train split N={n_full}, batch {batch}: {who}):")
        for ipc in spec.ipcs:
            bp = budget_plan(spec.budget, ipc * n_cls, n_full, batch)
            print(
                f"    ipc {ipc:>4}: {bp.images_seen} images, {bp.steps} steps, {bp.subset_epochs:.1f} subset "
                f"epochs, {bp.full_epochs:.2f} full epochs"
            )
    for r in spec.regimes:
        t = spec.recipes[r]
        print(
            f"  recipe {r}: {t.optimizer} lr {t.lr:g} wd {t.weight_decay:g}, {t.schedule}, batch {t.batch_size}"
            + (f", T {t.temperature:g}{' x T^2' if t.t2_scale else ''}" if r != "hl" else "")
        )
    return 0


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

    spec = _load(args)
    trials = expand(spec)
    store = spec.store()
    done = store.done_ids()
    fails = store.failures()

    def state(t) -> str:
        if t.trial_id in done:
            return "done"
        if t.trial_id in fails and fails[t.trial_id].get("final", True):
            return "failed"
        if store.has_checkpoint(t.trial_id):
            return "started"
        return "pending"

    _warn_stale(spec, {t.trial_id for t in trials}, done)
    states = {t.trial_id: state(t) for t in trials}
    total = Counter(states.values())
    order = ("done", "started", "failed", "pending")
    print(
        f"sweep {spec.name} ({spec.storage}): {len(trials)} trials: "
        + ", ".join(f"{total.get(s, 0)} {s}" for s in order)
    )
    for axis, key in (
        ("selector", lambda t: t.selector.label()),
        ("regime", lambda t: t.regime),
        ("ipc", lambda t: t.ipc),
        ("seed", lambda t: t.seed),
    ):
        print(f"  by {axis}:")
        values = list(dict.fromkeys(key(t) for t in trials))
        for v in values:
            c = Counter(states[t.trial_id] for t in trials if key(t) == v)
            print(f"    {str(v):<28} " + "  ".join(f"{s} {c.get(s, 0)}" for s in order))
    for t in trials:
        f = fails.get(t.trial_id)
        if states[t.trial_id] == "failed":
            print(f"  failed {trial_name(t)} (attempt {f['attempt']}): {f['error']}")
        elif f and states[t.trial_id] != "done":
            print(f"  retrying {trial_name(t)}: attempt {f['attempt']} failed: {f['error']}")
    return 0


def cmd_report(args) -> int:
    spec = _load(args)
    _warn_stale(spec, {t.trial_id for t in expand(spec)}, spec.store().done_ids())
    out = write_report(spec)
    print(format_table(accuracy_table(current_rows(spec))))
    print(f"report written to {out}")
    return 0


def _warn_stale(spec: SweepSpec, grid_ids: set[str], done: set[str]) -> None:
    """Rows under an older trial-id rule are neither counted nor reported: say so, and how to fix it."""
    stale = spec.store().stale_rows(grid_ids) if done - grid_ids else {}
    if stale:
        print(f"warning: {stale_message(spec, stale)}", file=sys.stderr)


def cmd_migrate(args) -> int:
    """Re-key the rows a change of the trial-id rule left under old ids (docs/design.md §5)."""
    spec = _load(args)
    store = spec.store()
    stale = store.stale_rows({t.trial_id for t in expand(spec)})
    print(f"sweep {spec.name} ({store.results_dir}): {len(stale)} row(s) under an older trial-id rule")
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
    with_sweep("plan", "grid size, pending trials, stages to build, budget per IPC").set_defaults(fn=cmd_plan)
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
    with_sweep("report", "accuracy table and curves under <storage>/<sweep>/report/").set_defaults(fn=cmd_report)
    sp = with_sweep("migrate", "re-key rows written under an older trial-id rule (nothing is re-run)")
    sp.add_argument("--dry-run", action="store_true", help="only list what would be re-keyed")
    sp.set_defaults(fn=cmd_migrate)
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
    except SweepLocked as err:
        print(f"ddsweep: {err}", file=sys.stderr)
        return EXIT_LOCKED
    except StaleIds as err:
        print(f"ddsweep: {err}", file=sys.stderr)
        return EXIT_STALE


if __name__ == "__main__":
    sys.exit(main())
