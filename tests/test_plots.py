"""softgate.plots: a run's figures from a run directory written with softgate.rundir, and no global side effects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from softgate import plots
from softgate.rundir import RunDir

PNG = b"\x89PNG\r\n\x1a\n"


def test_plot_run_writes_curves_and_eval(tmp_path: Path):
    run = RunDir(tmp_path / "run")
    with run.metrics_writer() as log:
        for step in range(1, 9):
            log.write({"step": step, "rl_step": (step + 1) // 2, "policy/on_policy": step % 2 == 1,
                       "reward/total": 0.1 * step, "gate/eur": 0.9, "policy/entropy": 1.0})
    for step in (0, 8):
        run.write_eval({"step": step, "eval/accuracy": 0.5, "eval/accuracy_ci_low": 0.4,
                        "eval/accuracy_ci_high": 0.6, "eval/format_rate": 0.9})
    written = plots.plot_run(run.path)
    assert written == [run.plots / "curves.png", run.plots / "eval.png"]
    assert all(p.read_bytes()[:8] == PNG for p in written)
    assert all(p.with_suffix(".svg").read_text().lstrip().startswith("<?xml") for p in written)


def test_run_figures_count_rl_steps_and_label_axes_in_words(tmp_path: Path, monkeypatch):
    run = RunDir(tmp_path / "run")
    with run.metrics_writer() as log:  # 3 RL steps of 2 updates each: optimizer steps 1..6
        for step in range(1, 7):
            log.write({"step": step, "rl_step": (step + 1) // 2, "policy/on_policy": step % 2 == 1,
                       "reward/total": float(step), "gate/eur": 1.0 if step % 2 == 1 else 0.5})
    for rl_step in (0, 3):
        run.write_eval({"step": 2 * rl_step, "rl_step": rl_step, "eval/accuracy": 1.0, "eval/format_rate": 1.0})
    figures = {}
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path, *a: figures.setdefault(path.name, fig) and
                        real_save(fig, path, *a))
    plots.plot_run(run.path)
    axes = {ax.get_title(): ax for ax in figures["curves.png"].axes}
    reward, eur = axes["total reward"], axes["EUR (Eq. 12), off-policy updates"]
    # x = RL steps 1..3; reward = the rollout's value; EUR = the off-policy update's only (0.5, not 0.75).
    assert reward.lines[0].get_xdata().tolist() == [1, 2, 3]
    assert reward.lines[0].get_ydata().tolist() == [1.5, 3.5, 5.5]
    assert eur.lines[0].get_ydata().tolist() == [0.5, 0.5, 0.5]
    metric_keys = {key for key, _ in plots.CURVE_METRICS}
    for fig in figures.values():
        for ax in fig.axes:
            assert ax.get_xlabel() == "RL step"
            assert ax.get_ylabel() and ax.get_ylabel() not in metric_keys
    (ev,) = figures["eval.png"].axes
    assert ev.lines[0].get_xdata().tolist() == [0, 3]
    low, high = ev.get_ylim()
    assert low < 0 and high > 1  # a marker at accuracy 1.0 is drawn whole


def test_plot_run_of_an_empty_run_writes_nothing(tmp_path: Path):
    assert plots.plot_run(tmp_path) == []


def test_importing_and_drawing_leave_the_matplotlib_backend_alone(tmp_path: Path):
    # A fresh interpreter: another test may already have chosen a backend in this one.
    code = ("import matplotlib; matplotlib.use('svg'); from softgate import plots; "
            f"plots.plot_gates(['erf'], out={str(tmp_path / 'g.png')!r}); print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "svg"
    assert (tmp_path / "g.png").read_bytes()[:8] == PNG


def test_smooth_is_a_trailing_mean():
    v = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    # out[i] = mean(v[max(0, i - 1) : i + 1]): 0, (0 + 1) / 2, (1 + 2) / 2, ...
    assert plots.smooth(v, 2).tolist() == [0.0, 0.5, 1.5, 2.5, 3.5]
    assert plots.smooth(v, 10).tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    with pytest.raises(ValueError, match="window must be >= 1"):
        plots.smooth(v, 0)
