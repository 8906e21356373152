"""``OUT/sweep.json``: the cells of a sweep (name, variant, seed, overrides, outcome), written by ``softgate sweep``
and read by ``softgate report`` to name runs after their cells."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softgate.rundir import write_json_atomic

if TYPE_CHECKING:
    from softgate.sweep.runner import CellResult
    from softgate.sweep.spec import Cell, Sweep

SWEEP_MANIFEST = "sweep.json"
MANIFEST_SCHEMA = 1


def write_manifest(sweep: Sweep, out: Path, cells: Sequence[Cell], results: Mapping[str, CellResult]) -> Path:
    """Write ``OUT/sweep.json`` atomically; a cell's outcome is that of its last attempt (None: not run yet)."""
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "schema": MANIFEST_SCHEMA,
        "sweep": sweep.name,
        "sweep_file": str(sweep.path.resolve()),
        "base": str(sweep.base),
        "cells": [
            {
                "name": c.name,
                "variant": c.variant,
                "seed": c.seed,
                "run_dir": c.name,  # relative to the manifest's directory
                "overrides": c.overrides,
                "outcome": results[c.name].outcome if c.name in results else None,
                "returncode": results[c.name].returncode if c.name in results else None,
            }
            for c in cells
        ],
    }
    target = out / SWEEP_MANIFEST
    write_json_atomic(target, data)
    return target


def read_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """The cells of ``directory/sweep.json`` keyed by their run directory (relative, POSIX); {} when there is no
    readable manifest (a damaged manifest only loses the cell names, never the runs)."""
    path = Path(directory) / SWEEP_MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    cells = data.get("cells") if isinstance(data, dict) else None
    if not isinstance(cells, list):
        return {}
    return {str(c["run_dir"]): c for c in cells if isinstance(c, dict) and "run_dir" in c}
