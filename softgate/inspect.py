"""Where the gate acts: completions kept during training with their per-token ratio r, gate weight f'(r) and
advantage, and the HTML page of ``softgate inspect`` that shades every token by its effective coefficient f'(r) r.

- ``LastUpdate``: what the trainer's update phase leaves behind for ``log.samples_every`` (the row indices, the
  gate and the ``LossTerms`` of the update that produced the gradient; the last update of an RL step wins).
- ``sample_records``: the JSON records written to ``RUN_DIR/samples.jsonl`` (``softgate.rundir``).
- ``write_page``: the self-contained HTML page, with the ratio histogram from ``softgate.plots``.

The values are those of the loss computation that was backpropagated, not a recomputation: r = pi_theta / pi_old
at the moment of the RL step's last optimizer step, and f' the gate (with the EUR controller's temperatures then).
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softgate.rundir import RunDir

# Completions kept per logged step: the first rows of the last update, i.e. one whole group when G = 4, so that the
# page shows completions of one prompt side by side with advantages of both signs.
SAMPLES_PER_STEP = 4
# The colour scale of f'(r) r: 0 (gradient gated out) .. 1 (the plain policy gradient) .. 2 (amplified), clipped.
SCALE_MAX = 2.0


@dataclass
class LastUpdate:
    """The update that made the last optimizer step of an RL step (set by ``softgate.train.update_on_minibatch``).

    Fields:
        idx:   [M] long, the rollout rows of that minibatch (whole groups, in group order)
        terms: ``softgate.diagnostics.LossTerms`` of those rows: ratio, df = f'(r), mask, each [M, T]
        gate:  the gate object the loss used
    """

    idx: Any = None
    terms: Any = None
    gate: Any = None


def sample_records(last: LastUpdate, rollout, adv, tokenizer, rl_step: int,
                   k: int = SAMPLES_PER_STEP) -> list[dict[str, Any]]:
    """One record per kept completion: the first ``k`` rows of ``last``, their completion tokens (each decoded on
    its own), the ratio and gate weight per token and the row's advantage. Shapes: rollout rows [N, P + T],
    ``adv`` [N]; ``last.terms`` rows follow ``last.idx``."""
    if last.terms is None:
        return []
    P = rollout.prompt_len
    gate = {"name": last.gate.name, "params": dict(last.gate.params)}
    records = []
    for j, row in enumerate(last.idx[:k].tolist()):
        mask = last.terms.mask[j].cpu()  # [T] bool
        ids = rollout.input_ids[row, P:].cpu()[mask]  # [n_tokens]
        records.append({
            "rl_step": rl_step, "row": row, "group": int(rollout.group_ids[row]), "advantage": float(adv[row]),
            "gate": gate,
            "tokens": [tokenizer.decode([t]) for t in ids.tolist()],
            "ratio": last.terms.ratio[j].cpu()[mask].double().tolist(),
            "gate_weight": last.terms.df[j].cpu()[mask].double().tolist(),
        })
    return records


# --------------------------------------------------------------------------------------------------------------
# The page


def _colour(weight: float) -> str:
    """Background of a token: orange for f'(r) r < 1 (gradient held back), white at 1, blue above 1."""
    w = min(max(weight, 0.0), SCALE_MAX)
    if w <= 1.0:
        t = 1.0 - w  # 0 at the plain gradient, 1 when gated out
        return f"rgb(255,{round(255 - 120 * t)},{round(255 - 230 * t)})"
    t = (w - 1.0) / (SCALE_MAX - 1.0)
    return f"rgb({round(255 - 200 * t)},{round(255 - 120 * t)},255)"


def _token_html(token: str, r: float, df: float) -> str:
    weight = df * r
    title = f"r = {r:.5f}&#10;f'(r) = {df:.5f}&#10;f'(r) r = {weight:.5f}"
    shown = html.escape(token).replace("\n", "\u21b5\n") or "&#8203;"
    return f"<span class='tok' style='background:{_colour(weight)}' title='{title}'>{shown}</span>"


def _legend() -> str:
    stops = ", ".join(f"{_colour(SCALE_MAX * i / 10)} {10 * i}%" for i in range(11))
    ticks = "".join(f"<span>{SCALE_MAX * i / 4:g}</span>" for i in range(5))
    return (f"<div class='legend'><div>gate weight f'(r)&thinsp;r (share of the plain policy gradient a token gets;"
            f" clipped at {SCALE_MAX:g})</div><div class='bar' style='background:linear-gradient(to right, {stops})'>"
            f"</div><div class='ticks'>{ticks}</div><div class='note'>0: gated out &middot; 1: plain policy gradient"
            f" &middot; above 1: amplified. Hover a token for r and f'(r).</div></div>")


def _completion_html(rec: dict[str, Any]) -> str:
    tokens = "".join(_token_html(t, r, d) for t, r, d in zip(rec["tokens"], rec["ratio"], rec["gate_weight"]))
    sign = "pos" if rec["advantage"] > 0 else "neg"
    return (f"<div class='completion'><div class='head'>row {rec['row']} (prompt {rec['group']}), "
            f"<span class='{sign}'>advantage {rec['advantage']:+.3f}</span>, {len(rec['tokens'])} tokens</div>"
            f"<div class='text'>{tokens}</div></div>")


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
.wrap{display:flex;gap:2em;align-items:flex-start}.left{flex:1 1 60%;min-width:0}.right{flex:0 0 380px}
.completion{border:1px solid #ddd;border-radius:4px;margin:0 0 1em;padding:0.5em 0.7em}
.head{font-size:0.85em;color:#555;margin-bottom:0.3em}.pos{color:#0a6b2a}.neg{color:#a4262c}
.text{font-family:ui-monospace,monospace;font-size:0.95em;line-height:1.9;white-space:pre-wrap;word-break:break-word}
.tok{box-shadow:inset -1px -2px 0 #fff, inset 0 -3px 0 #ddd;padding:1px 1px}.legend{margin:0.5em 0 1.2em;font-size:0.85em;max-width:520px}
.bar{height:14px;border:1px solid #999;margin-top:4px}.ticks{display:flex;justify-content:space-between}
.note{color:#555;margin-top:2px}svg{max-width:100%;height:auto}"""


def _pick_step(samples: list[dict[str, Any]], step: int | None, path: Path) -> int:
    kept = sorted({s["rl_step"] for s in samples})
    if step is None:
        return kept[-1]
    if step not in kept:
        shown = ", ".join(map(str, kept)) if len(kept) <= 12 else f"{kept[0]}, {kept[1]}, ..., {kept[-1]}"
        raise ValueError(f"{path}: no completions kept at RL step {step}; kept steps: {shown}")
    return step


def write_page(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
               step: int | None = None) -> Path:
    """Write the inspect page of RL step ``step`` (default: the last one kept) of the run in ``run_dir`` to
    ``out`` (default ``RUN_DIR/plots/inspect_step<N>.html``); returns its path."""
    from softgate.plots import ratio_histogram_svg

    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise FileNotFoundError(f"{run.path}: no such run directory")
    samples = run.read_samples()
    if not samples:
        raise FileNotFoundError(f"{run.samples_jsonl}: no kept completions; train with log.samples_every=N "
                                f"(e.g. --set log.samples_every=10) to keep some")
    step = _pick_step(samples, step, run.samples_jsonl)
    shown = [s for s in samples if s["rl_step"] == step]
    ratios = [r for s in shown for r in s["ratio"]]
    gate = shown[0]["gate"]
    params = ", ".join(f"{k}={v:g}" for k, v in gate["params"].items())
    svg = ratio_histogram_svg(ratios, title=f"token ratios r of these {len(shown)} completions ({len(ratios)} tokens)")
    page = ["<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>softgate inspect: {html.escape(run.path.name)} step {step}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>{html.escape(run.path.name)}: RL step {step}</h1>",
            f"<p>Gate <code>{html.escape(gate['name'])}({html.escape(params)})</code>. Completions of the last "
            f"update of this RL step, with the ratio r = &pi;<sub>&theta;</sub>/&pi;<sub>old</sub> and the gate "
            f"weight of the loss computation that made its gradient.</p>",
            _legend(), "<div class='wrap'><div class='left'>", *map(_completion_html, shown),
            f"</div><div class='right'>{svg}</div></div></body></html>"]
    path = Path(out) if out is not None else run.plots / f"inspect_step{step}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(page), encoding="utf-8")
    return path
