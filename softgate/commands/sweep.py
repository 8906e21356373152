"""``softgate sweep FILE [--out DIR] [--workers N] [--threads-per-run T] [--dry-run]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sweep",
        help="run a grid of training runs (gate x temperature x seed ...) from a sweep file",
        description=(
            "Run every cell of a sweep file in its own run directory (OUT/<cell name>), at most --workers at a "
            "time. Finished cells (run.json status 'finished') are skipped; cells with a checkpoint are resumed. "
            "A failing cell does not stop the others; the exit code is 1 if any cell failed. "
            "The sweep file format is documented in docs/sweeps.md."
        ),
    )
    parser.add_argument("file", type=Path, help="sweep file (YAML), e.g. sweeps/embedded.yaml")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory of the sweep (default: runs/sweeps/<sweep name>)")
    parser.add_argument("--workers", type=int, default=None,
                        help="cells run in parallel (default: the sweep file's `workers`, else "
                             "max(1, CPUs // threads per run))")
    parser.add_argument("--threads-per-run", type=int, default=None,
                        help="CPU threads of each training process, set through OMP_NUM_THREADS and friends "
                             "(default: the sweep file's `threads_per_run`, else 1)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the cells, their state, overrides and commands; run nothing")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from softgate import sweep as sw

    spec = sw.load_sweep(args.file)  # errors: one line from softgate.cli, exit code 2
    workers, threads = sw.resolve_workers(spec, args.workers, args.threads_per_run)
    out = args.out if args.out is not None else sw.default_out(spec)
    cells = spec.cells(out)
    problems = sw.check_cells(spec, cells)
    if problems:
        for problem in problems:
            print(f"softgate sweep: error: {problem}", file=sys.stderr)
        return 2
    if args.dry_run:
        sw.dry_run(spec, out, workers=workers, threads_per_run=threads)
        return 0
    try:
        result = sw.run_sweep(spec, out, workers=workers, threads_per_run=threads, progress=sys.stderr.isatty())
    except KeyboardInterrupt:
        print("softgate sweep: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    sw.print_summary(result)
    print(f"sweep output: {out}  (report: softgate report {out} --out {out / 'report'})", file=sys.stderr)
    return 0 if result.ok else 1
