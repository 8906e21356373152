"""The stability map of ``softgate report``: learning rate x staleness, one panel per gate.

Each cell pools the runs of one gate at one (``optim.lr``, ``algo.staleness``) pair, read from their config.yaml:
the change of held-out accuracy from the step-0 evaluation to the last one (final minus initial, mean over seeds)
and how many of those runs collapsed. Each cell also names the update regimes of its runs (``algo.num_iterations``
x ``algo.minibatches``, e.g. "4x4"): a map that joins sweeps run with different regimes labels its columns with
them instead of passing them off as a pure learning-rate axis. A run **collapsed** when its final held-out
accuracy is below ``COLLAPSE_FRACTION`` (one half) of its initial one: training destroyed at least half of what the
warm start could do (docs/sweeps.md). Runs without both evaluations, a gate or a config.yaml are left out of the
map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from softgate.report.runs import Run
from softgate.report.tables import final_eval, start_eval

COLLAPSE_FRACTION = 0.5


@dataclass
class Cell:
    """The runs of one gate at one (learning rate, staleness) pair."""

    deltas: list[float] = field(default_factory=list)  # final minus initial held-out accuracy, one per run
    collapsed: int = 0  # runs whose final accuracy < COLLAPSE_FRACTION x initial
    regimes: set[str] = field(default_factory=set)  # "passes x minibatches" of its runs, e.g. {"2x2"}

    @property
    def mean_delta(self) -> float:
        return sum(self.deltas) / len(self.deltas)


def collapsed(initial: float, final: float) -> bool:
    """True when the final held-out accuracy fell below ``COLLAPSE_FRACTION`` of the initial one."""
    return final < COLLAPSE_FRACTION * initial


def stability_cells(runs: Sequence[Run]) -> dict[str, dict[tuple[float, int], Cell]]:
    """{gate label: {(learning rate, staleness): Cell}} over the runs that evaluated before and after training
    (on the first task both evaluations share)."""
    out: dict[str, dict[tuple[float, int], Cell]] = {}
    for run in runs:
        start, end = start_eval(run), final_eval(run)
        tasks = [t for t in start if t in end]
        if run.gate is None or not tasks:
            continue
        lr, staleness = (run.config.get("optim") or {}).get("lr"), (run.config.get("algo") or {}).get("staleness", 0)
        if lr is None:  # no config.yaml: the learning rate is unknown
            continue
        key = (float(lr), int(staleness))
        cell = out.setdefault(run.gate.label, {}).setdefault(key, Cell())
        initial, final = start[tasks[0]], end[tasks[0]]
        cell.deltas.append(final - initial)
        cell.collapsed += collapsed(initial, final)
        regime = update_regime(run.config)
        if regime is not None:
            cell.regimes.add(regime)
    return out


def update_regime(config: dict) -> str | None:
    """"passes x minibatches" per rollout from a run's config (e.g. "4x4"), or None when the config lacks them."""
    algo = config.get("algo") or {}
    passes, minibatches = algo.get("num_iterations"), algo.get("minibatches")
    return None if passes is None or minibatches is None else f"{passes}x{minibatches}"
