"""The numbers of a report: per-seed figures of each run, then the tables across seeds (pure: no files).

- "final" training value of a metric: the mean of its last ``max(smooth, ceil(10% of logged steps))`` values.
- Steps to format: the first step at which the trailing mean of ``reward/format`` reaches the threshold.
- Held-out accuracy: the last eval.jsonl entry per ``eval/task`` (summary.json's ``eval_end`` without eval.jsonl).
- Base model: the distinct step-0 evaluations (``evaluation_key``: copies made by runs that share a model, data,
  settings and evaluation seed count once); one shows its own interval, several a bootstrap over them.
- Across seeds: mean with a 95% percentile bootstrap CI (``softgate.intervals``); differences against GRPO (the
  clip gate) are paired by seed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from softgate import intervals
from softgate.plots import smooth
from softgate.report.render import Table
from softgate.report.runs import STATS_STATUSES, Run, Variant, step_unit

# Table 1 of the paper: task name in eval.jsonl -> column title.
PAPER_TASKS = {"gsm8k": "GSM8K", "math500": "MATH500", "aime": "AIME"}
DEFAULT_TASK = "held-out"
TRAINING_QUANTITIES = ("reward/total", "reward/format", "gate/eur", "policy/entropy")


@dataclass
class ReportOptions:
    smooth: int = 5  # trailing-mean window (steps) of curves, final values and steps to format
    threshold: float = 0.9  # format reward level of "steps to format"
    include_partial: bool = False  # running/failed runs in the statistics too
    seed: int = 0  # bootstrap resampling seed
    n_resamples: int = intervals.DEFAULT_RESAMPLES


# --------------------------------------------------------------------------------------------------------------
# Per-run numbers


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


def _accuracy(row: dict[str, Any] | None, key: str) -> float | None:
    value = row.get(key) if isinstance(row, dict) else None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _task_of(row: dict[str, Any], run: Run) -> str:
    task = row.get("eval/task") or run.task
    return str(task).lower() if task else DEFAULT_TASK


def final_eval(run: Run) -> dict[str, float]:
    """{task: accuracy in [0, 1]} from the last eval.jsonl entry per task, else summary.json's ``eval_end``."""
    last: dict[str, tuple[float, float]] = {}
    for row in run.evals:
        acc = _accuracy(row, "eval/accuracy")
        task = _task_of(row, run)
        if acc is not None and (task not in last or row["step"] >= last[task][0]):
            last[task] = (row["step"], acc)
    if last:
        return {task: acc for task, (_, acc) in last.items()}
    acc = _accuracy((run.summary or {}).get("eval_end"), "accuracy")
    return {} if acc is None else {run.task or DEFAULT_TASK: acc}


def start_evaluations(run: Run) -> dict[str, dict[str, Any]]:
    """{task: figures of the model before training}: the step-0 eval.jsonl entry without its ``eval/`` prefix,
    else summary.json's ``eval_start``; only entries with an accuracy."""
    out = {_task_of(r, run): {k.removeprefix("eval/"): v for k, v in r.items()} for r in run.evals
           if r.get("step") == 0 and _accuracy(r, "eval/accuracy") is not None}
    start = (run.summary or {}).get("eval_start")
    return out or ({run.task or DEFAULT_TASK: start} if _accuracy(start, "accuracy") is not None else {})


def start_eval(run: Run) -> dict[str, float]:
    """{task: accuracy} of the model before training (see :func:`start_evaluations`)."""
    return {task: float(fig["accuracy"]) for task, fig in start_evaluations(run).items()}


def evaluation_key(run: Run, task: str, figures: dict[str, Any]) -> str:
    """What makes two evaluations one: the same model, held-out data, sampling settings and evaluation seed.

    Runs of a sweep that share a seed evaluate the same starting model with the same seed on the same problems:
    their step-0 evaluations are copies, and pooling copies would shrink an interval without new evidence. The
    evaluation seed is ``eval/seed`` when logged, else the run's seed (the trainer derives it from that).
    """
    cfg_task, cfg_eval = run.config.get("task") or {}, run.config.get("eval") or {}
    model = (run.info.model if run.info else None) or (run.config.get("model") or {}).get("name_or_path")
    return json.dumps([model, task, cfg_task.get("test_file"), cfg_task.get("difficulty"), figures.get("n"),
                       figures.get("temperature", cfg_eval.get("temperature")),
                       figures.get("max_new_tokens", cfg_eval.get("max_new_tokens")),
                       figures.get("samples_per_problem", 1), figures.get("seed", ["run seed", run.seed])],
                      default=str)


def base_model_ci(evaluations: list[dict[str, Any]], ci: CIFn) -> intervals.MeanCI:
    """The base model's accuracy from its distinct evaluations: one -> its own interval (over problems, from
    ``accuracy_ci_low/high``); several -> their mean with ``ci`` over them (over seeds, like every variant)."""
    if len(evaluations) != 1:
        return ci([float(e["accuracy"]) for e in evaluations])
    (e,) = evaluations
    low, high = (_accuracy(e, k) for k in ("accuracy_ci_low", "accuracy_ci_high"))
    nan = float("nan")
    return intervals.MeanCI(float(e["accuracy"]), nan if low is None else low, nan if high is None else high, 1)


def seed_key(run: Run) -> Any:
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
        key = seed_key(r)
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


# --------------------------------------------------------------------------------------------------------------
# Formatting helpers


def _present(values: dict[Any, float | None]) -> dict[Any, float]:
    return {k: x for k, x in values.items() if x is not None}


def ci_json(ci: intervals.MeanCI) -> dict[str, Any]:
    """A CI as JSON (NaN -> null; paired differences also list their seeds)."""
    def num(x: float) -> float | None:
        return None if math.isnan(x) else x

    out: dict[str, Any] = {"mean": num(ci.mean), "low": num(ci.low), "high": num(ci.high), "n": ci.n}
    if isinstance(ci, intervals.PairedDiffCI):
        out["seeds"] = list(ci.seeds)
    return out


def task_order(tasks: Iterable[str]) -> list[str]:
    """The paper's tasks first (in its order), then the others sorted."""
    tasks = set(tasks)
    paper = [t for t in PAPER_TASKS if t in tasks]
    return paper + sorted(tasks - set(paper))


def task_title(task: str) -> str:
    return PAPER_TASKS.get(task, task)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _fmt_diff(d: intervals.PairedDiffCI, scale: float, digits: int) -> str:
    """``"mean [low, high] (n pairs)"``; one pair has no interval."""
    if d.n == 0:
        return "—"
    if d.n == 1:
        return f"{d.mean * scale:.{digits}f} (1 pair)"
    return f"{d.format(scale, digits)} ({d.n} pairs)"


# --------------------------------------------------------------------------------------------------------------
# Tables

CIFn = Callable[[Sequence[float]], intervals.MeanCI]
Values = dict[str, dict[str, dict[Any, Any]]]  # variant -> quantity -> seed -> value


def _runs_table(variants: list[Variant], opt: ReportOptions, data: dict[str, Any], notes: list[str]) -> Table:
    """Every run with its status, so that a partial sweep shows what is missing."""
    rows = []
    for v in variants:
        for r in v.runs:
            last, steps = r.last_step, r.steps
            acc = final_eval(r)
            acc_text = ", ".join(f"{task_title(t)} {acc[t] * 100:.1f}" for t in task_order(acc)) or "—"
            rows.append([r.label, v.name, str(r.seed if r.seed is not None else "—"), r.status,
                         f"{last if last is not None else '—'}/{steps if steps is not None else '?'}",
                         _fmt(final_value(r.series("reward/total")[1], opt.smooth)), acc_text])
            data["runs"].append({"path": str(r.path), "variant": v.name, "gate": r.gate and r.gate.to_dict(),
                                 "seed": r.seed, "status": r.status, "last_step": last, "final_eval": acc})
        seen: dict[Any, Run] = {}
        for r in v.stat_runs:
            if r.seed is not None and r.seed in seen:
                notes.append(f"variant {v.name} has two runs with seed {r.seed} ({seen[r.seed].label}, {r.label}); "
                             "per-seed statistics keep the latter")
            seen[r.seed] = r
    excluded = [r for v in variants for r in v.runs if r not in v.stat_runs]
    note = ""
    if excluded:
        note = (f"{len(excluded)} run(s) with status {', '.join(sorted({r.status for r in excluded}))} are plotted "
                "but left out of the statistics below (pass --include-partial to include them).")
        notes.append(note)
    return Table("Runs", ["run", "variant", "seed", "status", "step/steps", "final reward/total",
                          "final held-out accuracy (%)"], rows, note)


def _accuracy_table(runs: list[Run], variants: list[Variant], values: Values, tasks: list[str], ci: CIFn,
                    opt: ReportOptions, data: dict[str, Any]) -> Table:
    """Held-out accuracy per variant and task; the paper's Table 1 layout when its tasks are present."""
    rows = []
    base: dict[str, dict[str, dict[str, Any]]] = {}  # task -> evaluation key -> figures (copies counted once)
    base_runs = 0
    for r in runs:
        if r.status in STATS_STATUSES or opt.include_partial:
            start = start_evaluations(r)
            base_runs += bool(start)
            for task, figures in start.items():
                base.setdefault(task, {}).setdefault(evaluation_key(r, task, figures), figures)
    if base:
        cis = {t: base_model_ci(list(base.get(t, {}).values()), ci) for t in tasks}
        distinct = max(len(e) for e in base.values())
        rows.append(["base model (step 0)", *(cis[t].format(100) for t in tasks),
                     f"{distinct} evaluation{'s' * (distinct != 1)} ({base_runs} runs)"])
        data["base_model"] = {t: {**ci_json(c), "evaluations": len(base.get(t, {}))} for t, c in cis.items()}
    for v in variants:
        cis = [ci(list(_present(values[v.name].get(f"accuracy/{t}", {})).values())) for t in tasks]
        rows.append([v.name, *(c.format(100) for c in cis), str(max((c.n for c in cis), default=0))])
        data["variants"][v.name]["heldout_accuracy"] = {t: ci_json(c) for t, c in zip(tasks, cis)}
    paper_layout = any(t in PAPER_TASKS for t in tasks)
    title = "Held-out accuracy (%), the paper's Table 1 layout" if paper_layout else "Final held-out accuracy (%)"
    note = "mean over seeds [95% bootstrap CI]; last evaluation of each run"
    if base:
        note += ("; base model = the evaluations at step 0, copies counted once (same model, data, settings and "
                 "evaluation seed): one evaluation shows its own 95% interval over problems, several their mean "
                 "[95% bootstrap CI over evaluations]")
    return Table(title, ["variant", *map(task_title, tasks), "seeds"], rows, note)


def _training_table(runs: list[Run], variants: list[Variant], values: Values, ci: CIFn, opt: ReportOptions,
                    data: dict[str, Any]) -> Table:
    """Final rewards, steps to format, EUR and entropy per variant."""
    rows = []
    for v in variants:
        m = values[v.name]
        cis = {q: ci(list(_present(m[q]).values())) for q in TRAINING_QUANTITIES}
        per_seed_steps = m["steps_to_format"]
        reached = list(_present(per_seed_steps).values())
        n_fmt = len(per_seed_steps)
        rows.append([
            v.name, cis["reward/total"].format(1, 3), cis["reward/format"].format(1, 3),
            f"{len(reached)}/{n_fmt}" if n_fmt else "—",
            ci(reached).format(1, 0) if reached else "not reached" if n_fmt else "—",
            ", ".join("not reached" if x is None else f"{x:g}" for x in per_seed_steps.values()) or "—",
            cis["gate/eur"].format(1, 3), cis["policy/entropy"].format(1, 3),
        ])
        data["variants"][v.name].update({
            "final_reward_total": ci_json(cis["reward/total"]),
            "final_reward_format": ci_json(cis["reward/format"]),
            "steps_to_format": {"per_seed": {str(k): x for k, x in per_seed_steps.items()},
                                "reached": len(reached), "runs": n_fmt, "mean_reached": ci_json(ci(reached))},
            "mean_eur": ci_json(cis["gate/eur"]),
            "final_entropy": ci_json(cis["policy/entropy"]),
        })
    return Table(
        "Training summary per variant" + (" (steps are RL steps)" if step_unit(runs) == "RL step" else ""),
        ["variant", "final reward/total", "final reward/format", f"reached format >= {opt.threshold:g}",
         f"steps to format >= {opt.threshold:g}", "per seed", "mean EUR", "final entropy"],
        rows,
        f"mean over seeds [95% bootstrap CI]. final = mean of the last max({opt.smooth}, 10%) logged steps; "
        f"steps to format = first step where the trailing {opt.smooth}-step mean of reward/format >= "
        f"{opt.threshold:g} (mean over the seeds that reached it); mean EUR over all steps.",
    )


def _paired_table(variants: list[Variant], baselines: list[Variant], values: Values, tasks: list[str],
                  opt: ReportOptions, data: dict[str, Any]) -> Table:
    """Each variant minus the (first) GRPO variant, paired by seed."""
    ref = baselines[0]

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
        data["variants"][v.name]["vs_grpo"] = {k: ci_json(d) for k, d in entry.items()}
    note = (f"variant minus {ref.name}, paired by seed: mean [95% bootstrap CI] over the seeds both have; "
            "steps to format only over seeds where both reached it")
    if len(baselines) > 1:
        note += f"; reference is {ref.name} (other GRPO variants: {', '.join(g.name for g in baselines[1:])})"
    cols = ["variant", *[f"Δ {task_title(t)} acc (points)" for t in tasks], "Δ final reward/total",
            "Δ steps to format"]
    return Table(f"Paired differences against GRPO ({ref.name})", cols, rows, note)


def eur_entropy_correlation(variants: list[Variant]) -> tuple[float, int] | None:
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


def compute_tables(runs: list[Run], variants: list[Variant],
                   opt: ReportOptions) -> tuple[list[Table], dict[str, Any], list[str]]:
    """The report's tables, the numbers behind them (for report.json) and notes. Pure: no files written."""

    def ci(values: Sequence[float]) -> intervals.MeanCI:
        return intervals.bootstrap_mean_ci(values, n_resamples=opt.n_resamples, seed=opt.seed)

    data: dict[str, Any] = {"options": vars(opt).copy(), "variants": {v.name: {} for v in variants}, "runs": []}
    notes: list[str] = []
    tables = [_runs_table(variants, opt, data, notes)]
    values = {v.name: seed_values(v, opt) for v in variants}
    tasks = task_order(q.split("/", 1)[1] for m in values.values() for q in m if q.startswith("accuracy/"))
    if tasks:
        tables.append(_accuracy_table(runs, variants, values, tasks, ci, opt, data))
    else:
        notes.append("no held-out evaluations (eval.jsonl or summary.json) in the runs")
    tables.append(_training_table(runs, variants, values, ci, opt, data))
    baselines = [v for v in variants if v.is_baseline]
    if baselines:
        tables.append(_paired_table(variants, baselines, values, tasks, opt, data))
    else:
        notes.append("no GRPO (clip gate) variant: paired differences skipped")
    corr = eur_entropy_correlation(variants)
    if corr is not None:
        r, n = corr
        data["eur_entropy_pearson_r"] = r
        notes.append(f"EUR vs entropy across {n} runs (per-run means over all steps): Pearson r = {r:.2f} "
                     "(the paper: lower EUR goes with higher entropy, i.e. r < 0)")
    return tables, data, notes
