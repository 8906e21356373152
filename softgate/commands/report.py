"""``softgate report RUNS... --out DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report",
        help="figures and tables (with CIs across seeds) comparing runs or sweeps",
        description=(
            "Compare runs: gate shapes, per-step curves (one line per variant, band across seeds), EUR vs "
            "entropy, held-out accuracy with 95% bootstrap CIs (the paper's Table 1 layout when GSM8K/MATH500/"
            "AIME were evaluated), steps to format reward >= 0.9, and paired differences against GRPO. "
            "Writes summary.md, report.html (self-contained), report.json and PNG figures to --out."
        ),
    )
    parser.add_argument("runs", nargs="+", type=Path,
                        help="run directories, or directories searched recursively for runs (a sweep output)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the report files")
    parser.add_argument("--smooth", type=int, default=5,
                        help="trailing-mean window (steps) for curves, final values and steps-to-format (default 5)")
    parser.add_argument("--threshold", type=float, default=0.9,
                        help="format reward level for the steps-to-format table (default 0.9)")
    parser.add_argument("--include-partial", action="store_true",
                        help="also use running/failed runs in the statistics (they are always listed and plotted)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default 0)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from softgate.report import ReportOptions, build_report

    options = ReportOptions(smooth=args.smooth, threshold=args.threshold, include_partial=args.include_partial,
                            seed=args.seed, n_resamples=args.resamples)
    report = build_report(args.runs, args.out, options)  # errors: one line from softgate.cli, exit code 2
    print(f"{len(report.runs)} run(s), {len(report.variants)} variant(s) -> {args.out}/summary.md, "
          f"{args.out}/report.html ({len(report.figures)} figures)")
    for note in report.data.get("notes", []):
        print(f"note: {note}")
    return 0
