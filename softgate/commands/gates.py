"""``softgate gates list | check NAME | plot NAME... --out FILE``: inspect the gate registry.

Nothing here imports torch until a handler runs, so ``softgate gates check --help`` stays fast: gate names are
checked by the registry inside the handlers (an unknown name is a one-line error listing the known ones), and gate
parameters travel generically as ``--param KEY=VALUE``, validated by the registry against the family's own
parameter list. The flags ``--tau-pos``, ``--tau-neg``, ``--eps-low``, ``--eps-high`` and ``--nu`` are kept as
spellings of ``--param`` for the built-in families; ``--tau`` and ``--eps`` set both temperatures / clip bounds.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

# Spellings of --param kept from earlier releases: --tau-pos X is --param tau_pos=X, etc.
_PARAM_FLAGS = ("--tau-pos", "--tau-neg", "--eps-low", "--eps-high", "--nu")
# Shorthands setting two parameters at once.
_PAIR_FLAGS = {"--tau": ("tau_pos", "tau_neg"), "--eps": ("eps_low", "eps_high")}


class _Param(argparse.Action):
    """Collects gate parameters in order as ``(flag, key, value)`` in ``namespace.params``; the handler merges them
    (a key given by two flags is an error) and the registry validates them."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        items = list(getattr(namespace, "params", None) or [])
        flag = option_string or self.dest
        if flag == "--param":
            key, sep, text = str(values).partition("=")
            try:
                value = float(text)
            except ValueError:
                value = None
            if not sep or not key.strip() or value is None:
                parser.error(f"--param expects KEY=VALUE with a number, e.g. --param nu=8, got {values!r}")
            items.append((flag, key.strip(), value))
        else:
            keys = _PAIR_FLAGS.get(flag, (flag[2:].replace("-", "_"),))
            items.extend((flag, key, float(values)) for key in keys)
        namespace.params = items


def _add_param_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("gate parameters (validated by the registry: `softgate gates list`)")
    group.add_argument("--param", action=_Param, metavar="KEY=VALUE",
                       help="set a gate parameter, e.g. --param nu=8 or a user gate's own (repeatable)")
    for flag in _PARAM_FLAGS:
        group.add_argument(flag, action=_Param, type=float, metavar="X",
                           help=f"same as --param {flag[2:].replace('-', '_')}=X")
    for flag, keys in _PAIR_FLAGS.items():
        group.add_argument(flag, action=_Param, type=float, metavar="X", help=f"set {' and '.join(keys)} to X")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "gates",
        help="list the gate families, check their admissibility, plot f, f', x f'(x)",
        description="Inspect the gate registry (softgate.gates): list families and parameters, verify the paper's "
                    "four admissibility conditions numerically on both temperature branches, draw the gate figure.",
    )
    actions = parser.add_subparsers(dest="gates_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: _no_action(parser))

    p_list = actions.add_parser("list", help="gate names, aliases and parameters with their defaults",
                                description="List the registered gates with aliases and parameter defaults.")
    p_list.set_defaults(func=run_list)

    p_check = actions.add_parser(
        "check", help="verify the four admissibility conditions (exit 1 if one fails)",
        description="Verify the paper's admissibility conditions for one gate on both branches (A>0 uses tau_pos, "
                    "A<0 tau_neg): 1 f is C^1, 2 f'(1) = 1 is the global max, 3 f' decreases away from 1, "
                    "4 x f'(x) -> 0. Prints a table; exit 0 if all pass, 1 if one fails, 2 on bad arguments.",
    )
    p_check.add_argument("name", metavar="NAME", help="gate family or alias (`softgate gates list` shows them)")
    _add_param_options(p_check)
    p_check.set_defaults(func=run_check, params=[])

    p_plot = actions.add_parser(
        "plot", help="draw f, f' and x f'(x) side by side for several temperatures",
        description="Draw the paper's gate figure: f, f' and x f'(x) over x in [0, X_MAX], one line per gate and "
                    "temperature (tau_pos = tau_neg = tau), on the A > 0 branch unless --negative. Gate "
                    "parameters apply to every named gate that takes them.",
    )
    p_plot.add_argument("names", nargs="+", metavar="NAME", help="gate families or aliases (`softgate gates list`)")
    p_plot.add_argument("--out", type=Path, required=True, help="output image (.png, .pdf or .svg)")
    p_plot.add_argument("--taus", type=_taus, default=[1.0, 5.0, 10.0],
                        help="comma-separated temperatures (default 1,5,10)")
    p_plot.add_argument("--x-max", type=float, default=3.0, help="right end of the x axis (default 3)")
    p_plot.add_argument("--negative", action="store_true", help="draw the A < 0 branch instead")
    p_plot.add_argument("--param", action=_Param, metavar="KEY=VALUE",
                        help="set a gate parameter, e.g. --param nu=8 (repeatable; --taus sets the temperatures)")
    p_plot.set_defaults(func=run_plot, params=[])
    return parser


def _taus(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1,5,10, got {text!r}") from None
    if not values or any(not (v > 0 and v < float("inf")) for v in values):
        raise argparse.ArgumentTypeError(f"temperatures must be finite and > 0, got {text!r}")
    return values


def _no_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _error(command: str, message: str) -> int:
    print(f"softgate gates {command}: error: {message}", file=sys.stderr)
    return 2


def _merge_params(items: list[tuple[str, str, float]]) -> dict[str, float]:
    """The parameters given on the command line; a key set by two different flags is an error."""
    params: dict[str, float] = {}
    source: dict[str, str] = {}
    for flag, key, value in items:
        if key in source and source[key] != flag:
            raise ValueError(f"use either {source[key]} or {flag}, not both (both set {key})")
        params[key], source[key] = value, flag
    return params


def run_list(args: argparse.Namespace) -> int:
    from softgate import gates

    alias_of: dict[str, list[str]] = {}
    for alias, target in gates.aliases().items():
        alias_of.setdefault(target, []).append(alias)
    rows = []
    for name in gates.names():
        cls = gates.gate_class(name)
        params = ", ".join(f"{k}={v:g}" for k, v in gates.defaults(name).items()) or "-"
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        rows.append((name, ", ".join(alias_of.get(name, [])) or "-", params, doc))
    header = ("gate", "aliases", "parameters (defaults)")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)))
        print(f"    {row[3]}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from softgate import gates

    try:
        gate = gates.GateSpec.of(args.name, **_merge_params(args.params)).build()
    except ValueError as err:
        return _error("check", str(err))
    report = gates.check(gate)
    print(report)
    return 0 if report.passed else 1


def run_plot(args: argparse.Namespace) -> int:
    from softgate import gates
    from softgate.plots import plot_gates

    if not (math.isfinite(args.x_max) and args.x_max > 0):
        return _error("plot", f"--x-max must be > 0, got {args.x_max:g}")
    try:
        params = _merge_params(args.params)
        objects = [gates.make_accepted(name, params) for name in args.names]
        unused = sorted(set(params) - {key for gate in objects for key in gate.params})
        if unused:
            raise ValueError(f"no gate among {', '.join(args.names)} takes {', '.join(unused)}")
        path = plot_gates(objects, taus=args.taus, out=args.out, x_max=args.x_max,
                          advantage=-1.0 if args.negative else 1.0)
    except ValueError as err:
        return _error("plot", str(err))
    print(f"wrote {path}")
    return 0
