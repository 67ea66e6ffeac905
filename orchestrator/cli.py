"""`ddsweep` command line: validate | plan | run | status | report | migrate | reproduce | list.

Every command that reads a sweep names its absolute storage on its first line. Exit codes: 0 ok,
1 some trials failed (run) or the report could not be written, 2 bad input (the sweep file, a store
that does not exist), 3 another driver runs the sweep, 4 the store needs `ddsweep migrate`, 5 no Ray
cluster at --address.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter

from orchestrator.driver import ClusterUnreachable, StaleIds, make_plan, run, stale_message
from orchestrator.grid import expand
from orchestrator.lock import DriverLock, SweepLocked
from orchestrator.report import ReportNotWritten, accuracy_table, current_rows, format_table, write_report
from orchestrator.results import SweepStore
from orchestrator.spec import SpecError, SweepSpec, load_spec
from workers.budget import plan as budget_plan
from workers.catalogue import ARCHS, DATASETS, REGIMES, SELECTORS, dataset_facts, seed_use
from workers.config import Named
from workers.graph import reads_dynamics
from workers.naming import selector_label, trial_name

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
    full = len(spec.selectors) * len(spec.regimes) * len(spec.ipcs) * len(spec.seeds)
    print(
        f"sweep {spec.name}, storage {spec.storage}: {len(p.trials)} trials = {len(spec.selectors)} selectors x "
        f"{len(spec.regimes)} regimes x {len(spec.ipcs)} IPCs x {len(spec.seeds)} seeds"
        + (f" minus {full - len(p.trials)} excluded" if spec.exclude else "")
    )
    _warn_store(spec, p.store, {t.trial_id for t in p.trials}, p.done_all)
    print(f"  done {len(p.done)}, pending {len(p.pending)}")
    kinds = Counter(k.kind for k in p.stages)
    missing = Counter(k.kind for k in p.stages_missing)
    for kind, n in kinds.items():
        print(f"  stage {kind}: {n} needed by pending trials, {missing.get(kind, 0)} to build")
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
            + (f", views {t.augment}" if r != "sl_kd" else ", views RRC+flip+CutMix")
            + (f", T {t.temperature:g}{' x T^2' if t.t2_scale else ''}" if r != "hl" else "")
        )
    if any(reads_dynamics(s) for s in spec.selectors):
        t = spec.train
        print(
            f"  score runs: {t.optimizer} lr {t.lr:g} wd {t.weight_decay:g}, {t.schedule}, batch {t.batch_size}, "
            f"views {t.augment}"
        )
    return 0


def cmd_run(args) -> int:
    spec = _load(args)
    return run(spec, address=args.address, checkpoint_interval_s=args.checkpoint_interval)


def cmd_status(args) -> int:
    spec = _load(args)
    store = _existing_store(spec)
    trials = expand(spec)
    ids = {t.trial_id for t in trials}
    done = store.done_ids()
    fails = store.failures()
    started = store.checkpointed_ids()

    def state(tid: str) -> str:
        if tid in done:
            return "done"
        if tid in fails and fails[tid].get("final", True):
            return "failed"
        if tid in started or tid in fails:
            return "started"
        return "pending"

    states = {tid: state(tid) for tid in ids}
    total = Counter(states.values())
    order = ("done", "started", "failed", "pending")
    print(
        f"sweep {spec.name}, storage {spec.storage}: {len(trials)} trials: "
        + ", ".join(f"{total.get(s, 0)} {s}" for s in order)
    )
    _warn_store(spec, store, ids, done)
    labels = {s: selector_label(s) for s in spec.selectors}
    for axis, key in (
        ("selector", lambda t: labels[t.selector]),
        ("regime", lambda t: t.regime),
        ("ipc", lambda t: t.ipc),
        ("seed", lambda t: t.seed),
    ):
        counts: dict[object, Counter] = {}
        for t in trials:
            counts.setdefault(key(t), Counter())[states[t.trial_id]] += 1
        print(f"  by {axis}:")
        for v, c in counts.items():
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
    store = _existing_store(spec)
    rows = current_rows(spec)
    print(f"sweep {spec.name}, storage {spec.storage}: {len(rows)} rows")
    _warn_store(spec, store, {t.trial_id for t in expand(spec)}, store.done_ids())
    table = accuracy_table(rows)
    print(format_table(table))
    if not table.empty:
        table["selection_seed"] = table["selector"].map(_seed_uses(rows))
        print(_seed_note(table))
    try:
        out = write_report(table, args.out or store.uri("report"))
    except ReportNotWritten as err:
        print(f"ddsweep: {err}; the tables are above. Pass --out DIR to write the files elsewhere", file=sys.stderr)
        return EXIT_FAILED
    print(f"report written to {out}")
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
