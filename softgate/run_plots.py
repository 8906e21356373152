"""Curves of one run (from its metrics.jsonl and eval.jsonl) as PNG files in RUN_DIR/plots/."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from softgate.rundir import read_jsonl  # noqa: E402

PANELS = [
    ("reward/total", "total reward"),
    ("reward/format", "format reward"),
    ("train/accuracy", "train accuracy"),
    ("gate/eur", "EUR (Eq. 12), off-policy updates"),
    ("policy/entropy", "entropy (nats/token)"),
    ("response/length_mean", "completion length"),
]


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def _on_policy(record: dict) -> bool:
    """The first update of an RL step sees r = 1 exactly (EUR = 1 whatever the gate): not informative."""
    return record.get("policy/iteration") == 0 and record.get("policy/minibatch") == 0


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``plots/curves.png`` (training figures per optimizer step) and ``plots/eval.png`` (held-out)."""
    run_dir = Path(run_dir)
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    evals = read_jsonl(run_dir / "eval.jsonl")
    written = []
    if metrics:
        fig, axes = plt.subplots(2, 3, figsize=(13, 7))
        window = max(1, len(metrics) // 25)
        for ax, (key, title) in zip(axes.flat, PANELS):
            rows = [m for m in metrics if not (key == "gate/eur" and _on_policy(m))]
            points = [(m["step"], m[key]) for m in rows if m.get(key) is not None]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, alpha=0.25, color="C0")
                ax.plot(steps, _smooth(list(values), window), color="C0")
            ax.set_title(title)
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
        fig.suptitle(f"{run_dir.name}: training (light: raw, dark: moving average of {window})")
        fig.tight_layout()
        path = out_dir / "curves.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    if evals:
        fig, ax = plt.subplots(figsize=(6, 4))
        steps = [e["step"] for e in evals]
        acc = [e.get("eval/accuracy") for e in evals]
        low = [e.get("eval/accuracy_ci_low") for e in evals]
        high = [e.get("eval/accuracy_ci_high") for e in evals]
        ax.plot(steps, acc, marker="o", label="accuracy (pass@1)")
        if None not in low and None not in high:
            ax.fill_between(steps, low, high, alpha=0.2, label="95% Wilson interval")
        ax.plot(steps, [e.get("eval/format_rate") for e in evals], marker="s", label="format rate")
        ax.set_xlabel("optimizer step")
        ax.set_ylim(0, 1)
        ax.set_title(f"{run_dir.name}: held-out evaluation")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / "eval.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
