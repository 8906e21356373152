"""``softgate inspect RUN [--step N] [--out FILE]``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "inspect",
        help="an HTML page showing where the gate acts: tokens shaded by their gate weight",
        description=(
            "Show the completions a run kept (train with log.samples_every=N) with every token shaded by its gate "
            "weight f'(r) r in the last update of that RL step, the ratio r and f'(r) on hover, beside the "
            "histogram of their token ratios. Writes one self-contained HTML file."
        ),
    )
    parser.add_argument("run", type=Path, help="a run directory trained with log.samples_every > 0")
    parser.add_argument("--step", type=int, default=None, help="RL step to show (default: the last one kept)")
    parser.add_argument("--out", type=Path, default=None,
                        help="HTML file to write (default: RUN/plots/inspect_step<N>.html)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from softgate.inspect import write_page

    path = write_page(args.run, args.out, args.step)  # errors: one line from softgate.cli, exit code 2
    print(f"wrote {path}")
    return 0
