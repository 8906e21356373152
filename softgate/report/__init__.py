"""``softgate report``: figures and tables comparing runs, grouped into variants (one per gate) and seeds.

Input: run directories (``softgate.rundir``) or any directory above them (a sweep). Output in ``OUT``:

- ``gates.png``                    f, f', x f'(x) of the gates present
- ``curve_<metric>.png``           per-step curves, one line per variant (mean over seeds), band = min..max
- ``eval_accuracy.png``            held-out accuracy over training with its 95% intervals, one panel per task
- ``eur_vs_entropy.png``           EUR against policy entropy (the paper's relation: lower EUR, higher entropy)
- ``eur_vs_drift.png``             EUR against the measured drift KL(old || new) (``policy/approx_kl``)
- ``stability_map.png``            learning rate x staleness per gate: accuracy change, collapsed runs marked
- ``summary.md``                   the tables (Markdown) with the figures linked by relative path
- ``report.html``                  one self-contained page: the same tables, figures embedded as base64
- ``report.json``                  the numbers behind the tables

Every figure is written as PNG (embedded in report.html) and as SVG of the same name (for papers).

The package: ``runs`` (loading and grouping), ``tables`` (the numbers), ``stability`` (the stability map's cells and
the collapse rule), ``render`` (Markdown and HTML); the figures are drawn by ``softgate.plots``. Conventions are in
docs/sweeps.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softgate import plots
from softgate.plots import CURVE_METRICS, smooth
from softgate.report.render import Table, html_page, markdown_page
from softgate.report.runs import (
    ReportError, Run, Variant, find_runs, gate_of, group_variants, load_run, load_runs, mixed_gate_notes,
    step_unit,
)
from softgate.report.stability import stability_cells
from softgate.report.tables import (
    ReportOptions, compute_tables, final_eval, final_value, seed_values, start_eval, steps_to_threshold,
)
from softgate.rundir import IncompatibleRunError, RunDirError


@dataclass
class Report:
    """Everything ``build_report`` produced."""

    runs: list[Run]
    variants: list[Variant]
    tables: list[Table]
    figures: list[tuple[str, str]]  # (file name, caption), files that exist in out
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def build_report(paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str],
                 options: ReportOptions | None = None) -> Report:
    """Load the runs under ``paths`` and write figures, summary.md, report.html and report.json to ``out``."""
    opt = options or ReportOptions()
    if opt.smooth < 1:
        raise ReportError(f"--smooth must be >= 1, got {opt.smooth}")
    runs = load_runs(paths)
    variants = group_variants(runs, opt.include_partial)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables, data, notes = compute_tables(runs, variants, opt)
    figures, gate_notes = plots.plot_gate_shapes(variants, out)
    figures += plots.plot_curves(variants, out, opt.smooth, xlabel=step_unit(runs))
    figures += plots.plot_eval_curve(variants, out)
    figures += plots.plot_eur_entropy(variants, out)
    figures += plots.plot_eur_drift(variants, out)
    figures += plots.plot_stability_map(stability_cells(runs), out)
    figures += plots.plot_ratio_by_update(variants, out)
    missing = [key for key, _ in CURVE_METRICS if not any(r.series(key)[1].size for r in runs)]
    if missing:
        notes.append(f"not logged by any run: {', '.join(missing)}")
    notes = mixed_gate_notes(variants) + gate_notes + notes
    figures = [(name, cap) for name, cap in figures if (out / name).is_file()]
    report = Report(runs, variants, tables, figures, data, notes)
    sources = [str(p) for p in paths]
    (out / "summary.md").write_text(markdown_page(report, sources))
    (out / "report.html").write_text(html_page(report, out, sources))
    data["notes"] = notes
    data["figures"] = [name for name, _ in figures]
    (out / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    return report


__all__ = [
    "CURVE_METRICS", "IncompatibleRunError", "Report", "ReportError", "ReportOptions", "Run", "RunDirError", "Table",
    "Variant", "build_report", "compute_tables", "final_eval", "final_value", "find_runs", "gate_of",
    "group_variants", "load_run", "load_runs", "seed_values", "smooth", "start_eval", "steps_to_threshold",
]
