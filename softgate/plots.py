"""Every figure softgate draws, in one style: gate shapes, a run's curves, and the report's comparisons.

- ``plot_gates``: f, f' and x f'(x) side by side (the paper's gate figure); ``softgate gates plot`` and the report.
- ``plot_run``: a run's training curves and held-out evaluations, written to ``RUN_DIR/plots/`` by the trainer.
- ``plot_curves``, ``plot_eval_curve``, ``plot_eur_entropy``, ``plot_eur_drift``, ``plot_stability_map``,
  ``plot_ratio_by_update``, ``plot_gate_shapes``: the figures of ``softgate report``.
- ``ratio_histogram_svg``: the token-ratio histogram of ``softgate inspect``'s page.

One x axis everywhere: RL steps (one rollout batch each), the unit of the progress bar, the summary and the report;
a run's optimizer steps are grouped per RL step (``softgate.rundir.per_rl_step``). Axes are labelled in words, and
every PNG is written with an SVG of the same figure next to it (for papers).

Figures use matplotlib's object API on an Agg canvas (``Figure`` + ``FigureCanvasAgg``): no pyplot, no display and
no switch of the global backend, so drawing is safe in headless runs and inside other programs. ``smooth`` is the
one smoothing rule, shared by the curves and the report's tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from softgate import gates as gates_mod
from softgate.rundir import RunDir, per_rl_step

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from softgate.report.runs import Variant
    from softgate.report.stability import Cell

__all__ = ["CURVE_METRICS", "DEFAULT_TAUS", "gate_variants", "plot_curves", "plot_eur_drift", "plot_eur_entropy",
           "plot_eval_curve", "plot_gate_shapes", "plot_gates", "plot_ratio_by_update", "plot_run", "plot_stability_map",
           "ratio_by_update", "ratio_histogram_svg", "smooth", "updates_since_rollout"]

# The per-step figures drawn for a run and compared across variants: metric key -> axis label in words.
CURVE_METRICS: tuple[tuple[str, str], ...] = (
    ("reward/total", "total reward"),
    ("reward/format", "format reward"),
    ("train/accuracy", "training accuracy"),
    ("gate/eur", "EUR (Eq. 12), off-policy updates"),
    ("policy/entropy", "policy entropy (nats/token)"),
    ("response/length_mean", "mean response length (tokens)"),
)
RL_STEP = "RL step"  # the x axis of every training figure
DEFAULT_TAUS: tuple[float, ...] = (1.0, 5.0, 10.0)
DPI = 110
_LINESTYLES = ("-", "--", ":", "-.")


# --------------------------------------------------------------------------------------------------------------
# Style and smoothing


def _figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (the global backend is left alone)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _style(ax: Any, title: str, xlabel: str, ylabel: str | None = None) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    if xlabel == RL_STEP:
        ax.xaxis.get_major_locator().set_params(integer=True)  # whole RL steps
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _save(fig: Figure, path: Path, dpi: int = DPI) -> Path:
    """Write ``path`` (format from its suffix); a PNG gets the same figure as SVG next to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    if path.suffix.lower() == ".png":
        fig.savefig(path.with_suffix(".svg"))
    return path


def _unit_margin(ax: Any) -> None:
    """y limits for a fraction: [0, 1] with a margin, so that markers at 0 or 1 are drawn whole."""
    ax.set_ylim(-0.04, 1.04)


def _colors(names: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"] if len(names) <= 10 else colormaps["tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def smooth(values: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """Trailing mean: ``out[i] = mean(values[max(0, i - window + 1) : i + 1])``.

    Trailing (not centred) so that a smoothed threshold crossing is never dated before the data that caused it.
    Shapes: values (n,) -> (n,).
    """
    if window < 1:
        raise ValueError(f"smoothing window must be >= 1, got {window}")
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or window == 1:
        return v.copy()
    csum = np.concatenate([[0.0], np.cumsum(v)])  # (n+1,)
    idx = np.arange(1, v.size + 1)
    lo = np.maximum(0, idx - window)
    return (csum[idx] - csum[lo]) / (idx - lo)


# --------------------------------------------------------------------------------------------------------------
# Gate shapes


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
    """Draw f, f' and x f'(x) over x in [0, x_max] for each gate (and each temperature) and write an image.

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
    variants = gate_variants(gates_or_names, taus)
    x = torch.linspace(0.0, float(x_max), int(points), dtype=torch.float64)  # (points,)
    fig = _figure(13, 5.2)
    axes = fig.subplots(1, 3)
    colors = _colors(list(dict.fromkeys(g.name for g, _ in variants)))
    seen: dict[str, int] = {}
    for gate, label in variants:
        style_i = seen.get(gate.name, 0)
        seen[gate.name] = style_i + 1
        with torch.no_grad():
            f, df = gate.f(x, advantage), gate.df(x, advantage)  # (points,) each
        style = dict(color=colors[gate.name], linestyle=_LINESTYLES[style_i % len(_LINESTYLES)], linewidth=1.6)
        for ax, y in zip(axes, (f, df, x * df)):
            ax.plot(x.numpy(), y.numpy(), label=label, **style)
    for ax, title in zip(axes, ("gate f(x)", "gate weight f'(x)", "effective coefficient x f'(x)")):
        _style(ax, title, "importance ratio x = r")
        ax.axvline(1.0, color="0.6", linewidth=0.8, linestyle=":")
    axes[1].set_ylim(-0.05, 1.1)
    handles, labels = axes[0].get_legend_handles_labels()
    # Below the panels, in columns, at the axis-label size: readable when the figure is shrunk to a page width.
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=10)
    fig.suptitle(f"gates on the {'A > 0 (tau_pos)' if advantage > 0 else 'A <= 0 (tau_neg)'} branch")
    return _save(fig, Path(out), dpi)


# --------------------------------------------------------------------------------------------------------------
# One run (the trainer calls plot_run at the end)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``plots/curves.png`` (training figures per RL step) and ``plots/eval.png`` (held-out), each with its
    SVG; returns the PNG paths."""
    run = RunDir(run_dir)
    written = []
    metrics = run.read_metrics()
    if metrics:
        written.append(_plot_run_curves(run, per_rl_step(metrics) if "rl_step" in metrics[0] else metrics))
    evals = run.read_evals()
    if evals:
        written.append(_plot_run_evals(run, evals))
    return written


def _plot_run_curves(run: RunDir, metrics: list[dict[str, Any]]) -> Path:
    """Raw values (light) and their trailing mean (dark) per RL step (``metrics``: one row per RL step, gate
    figures averaged over its off-policy updates, by ``per_rl_step``)."""
    fig = _figure(13, 7)
    window = max(1, len(metrics) // 25)
    for ax, (key, label) in zip(fig.subplots(2, 3).flat, CURVE_METRICS):
        points = [(m["step"], m[key]) for m in metrics if m.get(key) is not None]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, alpha=0.25, color="C0")
            ax.plot(steps, smooth(values, window), color="C0")
        _style(ax, label, RL_STEP, label)
    fig.suptitle(f"{run.path.name}: training (light: raw, dark: trailing mean of {window})")
    return _save(fig, run.plots / "curves.png")


def _plot_run_evals(run: RunDir, evals: list[dict[str, Any]]) -> Path:
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    steps = [e.get("rl_step", e["step"]) for e in evals]
    low = [e.get("eval/accuracy_ci_low") for e in evals]
    high = [e.get("eval/accuracy_ci_high") for e in evals]
    ax.plot(steps, [e.get("eval/accuracy") for e in evals], marker="o", label="accuracy (pass@1)")
    if None not in low and None not in high:
        ax.fill_between(steps, low, high, alpha=0.2, label="95% Wilson interval")
    ax.plot(steps, [e.get("eval/format_rate") for e in evals], marker="s", label="format rate")
    _unit_margin(ax)
    _style(ax, f"{run.path.name}: held-out evaluation", RL_STEP, "fraction of held-out problems")
    ax.legend()
    return _save(fig, run.plots / "eval.png")


def ratio_histogram_svg(ratios: Sequence[float], title: str) -> str:
    """Histogram of token ratios r (log-spaced bins, r = 1 marked) as SVG text, for ``softgate inspect``'s page."""
    import io

    r = np.asarray(ratios, dtype=np.float64)  # (n_tokens,)
    r = r[np.isfinite(r) & (r > 0)]
    fig = _figure(4.2, 3.4)
    ax = fig.add_subplot()
    if r.size:
        spread = max(abs(np.log(r)).max(), 1e-3) * 1.1  # symmetric in log r, with a margin
        ax.hist(r, bins=np.exp(np.linspace(-spread, spread, 61)), color="C0", alpha=0.8)
        ax.set_xscale("log")
    ax.axvline(1.0, color="0.3", linewidth=0.9, linestyle=":")
    ax.yaxis.get_major_locator().set_params(integer=True)  # token counts
    _style(ax, title, "importance ratio r (log scale)", "tokens")
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------------------
# Comparisons across runs (softgate report)


def variant_curve(variant: Variant, key: str, window: int) -> tuple[np.ndarray, ...] | None:
    """Smoothed per-seed curves on the union of their steps: (steps, mean, min, max) over seeds.

    Shapes: each (n_steps,). Steps a seed did not log are left out of that step's mean (partial runs).
    """
    curves = [(s, smooth(v, window)) for s, v in (r.series(key) for r in variant.runs) if v.size]
    if not curves:
        return None
    steps = np.unique(np.concatenate([s for s, _ in curves]))  # (n_steps,)
    grid = np.full((len(curves), steps.size), np.nan)  # (n_seeds, n_steps)
    for i, (s, v) in enumerate(curves):
        grid[i, np.searchsorted(steps, s)] = v
    return steps, np.nanmean(grid, axis=0), np.nanmin(grid, axis=0), np.nanmax(grid, axis=0)


def plot_curves(variants: Sequence[Variant], out: Path, window: int, xlabel: str = "step") -> list[tuple[str, str]]:
    """One PNG per metric of CURVE_METRICS that some run logged: one line per variant (mean over seeds), band
    min..max across seeds. Returns (file name, caption) pairs."""
    colors = _colors([v.name for v in variants])
    made = []
    for key, title in CURVE_METRICS:
        curves = [(v, c) for v in variants if (c := variant_curve(v, key, window)) is not None]
        if not curves:
            continue
        fig = _figure(7, 4.2)
        ax = fig.add_subplot()
        for v, (steps, mean, lo, hi) in curves:
            n = sum(1 for r in v.runs if r.series(key)[1].size)
            ax.plot(steps, mean, color=colors[v.name], label=f"{v.name} (n={n})", lw=1.6)
            if n > 1:
                ax.fill_between(steps, lo, hi, color=colors[v.name], alpha=0.18, lw=0)
        _style(ax, f"{title}: mean over seeds, band = min..max (trailing {window}-step mean)", xlabel, title)
        ax.legend(fontsize=7, loc="best")
        name = "curve_" + key.replace("/", "_") + ".png"
        _save(fig, out / name)
        made.append((name, f"{key}: one line per variant (mean over seeds), band min..max across seeds"))
    return made


def eval_curve(variant: Variant, task: str, *, seed: int = 0) -> list[tuple[float, float, float, float, int]]:
    """Held-out accuracy of ``variant`` on ``task`` per evaluated RL step: (step, mean over seeds, low, high, n).

    The interval is the 95% bootstrap interval of the mean across seeds when two or more seeds evaluated that
    step, else that one run's Wilson interval over its problems (``eval/accuracy_ci_*``; NaN when not logged).
    """
    from softgate.intervals import bootstrap_mean_ci

    by_step: dict[float, list[dict[str, Any]]] = {}
    for r in variant.runs:
        for row in r.evals:
            acc = row.get("eval/accuracy")
            if (row.get("eval/task") or r.task) == task and isinstance(acc, (int, float)) and np.isfinite(acc):
                by_step.setdefault(float(row.get("rl_step", row["step"])), []).append(row)
    out = []
    for step in sorted(by_step):
        rows = by_step[step]
        accs = [float(row["eval/accuracy"]) for row in rows]
        if len(rows) > 1:
            ci = bootstrap_mean_ci(accs, n_resamples=2000, seed=seed)
            low, high = ci.low, ci.high
        else:
            low, high = (float(rows[0].get(k) if rows[0].get(k) is not None else np.nan)
                         for k in ("eval/accuracy_ci_low", "eval/accuracy_ci_high"))
        out.append((step, float(np.mean(accs)), low, high, len(rows)))
    return out


def plot_eval_curve(variants: Sequence[Variant], out: Path) -> list[tuple[str, str]]:
    """Held-out accuracy over training, one panel per evaluated task: a line per variant (mean over seeds) with
    markers at the evaluations and its 95% interval as a band (``eval_curve``)."""
    tasks = list(dict.fromkeys(row.get("eval/task") or r.task for v in variants for r in v.runs for row in r.evals
                               if row.get("eval/task") or r.task))
    curves = {t: [(v, c) for v in variants if (c := eval_curve(v, t))] for t in tasks}
    tasks = [t for t in tasks if curves[t]]
    if not tasks:
        return []
    colors = _colors([v.name for v in variants])
    fig = _figure(6.5 * len(tasks), 4.5)
    for ax, task in zip(fig.subplots(1, len(tasks), squeeze=False)[0], tasks):
        for v, points in curves[task]:
            steps, mean, low, high, n = (np.asarray(c, dtype=np.float64) for c in zip(*points))
            ax.plot(steps, mean, marker="o", ms=4, color=colors[v.name], label=f"{v.name} (n={int(n.max())})")
            if np.isfinite(low).any():
                ax.fill_between(steps, low, high, color=colors[v.name], alpha=0.18, lw=0)
        _unit_margin(ax)
        _style(ax, f"held-out accuracy on {task} (band: 95% interval)", RL_STEP, "held-out accuracy (pass@1)")
        ax.legend(fontsize=8, loc="best")
    _save(fig, out / "eval_accuracy.png")
    return [("eval_accuracy.png", "held-out accuracy over training: mean over seeds; band = 95% bootstrap interval "
                                  "across seeds (one seed: its Wilson interval over the problems)")]


def plot_eur_entropy(variants: Sequence[Variant], out: Path) -> list[tuple[str, str]]:
    """Per-step (EUR, entropy) points per variant, and each run's mean as a large marker."""
    return _eur_scatter(variants, out / "eur_vs_entropy.png", "policy/entropy", "policy entropy (nats/token)",
                        "EUR against policy entropy; the paper finds lower EUR with higher entropy")


def plot_eur_drift(variants: Sequence[Variant], out: Path) -> list[tuple[str, str]]:
    """Per-step (EUR, measured drift KL(pi_old || pi_theta)) points per variant, and each run's mean."""
    return _eur_scatter(variants, out / "eur_vs_drift.png", "policy/approx_kl",
                        "drift KL(old || new) per update (k3)",
                        "EUR against the measured drift KL(pi_old || pi_theta): does a lower EUR mean a smaller move?")


def _eur_scatter(variants: Sequence[Variant], path: Path, key: str, ylabel: str, caption: str) -> list[tuple[str, str]]:
    colors = _colors([v.name for v in variants])
    fig = _figure(6.5, 4.5)
    ax = fig.add_subplot()
    any_points = False
    for v in variants:
        first = True
        for r in v.runs:
            xy = np.asarray([(m.get("gate/eur"), m.get(key)) for m in r.metrics],
                            dtype=np.float64).reshape(-1, 2)  # (n_steps, 2); a missing value is NaN
            x, y = xy[np.isfinite(xy).all(axis=1)].T  # (n_points,) each
            if not x.size:
                continue
            ax.scatter(x, y, s=16, alpha=0.55, color=colors[v.name], edgecolor="white", lw=0.3)
            ax.scatter([x.mean()], [y.mean()], s=60, color=colors[v.name], edgecolor="black",
                       label=v.name if first else None, zorder=3)
            first, any_points = False, True
    if not any_points:
        return []
    _style(ax, f"EUR vs {ylabel.split(' (')[0]} (small: per RL step; large: per-run mean)",
           "EUR (Eq. 12), off-policy updates", ylabel)
    ax.legend(fontsize=7)
    _save(fig, path)
    return [(path.name, caption)]


def updates_since_rollout(metrics: Sequence[dict[str, Any]]) -> np.ndarray:
    """For each optimizer-step line of a run, how many optimizer steps separate the policy being updated from the
    one that sampled its rollout: ``rollout/policy_lag + policy/iteration * M + policy/minibatch``, with M the run's
    minibatches per pass (1 + the largest ``policy/minibatch`` it logged). Shape (n_lines,); NaN where a line lacks
    the keys. 0 is the on-policy update (r = 1 exactly)."""
    minibatches = 1 + max((int(m["policy/minibatch"]) for m in metrics if m.get("policy/minibatch") is not None),
                          default=0)
    index = [float(m.get("rollout/policy_lag") or 0) + m["policy/iteration"] * minibatches + m["policy/minibatch"]
             if m.get("policy/iteration") is not None and m.get("policy/minibatch") is not None else np.nan
             for m in metrics]
    return np.asarray(index, dtype=np.float64)


RATIO_QUANTILES = ("gate/ratio_p05", "gate/ratio_p50", "gate/ratio_p95")


def ratio_by_update(variant: Variant) -> tuple[np.ndarray, np.ndarray] | None:
    """Token-ratio quantiles against updates since the rollout, for one variant: (indices (n,), quantiles (n, 3))
    with columns p05, p50, p95, each the mean over every logged update at that index (all RL steps, all seeds)."""
    rows = []
    for r in variant.runs:
        index = updates_since_rollout(r.updates)
        q = np.asarray([[m.get(k) if m.get(k) is not None else np.nan for k in RATIO_QUANTILES]
                        for m in r.updates], dtype=np.float64).reshape(-1, 3)  # (n_lines, 3)
        keep = np.isfinite(index) & np.isfinite(q).all(axis=1)
        rows += [(i, *qs) for i, qs in zip(index[keep], q[keep])]
    if not rows:
        return None
    table = np.asarray(rows)  # (n_points, 4)
    indices = np.unique(table[:, 0])
    means = np.stack([table[table[:, 0] == i, 1:].mean(axis=0) for i in indices])
    return indices, means


def plot_ratio_by_update(variants: Sequence[Variant], out: Path) -> list[tuple[str, str]]:
    """Where the ratio goes as a rollout ages: p05, p50, p95 of the token ratio r against the number of optimizer
    steps since the policy that sampled it (``ratio_by_update``); one colour per variant, p50 solid, p05 and p95
    dashed. Drawn when some variant made updates at two or more indices."""
    curves = [(v, c) for v in variants if (c := ratio_by_update(v)) is not None and c[0].size > 1]
    if not curves:
        return []
    colors = _colors([v.name for v in variants])
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    for v, (indices, q) in curves:
        ax.plot(indices, q[:, 1], marker="o", ms=4, color=colors[v.name], label=v.name, lw=1.6)
        for column in (0, 2):
            ax.plot(indices, q[:, column], ls="--", color=colors[v.name], lw=1.0)
    ax.axhline(1.0, color="grey", lw=0.8, zorder=0)
    _style(ax, "token ratio r by update since the rollout (solid: median; dashed: 5th and 95th percentiles)",
           "optimizer steps since the sampling policy (staleness + updates on this rollout)", "importance ratio r")
    ax.legend(fontsize=7, loc="best")
    _save(fig, out / "ratio_by_update.png")
    return [("ratio_by_update.png", "token-ratio quantiles (p05, p50, p95; mean over RL steps and seeds) against the "
                                    "optimizer steps since the policy that sampled the rollout; 0 = on-policy")]


def plot_stability_map(cells: dict[str, dict[tuple[float, int], Cell]], out: Path) -> list[tuple[str, str]]:
    """Learning rate (x) x staleness (y), one panel per gate; colour = mean final minus initial held-out accuracy,
    its value written in the cell, and "x c/n" under it where c of the cell's n runs collapsed
    (``softgate.report.stability``). Columns name the update regimes (passes x minibatches) of their runs when
    the runs' configs give them. Drawn when some gate was run at two or more (lr, staleness) pairs."""
    from matplotlib import colormaps
    from matplotlib.colors import TwoSlopeNorm

    if not any(len(by_key) > 1 for by_key in cells.values()):
        return []
    lrs = sorted({lr for by_key in cells.values() for lr, _ in by_key})
    lags = sorted({k for by_key in cells.values() for _, k in by_key})
    regimes = {lr: sorted({r for by_key in cells.values() for (x, _), c in by_key.items() if x == lr
                           for r in c.regimes}) for lr in lrs}
    span = max(abs(c.mean_delta) for by_key in cells.values() for c in by_key.values()) or 1.0
    norm, cmap = TwoSlopeNorm(0.0, -span, span), colormaps["RdBu"]
    fig = _figure(1.2 + 1.3 * len(lrs) * len(cells) + 1.0, 1.6 + 0.8 * len(lags))
    axes = fig.subplots(1, len(cells), squeeze=False)[0]
    for ax, (gate, by_key) in zip(axes, cells.items()):
        grid = np.full((len(lags), len(lrs)), np.nan)  # (staleness, lr)
        for (lr, k), cell in by_key.items():
            i, j = lags.index(k), lrs.index(lr)
            grid[i, j] = cell.mean_delta
            ink = "white" if abs(cell.mean_delta) > 0.6 * span else "black"  # readable on dark cells
            ax.text(j, i + (0.15 if cell.collapsed else 0.0), f"{cell.mean_delta:+.2f}", ha="center",
                    va="center", fontsize=9, color=ink)
            if cell.collapsed:
                ax.text(j, i - 0.2, f"\u00d7 {cell.collapsed}/{len(cell.deltas)}", ha="center", va="center",
                        fontsize=8, fontweight="bold", color=ink)
        image = ax.imshow(grid, cmap=cmap, norm=norm, origin="lower", aspect="auto")
        ax.set_xticks(range(len(lrs)), [f"{lr:g}" + (f"\n{', '.join(regimes[lr])}" if regimes[lr] else "")
                                        for lr in lrs])
        ax.set_yticks(range(len(lags)), [str(k) for k in lags])
        ax.set_title(gate, fontsize=9)
        ax.set_xlabel("learning rate" + ("\n(passes x minibatches per rollout)" if any(regimes.values()) else ""))
    axes[0].set_ylabel("staleness k (optimizer steps)")
    fig.colorbar(image, ax=list(axes), label="held-out accuracy, final minus initial")
    _save(fig, out / "stability_map.png")
    return [("stability_map.png", "stability map: learning rate x staleness per gate; colour = final minus initial "
                                  "held-out accuracy (mean over seeds, written in the cell); \u00d7 c/n = c of n runs "
                                  "collapsed (final < 50% of initial)")]


def plot_gate_shapes(variants: Sequence[Variant], out: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """f, f', x f'(x) of the gates present, each at its own parameters; (figures, notes). A gate this process
    cannot build (a user gate registered elsewhere) is left out with a note; a failing figure is a note too."""
    notes: list[str] = []
    built: list[gates_mod.Gate] = []
    for spec in dict.fromkeys(v.gate for v in variants if v.gate is not None):
        try:
            built.append(spec.build())
        except (ValueError, TypeError, KeyError) as err:
            notes.append(f"gate shape figure: {spec} left out: {err}")
    if not built:
        return [], notes + ["gate shape figure skipped: no gate this process can build in the runs"]
    try:
        plot_gates(built, taus=None, out=out / "gates.png")  # taus=None: each gate at its runs' temperatures
    except Exception as err:  # a plotting failure must not lose the rest of the report
        return [], notes + [f"gate shape figure skipped: plot_gates failed: {type(err).__name__}: {err}"]
    if not (out / "gates.png").is_file():
        return [], notes + ["gate shape figure skipped: plot_gates wrote no file"]
    return [("gates.png", "gate shapes: f, f' and x f'(x) for the gates in these runs, at their own "
                          "parameters (positive-advantage branch: tau_pos)")], notes
