"""``softgate gates list | check NAME | plot NAME... --out FILE``: inspect the gate registry.

Gate names in ``--help`` and in argument validation come from ``softgate.gates`` itself, but through a lazy
container: torch is imported only when a gates command runs (or its help is printed), not for every ``softgate``
invocation.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path


class _GateNames:
    """``choices`` for argparse that reads the registry on first use (names, then aliases)."""

    def _all(self) -> list[str]:
        from softgate import gates

        return [*gates.names(), *gates.aliases()]

    def __contains__(self, name: object) -> bool:
        return name in self._all()

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def _taus(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1,5,10, got {text!r}") from None
    if not values or any(not (v > 0 and v < float("inf")) for v in values):
        raise argparse.ArgumentTypeError(f"temperatures must be finite and > 0, got {text!r}")
    return values


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
    p_check.add_argument("name", metavar="NAME", choices=_GateNames(), help="gate family, one of: %(choices)s")
    p_check.add_argument("--tau-pos", type=float, help="temperature where A > 0 (temperature families)")
    p_check.add_argument("--tau-neg", type=float, help="temperature where A <= 0 (temperature families)")
    p_check.add_argument("--tau", type=float, help="set tau_pos and tau_neg to the same value")
    p_check.add_argument("--eps", type=float, help="clip: eps_low = eps_high = EPS")
    p_check.add_argument("--eps-low", type=float, help="clip: trust region starts at 1 - eps_low")
    p_check.add_argument("--eps-high", type=float, help="clip: trust region ends at 1 + eps_high (DAPO clip-higher)")
    p_check.add_argument("--nu", type=float, help="student: tail index (> 0)")
    p_check.set_defaults(func=run_check)

    p_plot = actions.add_parser(
        "plot", help="draw f, f' and x f'(x) side by side for several temperatures",
        description="Draw the paper's gate figure: f, f' and x f'(x) over x in [0, X_MAX], one line per gate and "
                    "temperature (tau_pos = tau_neg = tau), on the A > 0 branch unless --negative.",
    )
    p_plot.add_argument("names", nargs="+", metavar="NAME", choices=_GateNames(),
                        help="gate families, from: %(choices)s")
    p_plot.add_argument("--out", type=Path, required=True, help="output image (.png, .pdf or .svg)")
    p_plot.add_argument("--taus", type=_taus, default=[1.0, 5.0, 10.0],
                        help="comma-separated temperatures (default 1,5,10)")
    p_plot.add_argument("--x-max", type=float, default=3.0, help="right end of the x axis (default 3)")
    p_plot.add_argument("--negative", action="store_true", help="draw the A < 0 branch instead")
    p_plot.set_defaults(func=run_plot)
    return parser


def _no_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _error(command: str, message: str) -> int:
    print(f"softgate gates {command}: error: {message}", file=sys.stderr)
    return 2


def run_list(args: argparse.Namespace) -> int:
    from softgate import gates

    alias_of: dict[str, list[str]] = {}
    for alias, target in gates.aliases().items():
        alias_of.setdefault(target, []).append(alias)
    rows = []
    for name in gates.names():
        cls = gates.gate_class(name)
        params = ", ".join(f"{k}={v:g}" for k, v in cls.param_defaults.items()) or "-"
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        rows.append((name, ", ".join(alias_of.get(name, [])) or "-", params, doc))
    widths = [max(len(r[i]) for r in [("gate", "aliases", "parameters (defaults)", ""), *rows]) for i in range(3)]
    header = ("gate", "aliases", "parameters (defaults)")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)))
        print(f"    {row[3]}")
    return 0


def _check_params(args: argparse.Namespace) -> dict[str, float]:
    if args.tau is not None and (args.tau_pos is not None or args.tau_neg is not None):
        raise ValueError("use either --tau or --tau-pos/--tau-neg, not both")
    if args.eps is not None and (args.eps_low is not None or args.eps_high is not None):
        raise ValueError("use either --eps or --eps-low/--eps-high, not both")
    params = {
        "tau_pos": args.tau if args.tau is not None else args.tau_pos,
        "tau_neg": args.tau if args.tau is not None else args.tau_neg,
        "eps_low": args.eps if args.eps is not None else args.eps_low,
        "eps_high": args.eps if args.eps is not None else args.eps_high,
        "nu": args.nu,
    }
    return {k: v for k, v in params.items() if v is not None}


def run_check(args: argparse.Namespace) -> int:
    from softgate import gates

    try:
        gate = gates.make(args.name, **_check_params(args))
    except ValueError as err:
        return _error("check", str(err))
    report = gates.check(gate)
    print(report)
    return 0 if report.passed else 1


def run_plot(args: argparse.Namespace) -> int:
    from softgate.plotting import plot_gates

    if not args.x_max > 0:
        return _error("plot", f"--x-max must be > 0, got {args.x_max:g}")
    try:
        path = plot_gates(args.names, taus=args.taus, out=args.out, x_max=args.x_max,
                          advantage=-1.0 if args.negative else 1.0)
    except ValueError as err:
        return _error("plot", str(err))
    print(f"wrote {path}")
    return 0
