"""softgate.report on synthetic run directories written here, with table entries worked out by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from softgate import gates, plots
from softgate import report as rp
from softgate.gates import GateSpec
from softgate.rundir import IncompatibleRunError, RunDir, RunDirError, RunInfo

STEPS = 40


def write_run(
    run_dir: Path,
    *,
    gate: str | None,
    params: dict[str, float],
    seed: int,
    status: str | None = "finished",
    format_from: int | None = 10,
    eur: float = 0.8,
    entropy: float = 1.0,
    evals: list[dict[str, Any]] | None = None,
    steps: int = STEPS,
    extra_metrics: dict[str, float] | None = None,
) -> Path:
    """A run directory written with softgate.rundir: run.json (unless status is None), metrics.jsonl, eval.jsonl.

    reward/format is 0 before step ``format_from`` and 1 from it on (never 1 when None), so with the default
    5-step trailing mean it first reaches 0.9 at step ``format_from + 4`` (5 ones in the window; 4 give 0.8).
    """
    run = RunDir(run_dir)
    if status is not None:
        run.write_info(RunInfo(status=status, gate=GateSpec.of(gate, **params).to_dict(), seed=seed, steps=steps,
                               last_step=steps if status == "finished" else steps // 2))
    with run.metrics_writer() as log:
        for step in range(1, steps + 1):
            fmt = 1.0 if format_from is not None and step >= format_from else 0.0
            log.write({"step": step, "reward/total": fmt + 0.5, "reward/format": fmt, "train/accuracy": 0.5,
                       "gate/eur": eur, "policy/entropy": entropy, "response/length_mean": 20.0,
                       **(extra_metrics or {})})
    if evals is not None:
        for row in evals:
            run.write_eval(row)
    return run_dir


def ev(step: int, acc: float, task: str | None = "synthetic") -> dict[str, Any]:
    row: dict[str, Any] = {"step": step, "eval/accuracy": acc, "eval/n": 100}
    if task is not None:
        row["eval/task"] = task
    return row


GRPO = {"eps_low": 0.2, "eps_high": 0.2}
SIG = {"tau_pos": 10.0, "tau_neg": 12.0}


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """grpo and sigmoid(10, 12), seeds 0..2, with hand-picked final accuracies and format onsets."""
    root = tmp_path / "sweep"
    grpo_acc, sig_acc = [0.5, 0.5, 0.8], [0.75, 0.75, 0.75]
    grpo_fmt = [20, 30, None]
    for seed in range(3):
        write_run(root / "grpo" / f"seed{seed}", gate="clip", params=GRPO, seed=seed, format_from=grpo_fmt[seed],
                  eur=0.9, entropy=1.0, evals=[ev(0, 0.1), ev(20, 0.3), ev(STEPS, grpo_acc[seed])])
        write_run(root / "sigmoid" / f"seed{seed}", gate="sigmoid", params=SIG, seed=seed, format_from=5,
                  eur=0.7, entropy=1.5, evals=[ev(0, 0.1), ev(STEPS, sig_acc[seed])])
    return root


def table(report: rp.Report, title_start: str) -> rp.Table:
    (t,) = [t for t in report.tables if t.title.startswith(title_start)]
    return t


def row(t: rp.Table, first: str) -> dict[str, str]:
    (r,) = [r for r in t.rows if r[0] == first]
    return dict(zip(t.columns, r))


def tables_only(paths: list[Path], **options: Any) -> rp.Report:
    runs = rp.load_runs(paths)
    opt = rp.ReportOptions(**options)
    variants = rp.group_variants(runs, opt.include_partial)
    tables, data, notes = rp.compute_tables(runs, variants, opt)
    return rp.Report(runs, variants, tables, [], data, notes)


# ----------------------------------------------------------------------------------------------------------------
# Numbers


def test_smoothing_threshold_and_final_value():
    import numpy as np

    v = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    assert rp.smooth(v, 2).tolist() == [0.0, 0.5, 1.5, 2.5, 3.5]
    assert rp.smooth(v, 1).tolist() == v.tolist()
    steps = np.arange(1.0, 11.0)
    fmt = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1], dtype=float)
    # trailing 5-step means: ..., step 6 -> 4/5 = 0.8, step 7 -> 5/5 = 1.0
    assert rp.steps_to_threshold(steps, fmt, 0.9, 5) == 7.0
    assert rp.steps_to_threshold(steps, fmt, 0.9, 1) == 3.0
    assert rp.steps_to_threshold(steps, np.zeros(10), 0.9, 5) is None
    # final = mean of the last max(window, ceil(10% of n)) values: n = 30 -> last 5; window 2 -> last 3
    x = np.arange(30.0)
    assert rp.final_value(x, 5) == pytest.approx(np.mean([25, 26, 27, 28, 29]))
    assert rp.final_value(x, 2) == pytest.approx(np.mean([27, 28, 29]))
    assert rp.final_value(np.array([]), 5) is None


def test_known_values_give_known_table_entries(sweep_dir: Path):
    report = tables_only([sweep_dir])
    assert [v.name for v in report.variants] == ["clip-0.2-0.2", "sigmoid-10-12"]

    acc = table(report, "Final held-out accuracy")
    # grpo: [0.5, 0.5, 0.8] = 0.5 + 0.3 * [0, 0, 1] -> mean 60, CI [50, 80] (see test_stats: [0, 0, 1] -> [0, 1]).
    # The last eval entry counts (step 40), not the step-20 one.
    assert row(acc, "clip-0.2-0.2")["synthetic"] == "60.0 [50.0, 80.0]"
    assert row(acc, "sigmoid-10-12")["synthetic"] == "75.0 [75.0, 75.0]"
    assert row(acc, "clip-0.2-0.2")["seeds"] == "3"
    # base model = step-0 evals pooled over all six runs: all 0.1.
    assert row(acc, "base model (step 0)")["synthetic"] == "10.0 [10.0, 10.0]"

    train = table(report, "Training summary")
    g, s = row(train, "clip-0.2-0.2"), row(train, "sigmoid-10-12")
    assert g["reached format >= 0.9"] == "2/3"
    assert g["per seed"] == "24, 34, not reached"  # onset + 4 with a 5-step trailing mean
    assert s["per seed"] == "9, 9, 9"
    assert s["steps to format >= 0.9"] == "9 [9, 9]"
    assert g["mean EUR"] == "0.900 [0.900, 0.900]"
    assert s["final entropy"] == "1.500 [1.500, 1.500]"
    # final reward/total = mean of last 5 steps = 1.5 (format on) for grpo seeds 0, 1 and 0.5 for seed 2:
    # 0.5 + 1.0 * [1, 1, 0] -> mean 1.1667, CI [0.5, 1.5].
    assert g["final reward/total"] == "1.167 [0.500, 1.500]"

    diff = table(report, "Paired differences against GRPO")
    d = row(diff, "sigmoid-10-12")
    # sigmoid - grpo per seed: [0.25, 0.25, -0.05] = 0.25 - 0.3 * [0, 0, 1] -> mean 15, CI [-5, 25] points.
    assert d["Δ synthetic acc (points)"] == "15.0 [-5.0, 25.0] (3 pairs)"
    # steps to format: pairs where both reached: seed 0: 9 - 24, seed 1: 9 - 34 -> mean -20, CI [-25, -15].
    assert d["Δ steps to format"] == "-20 [-25, -15] (2 pairs)"
    # Per-run mean (EUR, entropy): (0.9, 1.0) x3 and (0.7, 1.5) x3 lie on one falling line: r = -1.
    assert report.data["eur_entropy_pearson_r"] == pytest.approx(-1.0)
    dj = report.data["variants"]["sigmoid-10-12"]["vs_grpo"]
    assert dj["accuracy/synthetic"]["mean"] == pytest.approx(0.15)
    assert dj["accuracy/synthetic"]["seeds"] == [0, 1, 2]


def start(acc: float, low: float, high: float, **settings: Any) -> dict[str, Any]:
    """A step-0 evaluation as the trainer logs it: accuracy with its own interval over problems."""
    return {**ev(0, acc), "eval/accuracy_ci_low": low, "eval/accuracy_ci_high": high,
            **{f"eval/{k}": v for k, v in settings.items()}}


def test_base_model_row_counts_identical_step0_evaluations_once(tmp_path: Path):
    """A 2-run sweep (two gates, one seed): the step-0 evaluations are one evaluation twice. The row shows that
    evaluation's own interval, not a zero-width bootstrap over two copies ("50.0 [50.0, 50.0]")."""
    for gate, params in (("clip", GRPO), ("sigmoid", SIG)):
        write_run(tmp_path / gate, gate=gate, params=params, seed=0,
                  evals=[start(0.5, 0.402, 0.598), ev(STEPS, 0.7)])
    report = tables_only([tmp_path])
    base = row(table(report, "Final held-out accuracy"), "base model (step 0)")
    assert base["synthetic"] == "50.0 [40.2, 59.8]" and base["seeds"] == "1 evaluation (2 runs)"
    assert report.data["base_model"]["synthetic"] == {"mean": 0.5, "low": 0.402, "high": 0.598, "n": 1,
                                                      "evaluations": 1}


def test_base_model_row_pools_distinct_evaluations_only(tmp_path: Path):
    """Six runs, three seeds: three distinct step-0 evaluations (0.56, 0.58, 0.60), each copied by two gates.
    The interval is the bootstrap over the three, not over six values of which three are copies."""
    from softgate import intervals

    for seed, acc in enumerate((0.56, 0.58, 0.60)):
        for gate, params in (("clip", GRPO), ("sigmoid", SIG)):
            write_run(tmp_path / f"{gate}{seed}", gate=gate, params=params, seed=seed,
                      evals=[start(acc, acc - 0.07, acc + 0.07), ev(STEPS, 0.9)])
    report = tables_only([tmp_path])
    base = row(table(report, "Final held-out accuracy"), "base model (step 0)")
    distinct = intervals.bootstrap_mean_ci([0.56, 0.58, 0.60])
    copies = intervals.bootstrap_mean_ci([0.56, 0.56, 0.58, 0.58, 0.60, 0.60])
    assert base["synthetic"] == distinct.format(100) != copies.format(100)
    assert base["seeds"] == "3 evaluations (6 runs)"


def test_evaluation_seed_and_settings_decide_what_is_a_copy(tmp_path: Path):
    # Logged eval/seed wins over the run seed: two run seeds, one evaluation seed -> one evaluation.
    for seed in (0, 1):
        write_run(tmp_path / "same" / f"s{seed}", gate="clip", params=GRPO, seed=seed,
                  evals=[start(0.5, 0.4, 0.6, seed=7, temperature=0.7), ev(STEPS, 0.9)])
    assert row(table(tables_only([tmp_path / "same"]), "Final held-out accuracy"),
               "base model (step 0)")["seeds"] == "1 evaluation (2 runs)"
    # Same seed, other temperature: two evaluations.
    for i, temp in enumerate((0.7, 1.0)):
        write_run(tmp_path / "temps" / f"t{i}", gate="clip", params=GRPO, seed=0,
                  evals=[start(0.5, 0.4, 0.6, seed=7, temperature=temp), ev(STEPS, 0.9)])
    assert row(table(tables_only([tmp_path / "temps"]), "Final held-out accuracy"),
               "base model (step 0)")["seeds"] == "2 evaluations (2 runs)"


def test_paper_table1_layout_and_summary_fallback(tmp_path: Path):
    root = tmp_path / "runs"
    tasks = {"gsm8k": (0.80, 0.82), "math500": (0.56, 0.58), "aime2024+2025": (0.033, 0.083)}
    for seed in range(2):
        evals = []
        for task, (start, end) in tasks.items():
            evals += [ev(0, start, task), ev(STEPS, end + 0.01 * seed, task)]
        write_run(root / f"erf-s{seed}", gate="erf", params=SIG, seed=seed, evals=evals)
    # A run with summary.json only (no eval.jsonl): the trainer's layout {"eval_end": {"accuracy": ..}}.
    run = write_run(root / "arctan-s0", gate="arctan", params=SIG, seed=0)
    info = json.loads((run / "run.json").read_text())
    info["task"] = "gsm8k"
    (run / "run.json").write_text(json.dumps(info))
    (run / "summary.json").write_text(json.dumps({"eval_start": {"accuracy": 0.8}, "eval_end": {"accuracy": 0.9}}))
    report = tables_only([root])
    t = table(report, "Held-out accuracy (%), the paper's Table 1 layout")
    assert t.columns == ["variant", "GSM8K", "MATH500", "aime2024+2025", "seeds"]
    assert row(t, "erf-10-12")["GSM8K"] == "82.5 [82.0, 83.0]"
    assert row(t, "arctan-10-12")["GSM8K"] == "90.0 (n=1)"
    assert row(t, "arctan-10-12")["MATH500"] == "—"
    assert row(t, "base model (step 0)")["MATH500"] == "56.0 [56.0, 56.0]"
    assert "no GRPO (clip gate) variant: paired differences skipped" in report.notes


def test_aime_task_name_maps_to_paper_column(tmp_path: Path):
    write_run(tmp_path / "r", gate="sigmoid", params=SIG, seed=0, evals=[ev(STEPS, 0.1, "aime")])
    t = table(tables_only([tmp_path / "r"]), "Held-out accuracy (%), the paper's Table 1 layout")
    assert t.columns == ["variant", "AIME", "seeds"]


def test_partial_sweep_shows_status_and_excludes_unfinished(sweep_dir: Path):
    write_run(sweep_dir / "erf" / "seed0", gate="erf", params=SIG, seed=0, status="running",
              evals=[ev(0, 0.1), ev(20, 0.9)])
    write_run(sweep_dir / "erf" / "seed1", gate="erf", params=SIG, seed=1, status="failed", evals=[ev(0, 0.1)])
    report = tables_only([sweep_dir])
    runs = table(report, "Runs")
    statuses = {r[0]: r[3] for r in runs.rows}
    assert statuses["erf/seed0"] == "running" and statuses["erf/seed1"] == "failed"
    assert statuses["grpo/seed0"] == "finished"
    assert dict(zip(runs.columns, next(r for r in runs.rows if r[0] == "erf/seed0")))["step/steps"] == "20/40"
    assert "2 run(s) with status failed, running are plotted but left out" in runs.note
    acc = table(report, "Final held-out accuracy")
    assert row(acc, "erf-10-12")["synthetic"] == "—" and row(acc, "erf-10-12")["seeds"] == "0"
    assert row(table(report, "Training summary"), "erf-10-12")["reached format >= 0.9"] == "—"
    # With --include-partial the two runs count: accuracies 0.9 (last eval of the running run) and 0.1.
    report = tables_only([sweep_dir], include_partial=True)
    assert row(table(report, "Final held-out accuracy"), "erf-10-12")["synthetic"] == "50.0 [10.0, 90.0]"


def test_single_run_and_logs_alone(tmp_path: Path):
    # Logs alone: no run.json, no config: the variant comes from the directory above seedN, status unknown.
    run = write_run(tmp_path / "x" / "my-variant" / "seed3", gate=None, params={}, seed=3, status=None)
    (run / "eval.jsonl").write_text(json.dumps(ev(STEPS, 0.4, None)) + "\n")
    report = tables_only([run])
    assert [v.name for v in report.variants] == ["my-variant"]
    r = report.runs[0]
    assert (r.status, r.seed, r.label) == ("unknown", 3, "seed3")
    assert row(table(report, "Final held-out accuracy"), "my-variant")["held-out"] == "40.0 (n=1)"
    assert row(table(report, "Training summary"), "my-variant")["per seed"] == "14"


def test_config_yaml_gives_the_gate_without_run_json(tmp_path: Path):
    run = write_run(tmp_path / "r", gate=None, params={}, seed=0, status=None)
    assert (rp.load_run(run).variant, rp.load_run(run).gate) == ("r", None)  # logs alone: the directory
    (run / "config.yaml").write_text("seed: 7\ngate: {name: erf, tau_pos: 5, tau_neg: 6}\n")
    loaded = rp.load_run(run)
    assert (loaded.variant, loaded.seed, loaded.gate) == ("erf-5-6", 7, GateSpec.of("erf", tau_pos=5, tau_neg=6))


def test_per_rl_step_grouping_uses_off_policy_updates_for_gate_figures(tmp_path: Path):
    run = tmp_path / "r"
    run.mkdir()
    rows = []
    for rl in (1, 2):
        for it in (0, 1):
            for mb in (0, 1):
                eur = 1.0 if (it, mb) == (0, 0) else 0.7 + 0.1 * mb
                rows.append({"step": len(rows) + 1, "rl_step": rl, "reward/format": 0.25 * rl, "gate/eur": eur,
                             "policy/entropy": 1.0 + it, "policy/iteration": it, "policy/minibatch": mb})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = rp.load_run(run)
    assert loaded.step_unit == "RL step"
    steps, eur = loaded.series("gate/eur")
    assert steps.tolist() == [1.0, 2.0]
    # off-policy updates: (0, 1) -> 0.8, (1, 0) -> 0.7, (1, 1) -> 0.8: mean 0.7667; the on-policy 1.0 is left out
    assert eur.tolist() == pytest.approx([2.3 / 3, 2.3 / 3])
    assert loaded.series("policy/entropy")[1].tolist() == [1.5, 1.5]  # all four updates
    assert loaded.series("reward/format")[1].tolist() == [0.25, 0.5]


def test_sweep_manifest_names_variants(tmp_path: Path):
    root = tmp_path / "sw"
    write_run(root / "soft" / "seed0", gate="sigmoid", params=SIG, seed=0)
    write_run(root / "soft" / "seed5", gate="sigmoid", params=SIG, seed=5)
    manifest = {"schema": 1, "cells": [
        {"name": "soft/seed0", "variant": "soft", "seed": 0, "run_dir": "soft/seed0"},
        {"name": "soft/seed5", "variant": "soft", "seed": 5, "run_dir": "soft/seed5"}]}
    (root / "sweep.json").write_text(json.dumps(manifest))
    report = tables_only([root])
    assert [v.name for v in report.variants] == ["soft"]
    assert [r.cell for r in report.runs] == ["soft/seed0", "soft/seed5"]


# ----------------------------------------------------------------------------------------------------------------
# Variants come from the gate value


@pytest.mark.parametrize("schema", [1, 2])
def test_student_nu_1_and_nu_8_are_two_variants(tmp_path: Path, schema: int):
    """Two student gates that differ only in nu are two gates: their seeds must not be pooled into one interval.

    Schema 1 is how the trainer wrote run.json before the gate became one value (parameters flat next to the name).
    """
    for nu, accs in ((1.0, (0.2, 0.3)), (8.0, (0.6, 0.7))):
        for seed, acc in enumerate(accs):
            run = write_run(tmp_path / f"nu{nu:g}" / f"seed{seed}", gate="student", params={**SIG, "nu": nu},
                            seed=seed, evals=[ev(STEPS, acc)])
            if schema == 1:
                flat = {"schema": 1, "status": "finished", "gate": "student", **SIG, "nu": nu, "seed": seed,
                        "steps": STEPS, "last_step": STEPS}
                (run / "run.json").write_text(json.dumps(flat))
    report = tables_only([tmp_path])
    assert [v.name for v in report.variants] == ["student-10-12-1", "student-10-12-8"]
    assert [v.gate for v in report.variants] == [GateSpec.of("student", nu=1), GateSpec.of("student", nu=8)]
    acc = table(report, "Final held-out accuracy")
    assert row(acc, "student-10-12-1")["synthetic"] == "25.0 [20.0, 30.0]"
    assert row(acc, "student-10-12-8")["synthetic"] == "65.0 [60.0, 70.0]"


def test_every_registered_gate_round_trips_through_the_run_directory(tmp_path: Path):
    """A run of every registered gate, written with softgate.rundir (no training), read back by the report."""
    specs = {name: gates.make(name).spec for name in gates.names()}
    for seed in (0, 1):
        for name, spec in specs.items():
            run = RunDir(tmp_path / name / f"seed{seed}")
            run.write_info(RunInfo(status="finished", gate=spec.to_dict(), seed=seed, steps=2, last_step=2))
            with run.metrics_writer() as log:
                for step, on_policy in ((1, True), (2, False), (3, True), (4, False)):
                    log.write({"step": step, "rl_step": (step + 1) // 2, "policy/on_policy": on_policy,
                               "gate/eur": 1.0 if on_policy else 0.5, "reward/total": 0.25 * step})
            run.write_eval({"step": 4, "rl_step": 2, "eval/task": "synthetic", "eval/accuracy": 0.5})
    report = tables_only([tmp_path])
    assert sorted(v.name for v in report.variants) == sorted(spec.label for spec in specs.values())
    assert {v.name: v.gate for v in report.variants} == {spec.label: spec for spec in specs.values()}
    assert all(len(v.stat_runs) == 2 for v in report.variants)
    assert [v.name for v in report.variants if v.is_baseline] == [specs["clip"].label]
    # Per RL step, gate figures average the off-policy updates only (policy/on_policy): EUR 0.5, not 0.75.
    run = report.runs[0]
    assert run.step_unit == "RL step" and run.series("gate/eur")[1].tolist() == [0.5, 0.5]
    diff = table(report, "Paired differences against GRPO")
    assert diff.title == f"Paired differences against GRPO ({specs['clip'].label})"
    assert len(diff.rows) == len(specs) - 1


def test_a_gate_this_process_does_not_know_is_kept_as_written(tmp_path: Path):
    run = RunDir(tmp_path / "mine")
    run.write_info(RunInfo(status="finished", gate={"name": "my_gate", "params": {"k": 2.5}}, seed=0, steps=1))
    loaded = rp.load_run(run.path)
    assert (loaded.variant, loaded.gate.name, loaded.gate.params) == ("my_gate-2.5", "my_gate", {"k": 2.5})


def test_a_sweep_variant_pooling_different_gates_is_noted(tmp_path: Path):
    root = tmp_path / "sw"
    write_run(root / "soft" / "seed0", gate="sigmoid", params=SIG, seed=0)
    write_run(root / "soft" / "seed1", gate="erf", params=SIG, seed=1)
    cells = [{"name": f"soft/seed{k}", "variant": "soft", "seed": k, "run_dir": f"soft/seed{k}"} for k in (0, 1)]
    (root / "sweep.json").write_text(json.dumps({"schema": 1, "cells": cells}))
    report = rp.build_report([root], tmp_path / "out", rp.ReportOptions(n_resamples=100))
    assert ("variant soft pools runs of different gates: sigmoid(tau_pos=10, tau_neg=12), "
            "erf(tau_pos=10, tau_neg=12)") in report.notes


# ----------------------------------------------------------------------------------------------------------------
# Errors


def test_empty_directory_is_a_clear_error(tmp_path: Path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(rp.ReportError, match=r"empty: no runs found \(looked for run.json or metrics.jsonl"):
        rp.load_runs([tmp_path / "empty"])
    with pytest.raises(rp.ReportError, match="no such file or directory"):
        rp.load_runs([tmp_path / "missing"])


def test_incompatible_schema_is_a_clear_error(tmp_path: Path):
    run = write_run(tmp_path / "r", gate="erf", params=SIG, seed=0)
    info = json.loads((run / "run.json").read_text())
    info["schema"] = 3
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(IncompatibleRunError, match=r"run.json: schema 3, but this softgate reads schemas 1 and 2"):
        rp.load_runs([tmp_path])
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.jsonl").write_text('{"step": 1, "loss": 0.1}\n{"iteration": 2, "loss": 0.1}\n')
    with pytest.raises(IncompatibleRunError, match=r"metrics.jsonl:2: no 'step' key"):
        rp.load_runs([old])


def test_truncated_last_line_of_a_live_run_is_ignored(tmp_path: Path):
    run = write_run(tmp_path / "r", gate="erf", params=SIG, seed=0, status="running", steps=3)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 4, "reward/to')
    assert len(rp.load_run(run).metrics) == 3
    (run / "metrics.jsonl").write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
    with pytest.raises(RunDirError, match=r"metrics.jsonl:2: not valid JSON"):
        rp.load_run(run)


# ----------------------------------------------------------------------------------------------------------------
# Files


@pytest.fixture
def fake_plotting(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Stand-in for softgate.plots.plot_gates: records its gates and writes a PNG."""
    calls: list[Any] = []

    def plot_gates(gates_or_names, taus=(1.0, 5.0, 10.0), out="gates.png"):
        assert taus is None  # each gate at its own temperatures
        calls.append(list(gates_or_names))
        Path(out).write_bytes(b"\x89PNG\r\n\x1a\n fake")

    monkeypatch.setattr(plots, "plot_gates", plot_gates)
    return calls


def _failing_plot_gates(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("no figure today")


def test_report_files_reference_only_files_that_exist(sweep_dir: Path, tmp_path: Path, fake_plotting):
    out = tmp_path / "report"
    report = rp.build_report([sweep_dir], out, rp.ReportOptions(n_resamples=2000))
    names = [name for name, _ in report.figures]
    assert names == ["gates.png", "curve_reward_total.png", "curve_reward_format.png", "curve_train_accuracy.png",
                     "curve_gate_eur.png", "curve_policy_entropy.png", "curve_response_length_mean.png",
                     "eval_accuracy.png", "eur_vs_entropy.png"]
    (gates,) = fake_plotting
    assert [(g.name, g.params) for g in gates] == [("clip", GRPO), ("sigmoid", SIG)]
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in names[1:]:  # gates.png comes from the fake plot_gates here
        assert (out / name).with_suffix(".svg").read_text().lstrip().startswith("<?xml")

    page = (out / "report.html").read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page)
    assert len(refs) == len(names)
    for ref in refs:
        assert ref.startswith("data:image/png;base64,") or (out / ref).is_file(), ref
    assert "<table>" in page and "Paired differences against GRPO" in page
    assert re.findall(r"<figure id='([^']+)'>", page) == [Path(n).stem for n in names]  # report.html#<figure>

    md = (out / "summary.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links == names
    assert all((out / link).is_file() for link in links)
    assert "| clip-0.2-0.2 | 60.0 [50.0, 80.0] | 3 |" in md

    data = json.loads((out / "report.json").read_text())
    assert data["variants"]["clip-0.2-0.2"]["heldout_accuracy"]["synthetic"]["mean"] == pytest.approx(0.6)
    assert data["figures"] == names


def test_failing_gate_figure_still_writes_everything(sweep_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(plots, "plot_gates", _failing_plot_gates)
    out = tmp_path / "r"
    report = rp.build_report([sweep_dir / "grpo" / "seed0"], out, rp.ReportOptions(n_resamples=500))
    assert "gates.png" not in [n for n, _ in report.figures] and not (out / "gates.png").exists()
    assert "gate shape figure skipped: plot_gates failed: RuntimeError: no figure today" in report.notes
    page = (out / "report.html").read_text()
    for ref in re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page):
        assert ref.startswith("data:") or (out / ref).is_file()


def test_cli_report_exit_codes(sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch):
    from softgate import cli

    monkeypatch.setattr(plots, "plot_gates", _failing_plot_gates)
    (tmp_path / "nothing").mkdir()
    assert cli.main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "no runs found" in capsys.readouterr().err
    out = tmp_path / "o2"
    assert cli.main(["report", str(sweep_dir / "sigmoid"), "--out", str(out), "--resamples", "200"]) == 0
    assert "3 run(s), 1 variant(s)" in capsys.readouterr().out
    assert (out / "summary.md").is_file() and (out / "report.html").is_file()


def test_eval_curve_is_the_mean_over_seeds_with_a_bootstrap_band(sweep_dir: Path):
    runs = rp.load_runs([sweep_dir])
    (grpo,) = [v for v in rp.group_variants(runs) if v.is_baseline]
    points = plots.eval_curve(grpo, "synthetic")
    # GRPO's seeds evaluated at steps 0 (0.1 each), 20 (0.3 each) and 40 (0.5, 0.5, 0.8).
    assert [(p[0], p[4]) for p in points] == [(0.0, 3), (20.0, 3), (40.0, 3)]
    step, mean, low, high, _ = points[-1]
    assert mean == pytest.approx(0.6) and 0.5 - 1e-9 <= low < mean < high <= 0.8 + 1e-9
    assert points[0][1:4] == pytest.approx((0.1, 0.1, 0.1))  # equal seeds: no spread


def stress_run(path: Path, gate: str, params: dict[str, float], lr: float, k: int, seed: int, final: float) -> None:
    write_run(path, gate=gate, params=params, seed=seed, evals=[ev(0, 0.6), ev(STEPS, final)],
              extra_metrics={"policy/approx_kl": 0.1 * k + lr * 100})
    passes = 4 if lr > 1e-4 else 2
    (path / "config.yaml").write_text(f"optim:\n  lr: {lr}\nalgo:\n  staleness: {k}\n  num_iterations: {passes}\n"
                                      f"  minibatches: {passes}\n")


def test_stability_map_cells_and_collapse(tmp_path: Path):
    from softgate.report.stability import collapsed, stability_cells

    root = tmp_path / "study"
    # sigmoid(1, 1.05) at lr 3e-4, k 4: one of two seeds falls from 0.6 to 0.2 (< 0.3 = half of 0.6): collapsed.
    for seed, final in enumerate([0.2, 0.5]):
        stress_run(root / f"a{seed}", "sigmoid", {"tau_pos": 1.0, "tau_neg": 1.05}, 3e-4, 4, seed, final)
    stress_run(root / "b", "sigmoid", {"tau_pos": 1.0, "tau_neg": 1.05}, 1e-4, 0, 0, 0.9)
    stress_run(root / "c", "clip", GRPO, 1e-4, 0, 0, 0.8)
    cells = stability_cells(rp.load_runs([root]))
    sig = cells["sigmoid-1-1.05"]
    assert set(sig) == {(3e-4, 4), (1e-4, 0)}
    assert sig[(3e-4, 4)].deltas == pytest.approx([-0.4, -0.1]) and sig[(3e-4, 4)].collapsed == 1
    assert sig[(1e-4, 0)].mean_delta == pytest.approx(0.3) and sig[(1e-4, 0)].collapsed == 0
    assert sig[(3e-4, 4)].regimes == {"4x4"} and sig[(1e-4, 0)].regimes == {"2x2"}  # the columns' update regimes
    assert collapsed(0.6, 0.29) and not collapsed(0.6, 0.3)

    out = tmp_path / "report"
    report = rp.build_report([root], out, rp.ReportOptions(n_resamples=200))
    names = [name for name, _ in report.figures]
    assert "stability_map.png" in names and "eur_vs_drift.png" in names
    assert (out / "stability_map.svg").is_file()


def test_ratio_quantiles_by_update_since_the_rollout(tmp_path: Path):
    # Two seeds, 2 passes x 2 minibatches per RL step, lag 1: updates sit 1..4 optimizer steps after the sampling
    # policy. Seed s logs p50 = 1 + 0.01 * index * (s + 1), so the mean over seeds at index i is 1 + 0.015 i.
    root = tmp_path / "lagged"
    for seed in (0, 1):
        run = RunDir(root / f"seed{seed}")
        run.write_info(RunInfo(status="finished", gate=GateSpec.of("sigmoid").to_dict(), seed=seed, steps=2,
                               last_step=2))
        with run.metrics_writer() as log:
            step = 0
            for rl_step in (1, 2):
                for it in (0, 1):
                    for mb in (0, 1):
                        step += 1
                        i = 1 + 2 * it + mb
                        log.write({"step": step, "rl_step": rl_step, "rollout/policy_lag": 1, "policy/iteration": it,
                                   "policy/minibatch": mb, "gate/ratio_p05": 1 - 0.02 * i,
                                   "gate/ratio_p50": 1 + 0.01 * i * (seed + 1), "gate/ratio_p95": 1 + 0.03 * i})
    runs = rp.load_runs([root])
    assert plots.updates_since_rollout(runs[0].updates).tolist() == [1, 2, 3, 4, 1, 2, 3, 4]
    (variant,) = rp.group_variants(runs)
    indices, q = plots.ratio_by_update(variant)
    assert indices.tolist() == [1, 2, 3, 4]
    assert q[:, 0] == pytest.approx([1 - 0.02 * i for i in (1, 2, 3, 4)])
    assert q[:, 1] == pytest.approx([1 + 0.015 * i for i in (1, 2, 3, 4)])
    out = tmp_path / "report"
    report = rp.build_report([root], out, rp.ReportOptions(n_resamples=200))
    assert "ratio_by_update.png" in [name for name, _ in report.figures]
    assert (out / "ratio_by_update.svg").is_file()
