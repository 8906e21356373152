"""The ``softgate`` command line: one sub-command per module in ``softgate.commands``.

Each command module exposes ``add_parser(subparsers)`` (which registers its parser and sets ``func``) so that
``softgate --help`` lists exactly what exists. Heavy imports (torch, transformers) happen inside the command.

Errors: a user error (bad config, file, value; a missing optional package) is one line on stderr naming the
command, and exit code 2; ``--debug`` shows the traceback instead. Ctrl-C is one line and exit code 130; a training
run stopped by Ctrl-C or SIGTERM says in that line how to resume it (exit code 128 + the signal).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from softgate import __version__

# Order here is the order in `softgate --help`.
COMMANDS = ["gates", "train", "sft", "demo", "pretrain", "eval", "export", "sweep", "report", "inspect"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softgate",
        description="Smooth-gated policy optimization for language models (SAPO gate families, EUR diagnostics).",
    )
    parser.add_argument("--version", action="version", version=f"softgate {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
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
    from softgate.rundir import RunInterrupted  # light: no torch

    try:
        result = args.func(args)
    except RunInterrupted as err:  # a run stopped by a signal after saving its state: how to resume it
        if args.debug:
            raise
        print(f"softgate {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"softgate {args.command}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"softgate {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    return int(result or 0)


# Exceptions that mean "the input is wrong", reported in one line. Anything else is a bug: full traceback.
# softgate's own error types (ConfigError, RunDirError, SweepFileError, ReportError, ...) are ValueErrors.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError, ImportError)


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (multi-line messages from libraries are joined)."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, UnicodeDecodeError):
        text = f"not a UTF-8 text file ({err.reason} at byte {err.start})"
    return text


if __name__ == "__main__":
    sys.exit(main())
