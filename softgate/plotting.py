"""Gate figures: f, f' and x f'(x) side by side (the paper's gate figure), shared by ``softgate gates plot`` and
``softgate report``.

Uses matplotlib's object API with the Agg canvas (no pyplot, no display, no global backend switch), so it is safe
in headless runs and inside other programs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from softgate import gates as gates_mod

__all__ = ["DEFAULT_TAUS", "gate_variants", "plot_gates"]

DEFAULT_TAUS: tuple[float, ...] = (1.0, 5.0, 10.0)
_LINESTYLES = ("-", "--", ":", "-.")


def gate_variants(gates_or_names: Iterable[gates_mod.Gate | str] | gates_mod.Gate | str,
                  taus: Sequence[float] | str | None = "auto") -> list[tuple[gates_mod.Gate, str]]:
    """The (gate, legend label) pairs drawn by ``plot_gates``.

    ``taus``: a sequence draws every temperature family once per tau (tau_pos = tau_neg = tau); None draws every
    gate as given; "auto" (default) draws names at ``DEFAULT_TAUS`` and ``Gate`` objects as given (so a report
    shows the temperatures its runs used). Gates without temperature (clip, identity, user gates) are drawn once.
    """
    if isinstance(gates_or_names, (str, gates_mod.Gate)):
        gates_or_names = [gates_or_names]
    if isinstance(taus, str) and taus != "auto":
        raise ValueError(f"plot_gates: taus must be a sequence of numbers, None or 'auto', got {taus!r}")
    out: list[tuple[gates_mod.Gate, str]] = []
    for item in gates_or_names:
        gate = gates_mod.make(item) if isinstance(item, str) else item
        if not isinstance(gate, gates_mod.Gate):
            raise TypeError(f"plot_gates: expected gate names or softgate.gates.Gate objects, got {item!r}")
        item_taus = (DEFAULT_TAUS if isinstance(item, str) else None) if taus == "auto" else taus
        if gate.temperatures is not None and item_taus:
            out.extend((gate.with_params(tau_pos=float(t), tau_neg=float(t)), f"{gate.name} tau={t:g}")
                       for t in item_taus)
        else:
            out.append((gate, repr(gate)))
    if not out:
        raise ValueError("plot_gates: no gates to draw")
    return out


def plot_gates(
    gates_or_names: Iterable[gates_mod.Gate | str] | gates_mod.Gate | str,
    taus: Sequence[float] | str | None = "auto",
    out: str | Path = "gates.png",
    *,
    x_max: float = 3.0,
    points: int = 601,
    advantage: float = 1.0,
    dpi: int = 120,
) -> Path:
    """Draw f, f' and x f'(x) over x in [0, x_max] for each gate (and each temperature) and write a PNG.

    Args:
        gates_or_names: gate names (built with defaults) or ``Gate`` objects, or a single one.
        taus: temperatures drawn for each temperature family (tau_pos = tau_neg = tau); None keeps the gates' own;
            "auto": names at ``DEFAULT_TAUS`` (1, 5, 10), ``Gate`` objects as given (see ``gate_variants``).
        out: the image path (parent directories are created); the format follows the suffix (.png, .pdf, .svg).
        x_max, points: the x grid, ``linspace(0, x_max, points)``.
        advantage: sign of A picking the branch (tau_pos for > 0, tau_neg otherwise).
    Returns:
        The written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    variants = gate_variants(gates_or_names, taus)
    x = torch.linspace(0.0, float(x_max), int(points), dtype=torch.float64)
    fig = Figure(figsize=(16.5, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    titles = ("gate f(x)", "gate weight f'(x)", "effective coefficient x f'(x)")
    families = list(dict.fromkeys(g.name for g, _ in variants))
    colors = {name: f"C{i % 10}" for i, name in enumerate(families)}
    seen: dict[str, int] = {}
    for gate, label in variants:
        style_i = seen.get(gate.name, 0)
        seen[gate.name] = style_i + 1
        with torch.no_grad():
            f = gate.f(x, advantage)
            df = gate.df(x, advantage)
        curves = (f, df, x * df)
        style = dict(color=colors[gate.name], linestyle=_LINESTYLES[style_i % len(_LINESTYLES)], linewidth=1.6)
        for ax, y in zip(axes, curves):
            ax.plot(x.numpy(), y.numpy(), label=label, **style)
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("importance ratio x = r")
        ax.axvline(1.0, color="0.6", linewidth=0.8, linestyle=":")
        ax.grid(True, alpha=0.3)
    axes[1].set_ylim(-0.05, 1.1)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)  # outside: the curves stay readable
    branch = "A > 0 (tau_pos)" if advantage > 0 else "A <= 0 (tau_neg)"
    fig.suptitle(f"gates on the {branch} branch")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
