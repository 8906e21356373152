"""The ``softgate`` command line: one sub-command per module in ``softgate.commands``.

Each command module exposes ``add_parser(subparsers)`` (which registers its parser and sets ``func``) so that
``softgate --help`` lists exactly what exists. Heavy imports (torch, transformers) happen inside the command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from softgate import __version__

# Order here is the order in `softgate --help`.
COMMANDS = ["gates", "train", "demo", "pretrain", "eval", "sweep", "report"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softgate",
        description="Smooth-gated policy optimization for language models (SAPO gate families, EUR diagnostics).",
    )
    parser.add_argument("--version", action="version", version=f"softgate {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"softgate.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"softgate.commands.{name}":
                continue  # command not part of this build
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
