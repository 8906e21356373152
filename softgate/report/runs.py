"""Runs and variants of a report: run directories read through ``softgate.rundir``, grouped by gate.

A run's variant is its gate's label (``GateSpec.label``: ``sigmoid-10-12``, ``student-10-12-8``), so two runs
share a variant exactly when they share a gate, whatever parameters the gate has; when the runs of a report come
from more than one engine (run.json's ``engine``: native, trl), the label carries the engine
(``sigmoid-10-12@trl``), so that the same gate on two engines is two variants side by side. A run that belongs to
a sweep (``sweep.json`` above it) takes its cell's variant name instead (a sweep over ``engine`` names it in the
cell). Bare logs (no run.json, no config.yaml) are named after their directory.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from softgate import gates
from softgate.gates import GateSpec
from softgate.rundir import METRICS_JSONL, RUN_JSON, RunDir, RunInfo, discover_runs, per_rl_step
from softgate.sweep.manifest import read_manifest

# Runs whose figures are final: finished ones, and logs without run.json (nothing says they are not).
STATS_STATUSES = ("finished", "unknown")
BASELINE_GATE = "clip"  # GRPO: the reference of the paired differences
_SEED_DIR = re.compile(r"seed[_-]?(\d+)")


class ReportError(ValueError):
    """Nothing to report on (a path without runs); the message names the path."""


@dataclass
class Run:
    """One run directory, as far as its files tell."""

    path: Path
    info: RunInfo | None  # run.json, None for bare logs
    config: dict[str, Any]  # config.yaml, {} when absent
    metrics: list[dict[str, Any]]  # one row per RL step (per logged step for logs without rl_step)
    evals: list[dict[str, Any]]  # eval.jsonl
    summary: dict[str, Any] | None  # summary.json
    gate: GateSpec | None
    seed: Any
    variant: str
    step_unit: str = "step"  # "RL step" when the metrics were grouped by rl_step
    cell: str | None = None  # sweep cell name when the run belongs to a sweep manifest
    label: str = ""  # path shown in tables
    updates: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl as written: one row per update

    @property
    def status(self) -> str:
        """finished | running | interrupted | failed, or unknown (no run.json)."""
        return self.info.status if self.info else "unknown"

    @property
    def engine(self) -> str:
        """Who trained it: run.json's engine, else config.yaml's, else native (runs from before engines)."""
        return self.info.engine if self.info else str(self.config.get("engine") or "native")

    @property
    def steps(self) -> int | None:
        return self.info.steps if self.info else self.config.get("steps")

    @property
    def task(self) -> str | None:
        task = self.info.task if self.info else (self.config.get("task") or {}).get("name")
        return str(task).lower() if task else None

    @property
    def last_step(self) -> int | None:
        """Steps done: run.json's last_step (RL steps), else the last logged step."""
        if self.info is not None:
            return self.info.last_step
        return int(self.metrics[-1]["step"]) if self.metrics else None

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of a per-step metric, skipping steps where it is missing or not finite.

        Shapes: steps (n,), values (n,).
        """
        points = [(float(row["step"]), float(v)) for row in self.metrics
                  if isinstance(v := row.get(key), (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        steps, values = zip(*points) if points else ((), ())
        return np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)


def step_unit(runs: Iterable[Run]) -> str:
    """The unit of the runs' steps: "RL step" when every run's metrics were grouped per RL step, else "step"."""
    units = {r.step_unit for r in runs if r.metrics}
    return units.pop() if len(units) == 1 else "step"


def gate_of(info: RunInfo | None, config: dict[str, Any]) -> GateSpec | None:
    """The run's gate: run.json's ``{"name", "params"}``, else config.yaml's gate section.

    Defaults are filled by the registry, so a run that left a parameter at its default and one that wrote it out
    are the same gate. A gate this process does not know (a user gate registered in the training script) is kept
    as run.json wrote it.
    """
    data = info.gate if info else config.get("gate")
    if not isinstance(data, dict):
        return None
    try:
        return GateSpec.from_dict(data)
    except ValueError:
        return GateSpec(info.gate["name"], dict(info.gate["params"])) if info else None


def _seed_of(path: Path, info: RunInfo | None, config: dict[str, Any]) -> Any:
    if info is not None and info.seed is not None:
        return info.seed
    if config.get("seed") is not None:
        return config["seed"]
    m = _SEED_DIR.search(path.name)
    return int(m.group(1)) if m else None


def load_run(path: str | os.PathLike[str]) -> Run:
    """Read one run directory (``softgate.rundir.RunDirError`` for an unreadable file)."""
    run_dir = RunDir(path)
    info, config = run_dir.read_info(), run_dir.read_config()
    updates = run_dir.read_metrics()
    metrics, unit = updates, "step"
    if updates and all("rl_step" in r for r in updates):
        metrics, unit = per_rl_step(updates), "RL step"
    gate = gate_of(info, config)
    if gate is not None:
        variant = gate.label
    elif _SEED_DIR.fullmatch(run_dir.path.name):  # bare logs: a seedN directory is named after its variant's
        variant = run_dir.path.parent.name
    else:
        variant = run_dir.path.name
    return Run(run_dir.path, info, config, metrics, run_dir.read_evals(), run_dir.read_summary(), gate,
               _seed_of(run_dir.path, info, config), variant, step_unit=unit, updates=updates)


def find_runs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Run directories at or below each path, sorted and unique; a path without runs is a ``ReportError``."""
    found: dict[Path, None] = {}
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            raise ReportError(f"{root}: no such file or directory")
        if root.is_file():
            if root.name not in (RUN_JSON, METRICS_JSONL):
                raise ReportError(f"{root}: expected a run directory or a directory of runs, got a file")
            root = root.parent
        here = list(discover_runs([root]))
        if not here:
            raise ReportError(f"{root}: no runs found (looked for {RUN_JSON} or {METRICS_JSONL} in it and in its "
                              "subdirectories)")
        found.update((p.resolve(), None) for p in here)
    return sorted(found)


def _apply_manifests(runs: list[Run]) -> None:
    """Name runs that belong to a sweep (``sweep.json`` in an ancestor directory) after their cells."""
    cache: dict[Path, dict[str, dict[str, Any]]] = {}
    for run in runs:
        for ancestor in run.path.parents:
            if ancestor not in cache:
                cache[ancestor] = read_manifest(ancestor)
            cell = cache[ancestor].get(run.path.relative_to(ancestor).as_posix())
            if cell is not None:
                run.cell = str(cell.get("name") or run.path.name)
                run.variant = str(cell.get("variant") or run.variant)
                if cell.get("seed") is not None:
                    run.seed = cell["seed"]
                break


def load_runs(paths: Iterable[str | os.PathLike[str]]) -> list[Run]:
    """Discover and load every run under ``paths``; name sweep cells; set display labels."""
    runs = [load_run(d) for d in find_runs(paths)]
    if len({run.engine for run in runs}) > 1:  # the same gate on two engines: two variants
        for run in runs:
            run.variant = f"{run.variant}@{run.engine}"
    _apply_manifests(runs)
    common = Path(os.path.commonpath([str(r.path) for r in runs]))
    for run in runs:
        rel = run.path.relative_to(common).as_posix() if len(runs) > 1 else run.path.name
        run.label = rel if rel not in ("", ".") else run.path.name
    return runs


@dataclass
class Variant:
    """The runs of one gate (or sweep variant) across seeds."""

    name: str
    runs: list[Run]  # every run of the variant (plots)
    stat_runs: list[Run]  # the runs that enter the statistics

    @property
    def gate(self) -> GateSpec | None:
        """The gate all its runs share (None when they differ or none is known)."""
        specs = {r.gate for r in self.runs}
        return specs.pop() if len(specs) == 1 else None

    @property
    def is_baseline(self) -> bool:
        """GRPO, the reference of the paired differences: the clip gate."""
        return self.gate is not None and self.gate.name == BASELINE_GATE


def group_variants(runs: Sequence[Run], include_partial: bool = False) -> list[Variant]:
    """Variants in a stable order: the baseline (GRPO) first, then by gate in registry order, then by first
    appearance; runs within a variant by seed."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.variant, []).append(run)
    variants = []
    for name, members in groups.items():
        members.sort(key=lambda r: (str(type(r.seed)), r.seed if r.seed is not None else -1, r.label))
        keep = [r for r in members if include_partial or r.status in STATS_STATUSES]
        variants.append(Variant(name, members, keep))
    registry = {name: i for i, name in enumerate(gates.names())}
    appearance = {name: i for i, name in enumerate(groups)}

    def key(v: Variant) -> tuple[int, int, int]:
        family = registry.get(v.gate.name, len(registry)) if v.gate else len(registry)
        return (0 if v.is_baseline else 1, family, appearance[v.name])

    return sorted(variants, key=key)


def mixed_gate_notes(variants: Sequence[Variant]) -> list[str]:
    """A note per variant whose runs have different gates (a sweep variant name that pools several gates)."""
    notes = []
    for v in variants:
        specs = list(dict.fromkeys(str(r.gate) for r in v.runs if r.gate is not None))
        if len(specs) > 1:
            notes.append(f"variant {v.name} pools runs of different gates: {', '.join(specs)}")
    return notes
