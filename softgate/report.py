"""``softgate report``: figures and tables comparing runs, grouped into variants (gate + temperatures) and seeds.

Input: run directories (the layout of docs/design.md) or any directory above them (a sweep). Output in ``OUT``:

- ``gates.png``                    f, f', x f'(x) of the gates present (``softgate.plotting.plot_gates``)
- ``curve_<metric>.png``           per-step curves, one line per variant (mean over seeds), band = min..max
- ``eur_vs_entropy.png``           EUR against policy entropy (the paper's relation: lower EUR, higher entropy)
- ``summary.md``                   the tables (Markdown) with the figures linked by relative path
- ``report.html``                  one self-contained page: the same tables, figures embedded as base64
- ``report.json``                  the numbers behind the tables

Conventions (also in docs/sweeps.md):
- Steps: metrics with ``rl_step`` (the trainer's) are grouped per RL step; ``gate/*`` figures then average the
  off-policy updates only (see ``per_rl_step``).
- Smoothing: a trailing mean over the last ``smooth`` logged steps (default 5); trailing so that a threshold
  crossing is never reported before the data that caused it.
- "final" training value of a metric: the mean of its last ``max(smooth, ceil(10% of logged steps))`` values.
- Steps to format: the first step at which the smoothed ``reward/format`` is >= the threshold (0.9).
- Held-out accuracy: the last eval.jsonl entry per ``eval/task`` (summary.json when there is no eval.jsonl).
- Across seeds: mean with a 95% percentile bootstrap CI (``softgate.intervals``); differences against GRPO (the
  ``clip`` gate) are paired by seed.
- Statistics use finished runs (and runs with logs only); running/failed runs are listed and plotted but left
  out of the tables unless ``include_partial``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from softgate import intervals

RUN_SCHEMA = 1
CURVE_METRICS: tuple[tuple[str, str], ...] = (
    ("reward/total", "total reward"),
    ("reward/format", "format reward"),
    ("train/accuracy", "training accuracy"),
    ("gate/eur", "EUR (effective update ratio)"),
    ("policy/entropy", "policy entropy (nats/token)"),
    ("response/length_mean", "mean response length (tokens)"),
)
# Table 1 of the paper: task name in eval.jsonl -> column title.
PAPER_TASKS = {"gsm8k": "GSM8K", "math500": "MATH500", "aime": "AIME"}
DEFAULT_TASK = "held-out"
STATS_STATUSES = ("finished", "unknown")
_SKIP_DIRS = {"checkpoints", "plots", "__pycache__"}
_GATE_ORDER = ("clip", "sigmoid", "erf", "arctan", "softsign")


class ReportError(ValueError):
    """Nothing to report on, or an unreadable log; the message names the path."""


class IncompatibleRunError(ReportError):
    """Logs written by a softgate whose run-directory schema this version does not read."""


# ----------------------------------------------------------------------------------------------------------------
# Loading runs


@dataclass
class Run:
    """One run directory, as far as its files tell."""

    path: Path
    info: dict[str, Any]  # run.json, {} when absent
    config: dict[str, Any]  # config.yaml, {} when absent
    metrics: list[dict[str, Any]]  # metrics.jsonl, one dict per step
    evals: list[dict[str, Any]]  # eval.jsonl
    summary: dict[str, Any] | None  # summary.json
    status: str  # finished | running | failed | unknown (no run.json)
    gate: str | None
    params: dict[str, float]  # tau_pos/tau_neg or eps_low/eps_high
    seed: Any
    step_unit: str = "step"  # "RL step" when metrics were grouped by rl_step (see per_rl_step)
    variant: str = ""
    cell: str | None = None  # sweep cell name when the run belongs to a sweep manifest
    label: str = ""  # path shown in tables

    @property
    def last_step(self) -> int | None:
        """Steps done: run.json's last_step (RL steps), else the last logged step."""
        step = _number(self.info.get("last_step"))
        if step is not None:
            return int(step)
        return int(self.metrics[-1]["step"]) if self.metrics else None

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of a per-step metric, skipping steps where it is missing or not finite.

        Shapes: steps (n,), values (n,).
        """
        steps, values = [], []
        for row in self.metrics:
            v = row.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                steps.append(float(row["step"]))
                values.append(float(v))
        return np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)


def _read_jsonl(path: Path, *, require_step: bool) -> list[dict[str, Any]]:
    """Read a JSONL log. A truncated last line (a run being written) is dropped; other bad lines are errors."""
    rows: list[dict[str, Any]] = []
    lines = path.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines):
                break  # the writer was interrupted mid-line
            raise ReportError(f"{path}:{i}: not a JSON object ({err.msg})") from None
        if not isinstance(row, dict):
            raise ReportError(f"{path}:{i}: expected a JSON object per line, got {type(row).__name__}")
        if require_step and "step" not in row:
            raise IncompatibleRunError(
                f"{path}:{i}: no 'step' key; these logs do not follow run-directory schema {RUN_SCHEMA} "
                "(written by an incompatible softgate version?)"
            )
        rows.append(row)
    return rows


def per_rl_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per RL step from the trainer's one row per optimizer step (rows carry ``rl_step``).

    An RL step samples one rollout batch and makes ``num_iterations x minibatches`` optimizer steps; the rollout
    figures (reward/*, train/*, response/*) repeat on each of them, so the mean is that value. ``gate/*`` figures
    are averaged over the off-policy updates only (``policy/iteration > 0`` or ``policy/minibatch > 0``): the
    first minibatch of the first pass is on-policy (r = 1, EUR = 1 for every gate) and would only dilute the
    differences between gates. Other keys are averaged over all updates. ``step`` becomes the RL step.
    """
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["rl_step"], []).append(row)
    out = []
    for rl_step in sorted(groups):
        members = groups[rl_step]
        off = [r for r in members if (_number(r.get("policy/iteration")) or 0) > 0
               or (_number(r.get("policy/minibatch")) or 0) > 0]
        merged: dict[str, Any] = {"step": rl_step}
        for key in dict.fromkeys(k for r in members for k in r):
            if key in ("step", "rl_step"):
                continue
            source = off if (key.startswith("gate/") and off) else members
            values = [v for v in (_number(r.get(key)) for r in source) if v is not None]
            if values:
                merged[key] = sum(values) / len(values)
        out.append(merged)
    return out


def is_run_dir(path: Path) -> bool:
    return (path / "run.json").is_file() or (path / "metrics.jsonl").is_file()


def discover_runs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Run directories at or below each path (a directory with run.json or metrics.jsonl), sorted, unique."""
    found: list[Path] = []
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            raise ReportError(f"{root}: no such file or directory")
        if root.is_file():
            if root.name in ("run.json", "metrics.jsonl"):
                root = root.parent
            else:
                raise ReportError(f"{root}: expected a run directory or a directory of runs, got a file")
        here: list[Path] = []
        if is_run_dir(root):
            here.append(root)
        else:
            for dirpath, dirnames, _ in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
                d = Path(dirpath)
                if d != root and is_run_dir(d):
                    here.append(d)
                    dirnames[:] = []  # a run directory does not hold other runs
        if not here:
            raise ReportError(
                f"{root}: no runs found (looked for run.json or metrics.jsonl in it and in its subdirectories)"
            )
        found.extend(here)
    unique: dict[Path, None] = {}
    for p in found:
        unique.setdefault(p.resolve(), None)
    return sorted(unique)


def _dig(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def load_run(path: str | os.PathLike[str]) -> Run:
    """Read one run directory; ``IncompatibleRunError`` for another schema."""
    path = Path(path)
    info: dict[str, Any] = {}
    if (path / "run.json").is_file():
        try:
            info = json.loads((path / "run.json").read_text())
        except json.JSONDecodeError as err:
            raise ReportError(f"{path / 'run.json'}: not valid JSON ({err.msg})") from None
        if not isinstance(info, dict):
            raise ReportError(f"{path / 'run.json'}: expected a JSON object")
        if info.get("schema") != RUN_SCHEMA:
            raise IncompatibleRunError(
                f"{path / 'run.json'}: schema {info.get('schema')!r}, but this softgate reads schema {RUN_SCHEMA} "
                "(the run was written by an incompatible softgate version)"
            )
    config: dict[str, Any] = {}
    if (path / "config.yaml").is_file():
        try:
            loaded = yaml.safe_load((path / "config.yaml").read_text())
        except yaml.YAMLError as err:
            raise ReportError(f"{path / 'config.yaml'}: not valid YAML: {err}") from None
        config = loaded if isinstance(loaded, dict) else {}
    metrics = _read_jsonl(path / "metrics.jsonl", require_step=True) if (path / "metrics.jsonl").is_file() else []
    metrics.sort(key=lambda r: r["step"])
    step_unit = "step"
    if metrics and all("rl_step" in r for r in metrics):
        metrics, step_unit = per_rl_step(metrics), "RL step"
    evals = _read_jsonl(path / "eval.jsonl", require_step=True) if (path / "eval.jsonl").is_file() else []
    summary = None
    if (path / "summary.json").is_file():
        try:
            summary = json.loads((path / "summary.json").read_text())
        except json.JSONDecodeError as err:
            raise ReportError(f"{path / 'summary.json'}: not valid JSON ({err.msg})") from None

    status = str(info.get("status", "unknown")) if info else "unknown"
    gate = info.get("gate") or _dig(config, "gate.name")
    params: dict[str, float] = {}
    for name in ("tau_pos", "tau_neg", "eps_low", "eps_high"):
        value = _number(info.get(name))
        if value is None:
            value = _number(_dig(config, f"gate.{name}"))
        if value is None and name.startswith("tau") and metrics:
            value = _number(metrics[0].get(f"gate/{name}"))
        if value is not None:
            params[name] = value
    seed = info.get("seed", config.get("seed"))
    if seed is None:
        m = re.search(r"seed[_-]?(\d+)", path.name)
        seed = int(m.group(1)) if m else None
    run = Run(path, info, config, metrics, evals, summary if isinstance(summary, dict) else None, status,
              str(gate) if gate else None, params, seed, step_unit=step_unit)
    run.variant = default_variant(run)
    return run


def _g(x: float) -> str:
    return f"{x:g}"


def default_variant(run: Run) -> str:
    """Variant name from the gate and its parameters: ``grpo-eps0.2``, ``sigmoid-10-12``; else the directory."""
    p = run.params
    if run.gate == "clip":
        lo, hi = p.get("eps_low"), p.get("eps_high")
        if lo is None and hi is None:
            return "grpo"
        if lo == hi or hi is None or lo is None:
            return f"grpo-eps{_g(lo if lo is not None else hi)}"  # type: ignore[arg-type]
        return f"grpo-eps{_g(lo)}-{_g(hi)}"
    if "tau_pos" in p or "tau_neg" in p:
        taus = "-".join(_g(p[k]) for k in ("tau_pos", "tau_neg") if k in p)
        return f"{run.gate}-{taus}" if run.gate else f"tau{taus}"
    if run.gate:
        return run.gate
    # Logs alone: a seedN directory is named after its variant's directory.
    if re.fullmatch(r"seed[_-]?\d+", run.path.name):
        return run.path.parent.name
    return run.path.name


def _apply_manifests(runs: list[Run]) -> None:
    """Label runs that belong to a sweep (``sweep.json`` in an ancestor directory) with their cell's names."""
    cache: dict[Path, dict[str, dict[str, Any]] | None] = {}
    for run in runs:
        for ancestor in run.path.parents:
            if ancestor not in cache:
                manifest = ancestor / "sweep.json"
                cells = None
                if manifest.is_file():
                    try:
                        data = json.loads(manifest.read_text())
                        cells = {c["run_dir"]: c for c in data.get("cells", []) if isinstance(c, dict)}
                    except (json.JSONDecodeError, KeyError, AttributeError):
                        cells = None
                cache[ancestor] = cells
            cells = cache[ancestor]
            if not cells:
                continue
            rel = run.path.relative_to(ancestor).as_posix()
            if rel in cells:
                cell = cells[rel]
                run.cell = str(cell.get("name", rel))
                run.variant = str(cell.get("variant") or run.variant)
                if cell.get("seed") is not None:
                    run.seed = cell["seed"]
                break


def load_runs(paths: Iterable[str | os.PathLike[str]]) -> list[Run]:
    """Discover and load every run under ``paths``; label sweep cells; set display labels."""
    dirs = discover_runs(paths)
    runs = [load_run(d) for d in dirs]
    _apply_manifests(runs)
    common = Path(os.path.commonpath([str(r.path) for r in runs]))
    for run in runs:
        rel = run.path.relative_to(common).as_posix() if len(runs) > 1 else run.path.name
        run.label = rel if rel not in ("", ".") else run.path.name
    return runs


# ----------------------------------------------------------------------------------------------------------------
# Per-run numbers


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean: ``out[i] = mean(values[max(0, i - window + 1) : i + 1])``.

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


def steps_to_threshold(steps: np.ndarray, values: np.ndarray, threshold: float, window: int) -> float | None:
    """First step at which the trailing mean of ``values`` reaches ``threshold``; None if it never does."""
    if values.size == 0:
        return None
    hit = np.nonzero(smooth(values, window) >= threshold)[0]
    return float(steps[hit[0]]) if hit.size else None


def final_value(values: np.ndarray, window: int) -> float | None:
    """Mean of the last ``max(window, ceil(10% of n))`` values (None when there are none)."""
    if values.size == 0:
        return None
    k = max(window, math.ceil(0.1 * values.size))
    return float(values[-k:].mean())


def _task_of(row: dict[str, Any]) -> str:
    task = row.get("eval/task")
    return str(task).lower() if task else DEFAULT_TASK


def final_eval(run: Run) -> dict[str, float]:
    """{task: accuracy in [0, 1]} from the last eval.jsonl entry per task, else from summary.json."""
    out: dict[str, tuple[float, float]] = {}
    for row in run.evals:
        acc = _number(row.get("eval/accuracy"))
        if acc is None:
            continue
        task = _task_of(row)
        step = float(row["step"])
        if task not in out or step >= out[task][0]:
            out[task] = (step, acc)
    if out:
        return {task: acc for task, (_, acc) in out.items()}
    return _summary_eval(run.summary, ("eval_end", "end", "final"), _default_task(run))


def start_eval(run: Run) -> dict[str, float]:
    """{task: accuracy} of the model before training: eval.jsonl entries at step 0, else summary.json's start."""
    out = {_task_of(r): float(r["eval/accuracy"]) for r in run.evals
           if r.get("step") == 0 and _number(r.get("eval/accuracy")) is not None}
    return out or _summary_eval(run.summary, ("eval_start", "start", "initial"), _default_task(run))


def _default_task(run: Run) -> str:
    task = run.info.get("task") or _dig(run.config, "task.name")
    return str(task).lower() if task else DEFAULT_TASK


def _summary_eval(summary: dict[str, Any] | None, names: Sequence[str], task: str) -> dict[str, float]:
    """Accuracies from summary.json: ``{"eval_end": {"accuracy": ..}}`` (the trainer's), ``{"end": {..}}`` or
    ``{"end": {task: {"accuracy": ..}}}``; ``task`` names the single-task case."""
    if not summary:
        return {}
    for name in names:
        block = summary.get(name)
        if not isinstance(block, dict):
            continue
        acc = _number(block.get("eval/accuracy", block.get("accuracy")))
        if acc is not None:
            return {_task_of(block) if block.get("eval/task") else task: acc}
        found = {}
        for task, sub in block.items():
            if isinstance(sub, dict):
                acc = _number(sub.get("eval/accuracy", sub.get("accuracy")))
                if acc is not None:
                    found[str(task).lower()] = acc
        if found:
            return found
    return {}


# ----------------------------------------------------------------------------------------------------------------
# Grouping and tables


@dataclass
class Variant:
    name: str
    runs: list[Run]  # every run of the variant (plots)
    stat_runs: list[Run]  # the runs that enter the statistics

    @property
    def gate(self) -> str | None:
        gates = {r.gate for r in self.runs if r.gate}
        return gates.pop() if len(gates) == 1 else None

    @property
    def params(self) -> dict[str, float]:
        return self.runs[0].params

    @property
    def is_grpo(self) -> bool:
        return self.gate == "clip" or (self.gate is None and self.name.lower().startswith("grpo"))


def group_variants(runs: Sequence[Run], include_partial: bool = False) -> list[Variant]:
    """Variants in a stable order: GRPO first, then by gate family, then by first appearance."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.variant, []).append(run)
    variants = []
    for name, members in groups.items():
        members.sort(key=lambda r: (str(type(r.seed)), r.seed if r.seed is not None else -1, r.label))
        keep = [r for r in members if include_partial or r.status in STATS_STATUSES]
        variants.append(Variant(name, members, keep))
    order = {name: i for i, name in enumerate(groups)}

    def key(v: Variant) -> tuple[int, int, int]:
        g = v.gate or ("clip" if v.is_grpo else "")
        fam = _GATE_ORDER.index(g) if g in _GATE_ORDER else len(_GATE_ORDER)
        return (0 if v.is_grpo else 1, fam, order[v.name])

    return sorted(variants, key=key)


@dataclass
class Table:
    """A rendered table: header cells and rows of strings, plus a note under it."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""

    def markdown(self) -> str:
        def esc(s: str) -> str:
            return s.replace("|", "\\|")

        lines = [f"### {self.title}", ""]
        if self.rows:
            lines.append("| " + " | ".join(map(esc, self.columns)) + " |")
            lines.append("|" + "|".join("---" for _ in self.columns) + "|")
            lines += ["| " + " | ".join(map(esc, row)) + " |" for row in self.rows]
        else:
            lines.append("(no data)")
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        parts = [f"<h3>{html.escape(self.title)}</h3>"]
        if self.rows:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            parts.append("<p>(no data)</p>")
        if self.note:
            parts.append(f"<p class='note'>{html.escape(self.note)}</p>")
        return "\n".join(parts)


def _ci_json(ci: intervals.MeanCI) -> dict[str, Any]:
    def num(x: float) -> float | None:
        return None if math.isnan(x) else x

    out: dict[str, Any] = {"mean": num(ci.mean), "low": num(ci.low), "high": num(ci.high), "n": ci.n}
    if isinstance(ci, intervals.PairedDiffCI):
        out["seeds"] = list(ci.seeds)
    return out


def _task_order(tasks: Iterable[str]) -> list[str]:
    tasks = set(tasks)
    paper = [t for t in PAPER_TASKS if t in tasks]
    return paper + sorted(tasks - set(paper))


def _task_title(task: str) -> str:
    return PAPER_TASKS.get(task, task)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_diff(d: intervals.PairedDiffCI, scale: float, digits: int) -> str:
    """``"mean [low, high] (n pairs)"``; one pair has no interval."""
    if d.n == 0:
        return "—"
    if d.n == 1:
        return f"{d.mean * scale:.{digits}f} (1 pair)"
    return f"{d.format(scale, digits)} ({d.n} pairs)"


@dataclass
class ReportOptions:
    smooth: int = 5
    threshold: float = 0.9
    include_partial: bool = False
    seed: int = 0
    n_resamples: int = intervals.DEFAULT_RESAMPLES


@dataclass
class Report:
    """Everything ``build_report`` produced."""

    runs: list[Run]
    variants: list[Variant]
    tables: list[Table]
    figures: list[tuple[str, str]]  # (file name, caption), files that exist in out
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)


TRAINING_QUANTITIES = ("reward/total", "reward/format", "gate/eur", "policy/entropy")
CIFn = Callable[[Sequence[float]], intervals.MeanCI]


def _seed_key(run: Run) -> Any:
    """What pairs runs across variants: the seed (the run's label when it has none)."""
    return run.seed if run.seed is not None else run.label


def seed_values(variant: Variant, opt: ReportOptions) -> dict[str, dict[Any, float | None]]:
    """Per-seed numbers of one variant's statistics runs: ``{quantity: {seed: value}}``.

    Quantities: ``accuracy/<task>`` (last held-out evaluation), ``reward/total``, ``reward/format`` and
    ``policy/entropy`` (final values), ``gate/eur`` (mean over all steps), ``steps_to_format`` (None: not reached).
    A seed without the figure is absent from that quantity.
    """
    out: dict[str, dict[Any, float | None]] = {q: {} for q in (*TRAINING_QUANTITIES, "steps_to_format")}
    for r in variant.stat_runs:
        key = _seed_key(r)
        for task, acc in final_eval(r).items():
            out.setdefault(f"accuracy/{task}", {})[key] = acc
        for metric in ("reward/total", "reward/format", "policy/entropy"):
            val = final_value(r.series(metric)[1], opt.smooth)
            if val is not None:
                out[metric][key] = val
        _, eur = r.series("gate/eur")
        if eur.size:
            out["gate/eur"][key] = float(eur.mean())
        steps, fmt = r.series("reward/format")
        if fmt.size:
            out["steps_to_format"][key] = steps_to_threshold(steps, fmt, opt.threshold, opt.smooth)
    return out


def _present(values: dict[Any, float | None]) -> dict[Any, float]:
    return {k: x for k, x in values.items() if x is not None}


def _runs_table(variants: list[Variant], opt: ReportOptions, data: dict[str, Any], notes: list[str]) -> Table:
    """Every run with its status, so that a partial sweep shows what is missing."""
    rows = []
    for v in variants:
        for r in v.runs:
            steps = r.info.get("steps", _dig(r.config, "steps"))
            last = r.last_step
            progress = f"{last if last is not None else '—'}/{steps if steps is not None else '?'}"
            acc = final_eval(r)
            acc_text = ", ".join(f"{_task_title(t)} {acc[t] * 100:.1f}" for t in _task_order(acc)) or "—"
            _, total = r.series("reward/total")
            rows.append([r.label, v.name, str(r.seed if r.seed is not None else "—"), r.status, progress,
                         _fmt(final_value(total, opt.smooth)), acc_text])
            data["runs"].append({"path": str(r.path), "variant": v.name, "seed": r.seed, "status": r.status,
                                 "last_step": last, "final_eval": acc})
        seen: dict[Any, Run] = {}
        for r in v.stat_runs:
            if r.seed is not None and r.seed in seen:
                notes.append(f"variant {v.name} has two runs with seed {r.seed} ({seen[r.seed].label}, {r.label}); "
                             "per-seed statistics keep the latter")
            seen[r.seed] = r
    excluded = [r for v in variants for r in v.runs if r not in v.stat_runs]
    note = ""
    if excluded:
        kinds = sorted({r.status for r in excluded})
        note = (f"{len(excluded)} run(s) with status {', '.join(kinds)} are plotted but left out of the statistics "
                "below (pass --include-partial to include them).")
        notes.append(note)
    return Table("Runs", ["run", "variant", "seed", "status", "step/steps", "final reward/total",
                          "final held-out accuracy (%)"], rows, note)


def _accuracy_table(runs: list[Run], variants: list[Variant], values: dict[str, dict[str, dict[Any, Any]]],
                    tasks: list[str], ci: CIFn, opt: ReportOptions, data: dict[str, Any]) -> Table:
    """Held-out accuracy per variant and task; the paper's Table 1 layout when its tasks are present."""
    rows = []
    base: dict[str, list[float]] = {}
    base_runs = 0
    for r in runs:
        if r.status in STATS_STATUSES or opt.include_partial:
            start = start_eval(r)
            base_runs += bool(start)
            for task, acc in start.items():
                base.setdefault(task, []).append(acc)
    if base:
        rows.append(["base model (step 0)", *(ci(base.get(t, [])).format(100) for t in tasks), f"{base_runs} runs"])
    for v in variants:
        cis = [ci(list(_present(values[v.name].get(f"accuracy/{t}", {})).values())) for t in tasks]
        rows.append([v.name, *(c.format(100) for c in cis), str(max((c.n for c in cis), default=0))])
        data["variants"][v.name]["heldout_accuracy"] = {t: _ci_json(c) for t, c in zip(tasks, cis)}
    paper_layout = any(t in PAPER_TASKS for t in tasks)
    title = "Held-out accuracy (%), the paper's Table 1 layout" if paper_layout else "Final held-out accuracy (%)"
    note = "mean over seeds [95% bootstrap CI]; last evaluation of each run"
    if base:
        note += "; base model = evaluation at step 0 (all runs pooled)"
    return Table(title, ["variant", *map(_task_title, tasks), "seeds"], rows, note)


def _training_table(runs: list[Run], variants: list[Variant], values: dict[str, dict[str, dict[Any, Any]]], ci: CIFn,
                    opt: ReportOptions, data: dict[str, Any]) -> Table:
    """Final rewards, steps to format, EUR and entropy per variant."""
    rows = []
    for v in variants:
        m = values[v.name]
        cis = {q: ci(list(_present(m[q]).values())) for q in TRAINING_QUANTITIES}
        per_seed_steps = m["steps_to_format"]
        reached = list(_present(per_seed_steps).values())
        n_fmt = len(per_seed_steps)
        fmt_ci = ci(reached)
        rows.append([
            v.name,
            cis["reward/total"].format(1, 3),
            cis["reward/format"].format(1, 3),
            f"{len(reached)}/{n_fmt}" if n_fmt else "—",
            fmt_ci.format(1, 0) if reached else "not reached" if n_fmt else "—",
            ", ".join("not reached" if x is None else f"{x:g}" for x in per_seed_steps.values()) or "—",
            cis["gate/eur"].format(1, 3),
            cis["policy/entropy"].format(1, 3),
        ])
        data["variants"][v.name].update({
            "final_reward_total": _ci_json(cis["reward/total"]),
            "final_reward_format": _ci_json(cis["reward/format"]),
            "steps_to_format": {"per_seed": {str(k): x for k, x in per_seed_steps.items()},
                                "reached": len(reached), "runs": n_fmt, "mean_reached": _ci_json(fmt_ci)},
            "mean_eur": _ci_json(cis["gate/eur"]),
            "final_entropy": _ci_json(cis["policy/entropy"]),
        })
    return Table(
        "Training summary per variant" + (" (steps are RL steps)" if _unit(runs) == "RL step" else ""),
        ["variant", "final reward/total", "final reward/format", f"reached format >= {opt.threshold:g}",
         f"steps to format >= {opt.threshold:g}", "per seed", "mean EUR", "final entropy"],
        rows,
        f"mean over seeds [95% bootstrap CI]. final = mean of the last max({opt.smooth}, 10%) logged steps; "
        f"steps to format = first step where the trailing {opt.smooth}-step mean of reward/format >= "
        f"{opt.threshold:g} (mean over the seeds that reached it); mean EUR over all steps.",
    )


def _paired_table(variants: list[Variant], grpo: list[Variant], values: dict[str, dict[str, dict[Any, Any]]],
                  tasks: list[str], opt: ReportOptions, data: dict[str, Any]) -> Table:
    """Each variant minus the (first) GRPO variant, paired by seed."""
    ref = grpo[0]

    def diff(v: Variant, quantity: str) -> intervals.PairedDiffCI:
        # Seeds missing a figure (or that never reached the format threshold) cannot be paired on it.
        return intervals.paired_difference_ci(_present(values[v.name].get(quantity, {})),
                                          _present(values[ref.name].get(quantity, {})),
                                          n_resamples=opt.n_resamples, seed=opt.seed)

    rows = []
    for v in variants:
        if v is ref:
            continue
        entry = {f"accuracy/{t}": diff(v, f"accuracy/{t}") for t in tasks}
        entry["final_reward_total"] = diff(v, "reward/total")
        entry["steps_to_format"] = diff(v, "steps_to_format")
        rows.append([v.name, *(_fmt_diff(entry[f"accuracy/{t}"], 100, 1) for t in tasks),
                     _fmt_diff(entry["final_reward_total"], 1, 3), _fmt_diff(entry["steps_to_format"], 1, 0)])
        data["variants"][v.name]["vs_grpo"] = {k: _ci_json(d) for k, d in entry.items()}
    note = (f"variant minus {ref.name}, paired by seed: mean [95% bootstrap CI] over the seeds both have; "
            "steps to format only over seeds where both reached it")
    if len(grpo) > 1:
        note += f"; reference is {ref.name} (other GRPO variants: {', '.join(g.name for g in grpo[1:])})"
    cols = ["variant", *[f"Δ {_task_title(t)} acc (points)" for t in tasks], "Δ final reward/total",
            "Δ steps to format"]
    return Table(f"Paired differences against GRPO ({ref.name})", cols, rows, note)


def _eur_entropy_correlation(variants: list[Variant]) -> tuple[float, int] | None:
    """Pearson r between per-run mean EUR and mean entropy (the large markers of eur_vs_entropy.png).

    The paper: lower EUR goes with higher entropy, i.e. r < 0. None with fewer than 3 runs or no spread.
    """
    pairs = []
    for v in variants:
        for r in v.stat_runs:
            _, eur = r.series("gate/eur")
            _, ent = r.series("policy/entropy")
            if eur.size and ent.size:
                pairs.append((float(eur.mean()), float(ent.mean())))
    if len(pairs) < 3:
        return None
    x, y = np.asarray(pairs).T  # (n_runs,) each
    if x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1]), len(pairs)


def compute_tables(
    runs: list[Run], variants: list[Variant], opt: ReportOptions
) -> tuple[list[Table], dict[str, Any], list[str]]:
    """The report's tables, the numbers behind them (for report.json) and notes. Pure: no files written."""

    def ci(values: Sequence[float]) -> intervals.MeanCI:
        return intervals.bootstrap_mean_ci(values, n_resamples=opt.n_resamples, seed=opt.seed)

    data: dict[str, Any] = {"options": vars(opt).copy(), "variants": {v.name: {} for v in variants}, "runs": []}
    notes: list[str] = []
    tables = [_runs_table(variants, opt, data, notes)]
    values = {v.name: seed_values(v, opt) for v in variants}
    tasks = _task_order(q.split("/", 1)[1] for m in values.values() for q in m if q.startswith("accuracy/"))
    if tasks:
        tables.append(_accuracy_table(runs, variants, values, tasks, ci, opt, data))
    else:
        notes.append("no held-out evaluations (eval.jsonl or summary.json) in the runs")
    tables.append(_training_table(runs, variants, values, ci, opt, data))
    grpo = [v for v in variants if v.is_grpo]
    if grpo:
        tables.append(_paired_table(variants, grpo, values, tasks, opt, data))
    else:
        notes.append("no GRPO (clip gate) variant: paired differences skipped")
    corr = _eur_entropy_correlation(variants)
    if corr is not None:
        r, n = corr
        data["eur_entropy_pearson_r"] = r
        notes.append(f"EUR vs entropy across {n} runs (per-run means over all steps): Pearson r = {r:.2f} "
                     "(the paper: lower EUR goes with higher entropy, i.e. r < 0)")
    return tables, data, notes


# ----------------------------------------------------------------------------------------------------------------
# Figures


def _unit(runs: Iterable[Run]) -> str:
    """The x-axis unit: "RL step" when every run's metrics were grouped per RL step, else "step"."""
    units = {r.step_unit for r in runs if r.metrics}
    return units.pop() if len(units) == 1 else "step"


def _colors(variants: Sequence[Variant]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"] if len(variants) <= 10 else colormaps["tab20"]
    return {v.name: cmap(i % cmap.N) for i, v in enumerate(variants)}


def _curve(variant: Variant, key: str, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Smoothed per-seed curves on the union of their steps: (steps, mean, min, max) over seeds.

    Shapes: each (n_steps,). Steps a seed did not log are left out of that step's mean (partial runs).
    """
    curves = [(s, smooth(v, window)) for s, v in (r.series(key) for r in variant.runs) if v.size]
    if not curves:
        return None
    steps = np.unique(np.concatenate([s for s, _ in curves]))
    grid = np.full((len(curves), steps.size), np.nan)  # (n_seeds, n_steps)
    for i, (s, v) in enumerate(curves):
        grid[i, np.searchsorted(steps, s)] = v
    return steps, np.nanmean(grid, axis=0), np.nanmin(grid, axis=0), np.nanmax(grid, axis=0)


def plot_curves(variants: Sequence[Variant], out: Path, window: int) -> list[tuple[str, str]]:
    """One PNG per metric in CURVE_METRICS that some run logged."""
    from matplotlib.figure import Figure

    colors = _colors(variants)
    made = []
    for key, title in CURVE_METRICS:
        curves = [(v, _curve(v, key, window)) for v in variants]
        curves = [(v, c) for v, c in curves if c is not None]
        if not curves:
            continue
        fig = Figure(figsize=(7, 4.2), layout="constrained")
        ax = fig.add_subplot()
        for v, (steps, mean, lo, hi) in curves:
            n = sum(1 for r in v.runs if r.series(key)[1].size)
            ax.plot(steps, mean, color=colors[v.name], label=f"{v.name} (n={n})", lw=1.6)
            if n > 1:
                ax.fill_between(steps, lo, hi, color=colors[v.name], alpha=0.18, lw=0)
        ax.set_xlabel(_unit(r for v in variants for r in v.runs))
        ax.set_ylabel(key)
        ax.set_title(f"{title}: mean over seeds, band = min..max (trailing {window}-step mean)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        name = "curve_" + key.replace("/", "_") + ".png"
        fig.savefig(out / name, dpi=110)
        made.append((name, f"{key}: one line per variant (mean over seeds), band min..max across seeds"))
    return made


def plot_eur_entropy(variants: Sequence[Variant], out: Path) -> list[tuple[str, str]]:
    """Per-step (EUR, entropy) points per variant, and each run's mean as a large marker."""
    from matplotlib.figure import Figure

    colors = _colors(variants)
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    any_points = False
    for v in variants:
        first = True
        for r in v.runs:
            rows = [(m["gate/eur"], m["policy/entropy"]) for m in r.metrics
                    if _number(m.get("gate/eur")) is not None and _number(m.get("policy/entropy")) is not None]
            if not rows:
                continue
            x, y = np.asarray(rows).T
            ax.scatter(x, y, s=6, alpha=0.25, color=colors[v.name], lw=0)
            ax.scatter([x.mean()], [y.mean()], s=60, color=colors[v.name], edgecolor="black",
                       label=v.name if first else None, zorder=3)
            first = False
            any_points = True
    if not any_points:
        return []
    ax.set_xlabel("gate/eur")
    ax.set_ylabel("policy/entropy")
    ax.set_title("EUR vs entropy (small: per step; large: per-run mean)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(out / "eur_vs_entropy.png", dpi=110)
    return [("eur_vs_entropy.png", "EUR against policy entropy; the paper finds lower EUR with higher entropy")]


def plot_gate_shapes(variants: Sequence[Variant], out: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """f, f', x f'(x) of the gates present, via ``softgate.plotting.plot_gates``; a note if that fails."""
    gate_objs = []
    seen = set()
    try:
        from softgate import gates as gates_mod
        from softgate.plotting import plot_gates
    except ImportError as err:
        return [], [f"gate shape figure skipped: {err}"]
    for v in variants:
        if not v.gate:
            continue
        params = {k: x for k, x in v.params.items()
                  if (k.startswith("eps") if v.gate == "clip" else k.startswith("tau"))}
        key = (v.gate, tuple(sorted(params.items())))
        if key in seen:
            continue
        seen.add(key)
        try:
            gate_objs.append(gates_mod.make(v.gate, **params))
        except (ValueError, TypeError, KeyError) as err:
            return [], [f"gate shape figure skipped: cannot build gate {v.gate} {params}: {err}"]
    if not gate_objs:
        return [], ["gate shape figure skipped: no gate names in the runs (logs alone)"]
    try:
        # taus=None: draw each gate at its own temperatures (not plot_gates' default demo temperatures).
        plot_gates(gate_objs, taus=None, out=out / "gates.png")
    except Exception as err:  # a plotting failure must not lose the rest of the report
        return [], [f"gate shape figure skipped: plot_gates failed: {type(err).__name__}: {err}"]
    if not (out / "gates.png").is_file():
        return [], ["gate shape figure skipped: plot_gates wrote no file"]
    return [("gates.png", "gate shapes: f, f' and x f'(x) for the gates in these runs, at their own "
                          "parameters (positive-advantage branch: tau_pos)")], []


# ----------------------------------------------------------------------------------------------------------------
# Writing


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 8px;
text-align:left}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}.note{color:#555;font-size:0.85em}
figure{margin:1em 0}figcaption{font-size:0.85em;color:#555}"""


def _markdown(report: Report, sources: Sequence[str]) -> str:
    lines = ["# softgate report", "", f"Runs: {len(report.runs)} in {len(report.variants)} variant(s), from "
             + ", ".join(f"`{s}`" for s in sources), ""]
    for note in report.notes:
        lines.append(f"- {note}")
    if report.notes:
        lines.append("")
    for table in report.tables:
        lines.append(table.markdown())
    lines.append("## Figures\n")
    for name, caption in report.figures:
        lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def _html(report: Report, out: Path, sources: Sequence[str]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>softgate report</title>",
             f"<style>{_CSS}</style></head><body>", "<h1>softgate report</h1>",
             f"<p>Runs: {len(report.runs)} in {len(report.variants)} variant(s), from "
             + ", ".join(f"<code>{html.escape(s)}</code>" for s in sources) + "</p>"]
    if report.notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    parts += [t.html() for t in report.tables]
    parts.append("<h2>Figures</h2>")
    for name, caption in report.figures:
        data = base64.b64encode((out / name).read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(
    paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], options: ReportOptions | None = None
) -> Report:
    """Load the runs under ``paths`` and write figures, summary.md, report.html and report.json to ``out``."""
    opt = options or ReportOptions()
    if opt.smooth < 1:
        raise ReportError(f"--smooth must be >= 1, got {opt.smooth}")
    runs = load_runs(paths)
    variants = group_variants(runs, opt.include_partial)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables, data, notes = compute_tables(runs, variants, opt)
    figures, gate_notes = plot_gate_shapes(variants, out)
    figures += plot_curves(variants, out, opt.smooth)
    figures += plot_eur_entropy(variants, out)
    missing = [key for key, _ in CURVE_METRICS if not any(r.series(key)[1].size for r in runs)]
    if missing:
        notes.append(f"not logged by any run: {', '.join(missing)}")
    notes = gate_notes + notes
    figures = [(name, cap) for name, cap in figures if (out / name).is_file()]
    report = Report(runs, variants, tables, figures, data, notes)
    sources = [str(p) for p in paths]
    (out / "summary.md").write_text(_markdown(report, sources))
    (out / "report.html").write_text(_html(report, out, sources))
    data["notes"] = notes
    data["figures"] = [name for name, _ in figures]
    (out / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    return report


__all__ = [
    "CURVE_METRICS", "IncompatibleRunError", "Report", "ReportError", "ReportOptions", "Run", "Table", "Variant",
    "build_report", "compute_tables", "default_variant", "discover_runs", "final_eval", "final_value",
    "group_variants", "load_run", "load_runs", "per_rl_step", "seed_values", "smooth", "start_eval",
    "steps_to_threshold",
]
