"""Sweeps: a grid of training runs from one base config, each cell in its own run directory.

A sweep file (YAML; the schema is documented in docs/sweeps.md)::

    base: ../configs/embedded.yaml          # required, relative to the sweep file
    overrides: {steps: 200}                  # applied to every cell
    grid:                                    # product over the axes, in this order
      - gate:                                # a named axis: coupled overrides under one name
          - {name: grpo, set: {gate.name: clip, gate.eps_low: 0.2, gate.eps_high: 0.2}}
          - {name: sigmoid-10-12, set: {gate.name: sigmoid, gate.tau_pos: 10, gate.tau_neg: 12}}
      - seed: [0, 1, 2]                      # a simple axis: one config key, one value per cell

expands to cells ``grpo/seed0 ... sigmoid-10-12/seed2``. Each cell runs
``python -m softgate.cli train BASE --set k=v ... --output-dir OUT/CELL [--resume]`` as a subprocess, at most
``workers`` at a time; ``OUT/sweep.json`` records the cells so that ``softgate report`` can name runs after them.

- ``spec``: parsing and validating the file, expanding the grid into ``Cell``s;
- ``runner``: cell state, commands, processes, the end-of-sweep summary;
- ``manifest``: ``sweep.json``.
"""

from softgate.sweep.manifest import SWEEP_MANIFEST, read_manifest, write_manifest
from softgate.sweep.runner import (
    CELL_LOG,
    DEFAULT_TRAINER,
    CellResult,
    SweepResult,
    available_cpus,
    cell_env,
    cell_state,
    check_cells,
    default_out,
    default_workers,
    dry_run,
    print_summary,
    resolve_workers,
    run_sweep,
    set_aside,
    train_command,
)
from softgate.sweep.spec import (
    Axis,
    Cell,
    Sweep,
    SweepFileError,
    format_value,
    load_sweep,
)

__all__ = [
    "CELL_LOG", "DEFAULT_TRAINER", "SWEEP_MANIFEST", "Axis", "Cell", "CellResult", "Sweep", "SweepFileError",
    "SweepResult", "available_cpus", "cell_env", "cell_state", "check_cells", "default_out", "default_workers",
    "dry_run", "format_value", "load_sweep", "print_summary", "read_manifest", "resolve_workers", "run_sweep",
    "set_aside", "train_command", "write_manifest",
]
