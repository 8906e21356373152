"""Sweep files: parsing, validation, and the expansion of the grid into cells (no process is started here).

The schema is documented in docs/sweeps.md; every error is a ``SweepFileError`` naming the file and the key.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TOP_LEVEL_KEYS = ("base", "name", "overrides", "grid", "workers", "threads_per_run")
# Keys the sweep sets itself: a sweep file may not set them.
RESERVED_KEYS = ("output_dir",)
SEED_KEY = "seed"  # axes that set it do not name a variant: the report averages over them

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class SweepFileError(ValueError):
    """A sweep file that does not follow the schema; the message names the file and the key."""


@dataclass(frozen=True)
class Axis:
    """One grid axis: a list of (cell-name part, overrides) choices.

    ``label`` is the config key for a simple axis (``seed``) or the free label of a named axis (``gate``).
    """

    label: str
    choices: tuple[tuple[str, dict[str, Any]], ...]

    @property
    def keys(self) -> set[str]:
        """Every config key some choice of this axis sets."""
        return {k for _, overrides in self.choices for k in overrides}


@dataclass(frozen=True)
class Cell:
    """One run of the sweep.

    ``name`` is the cell's path under the sweep output (``grpo/seed0``); ``variant`` is the name without the parts
    of axes that set ``seed`` (what the report averages over seeds); ``overrides`` are the ``--set`` pairs in order.
    """

    name: str
    variant: str
    seed: Any
    overrides: dict[str, Any]
    run_dir: Path


@dataclass
class Sweep:
    """A validated sweep file."""

    path: Path
    name: str
    base: Path
    overrides: dict[str, Any]
    axes: list[Axis]
    workers: int | None = None
    threads_per_run: int = 1

    def cells(self, out: Path) -> list[Cell]:
        """Expand the grid (product of the axes in file order) into cells under ``out``."""
        cells: list[Cell] = []
        for combo in itertools.product(*(axis.choices for axis in self.axes)):
            overrides = dict(self.overrides)
            parts: list[str] = []
            variant_parts: list[str] = []
            for axis, (part, axis_overrides) in zip(self.axes, combo):
                overrides.update(axis_overrides)  # grid values win over the sweep-wide overrides
                parts.append(part)
                if SEED_KEY not in axis.keys:
                    variant_parts.append(part)
            name = "/".join(parts) or "base"
            cells.append(Cell(name, "/".join(variant_parts) or "base", overrides.get(SEED_KEY), overrides,
                              Path(out).joinpath(*name.split("/"))))
        return cells


# --------------------------------------------------------------------------------------------------------------
# Validation


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _check_overrides(where: str, overrides: Any) -> dict[str, Any]:
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise SweepFileError(f"{where}: expected a mapping of config key -> value, got {type(overrides).__name__}")
    for key, value in overrides.items():
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise SweepFileError(f"{where}: {key!r} is not a config key (dotted name such as gate.tau_pos)")
        if key in RESERVED_KEYS:
            raise SweepFileError(f"{where}.{key}: set by the sweep itself (each cell gets its own run directory)")
        if not (_is_scalar(value) or (isinstance(value, list) and all(_is_scalar(v) for v in value))):
            raise SweepFileError(f"{where}.{key}: value must be a scalar or a list of scalars, got {value!r}")
    return dict(overrides)


def _name_part(key: str, value: Any) -> str:
    """Cell-name part of a simple-axis value: ``seed0``, ``tau_pos10``, ``lr1e-06``."""
    short = key.rsplit(".", 1)[-1]
    text = f"{value:g}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", f"{short}{text}")


def _named_choices(where: str, values: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Choices of a named axis: ``{name, set}`` variants."""
    choices = []
    for i, item in enumerate(values):
        item_where = f"{where}[{i}]"
        if set(item) - {"name", "set"} or "name" not in item:
            raise SweepFileError(
                f"{item_where}: a variant has keys `name` and `set` only (got {', '.join(map(str, item))})"
            )
        name = item["name"]
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise SweepFileError(f"{item_where}.name: {name!r} must be a non-empty name of letters, digits and "
                                 ". _ + = - (it becomes a directory name)")
        choices.append((name, _check_overrides(f"{item_where}.set", item.get("set"))))
    return choices


def _simple_choices(where: str, key: str, values: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    """Choices of a simple axis: one config key, one scalar per choice."""
    if not _KEY_RE.match(key):
        raise SweepFileError(f"{where}: {key!r} is not a config key (dotted name such as gate.tau_pos)")
    _check_overrides(where, {key: values[0]})  # reserved key
    for i, value in enumerate(values):
        if not _is_scalar(value):
            raise SweepFileError(f"{where}[{i}]: value must be a scalar, got {value!r}")
    return [(_name_part(key, value), {key: value}) for value in values]


def _parse_axis(where: str, axis: Any) -> Axis:
    if not isinstance(axis, dict) or len(axis) != 1:
        got = ", ".join(map(str, axis)) if isinstance(axis, dict) else type(axis).__name__
        raise SweepFileError(f"{where}: each axis is a mapping with exactly one key, e.g. `- seed: [0, 1, 2]` "
                             f"(got {got})")
    ((label, values),) = axis.items()
    where = f"{where}.{label}"
    if not isinstance(label, str) or not label:
        raise SweepFileError(f"{where}: axis label must be a non-empty string")
    if not isinstance(values, list) or not values:
        raise SweepFileError(f"{where}: expected a non-empty list of values or of {{name, set}} variants")
    named = [isinstance(v, dict) for v in values]
    if any(named) and not all(named):
        raise SweepFileError(f"{where}: mixes plain values and {{name, set}} variants; use one form per axis")
    choices = _named_choices(where, values) if all(named) else _simple_choices(where, label, values)
    parts = [part for part, _ in choices]
    duplicates = sorted({p for p in parts if parts.count(p) > 1})
    if duplicates:
        raise SweepFileError(f"{where}: duplicate cell names {duplicates} (each choice needs its own name)")
    return Axis(label, tuple(choices))


def _positive_int(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SweepFileError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _read_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SweepFileError(f"{path}: sweep file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SweepFileError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise SweepFileError(f"{path}: expected a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    unknown = [k for k in data if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise SweepFileError(f"{path}: unknown key(s) {unknown}; allowed: {', '.join(TOP_LEVEL_KEYS)}")
    return data


def _parse_grid(path: Path, grid: Any) -> list[Axis]:
    if not isinstance(grid, list):
        raise SweepFileError(f"{path}: grid: expected a list of axes (`- seed: [0, 1]`), got {type(grid).__name__}")
    axes = [_parse_axis(f"{path}: grid[{i}]", axis) for i, axis in enumerate(grid)]
    for (i, a), (j, b) in itertools.combinations(enumerate(axes), 2):
        shared = sorted(a.keys & b.keys)
        if shared:
            raise SweepFileError(f"{path}: grid[{i}] ({a.label}) and grid[{j}] ({b.label}) both set {shared}; "
                                 "a key may vary along one axis only")
    return axes


def load_sweep(path: str | os.PathLike[str], *, require_base: bool = True) -> Sweep:
    """Read and validate a sweep file; errors are ``SweepFileError`` naming the file and the key.

    ``require_base=False`` skips the check that the base config exists (to inspect a preset whose base config is
    elsewhere).
    """
    path = Path(path)
    data = _read_mapping(path)
    base = data.get("base")
    if not isinstance(base, str) or not base:
        raise SweepFileError(f"{path}: base: required, the path of the base config (relative to the sweep file)")
    base_path = Path(base) if os.path.isabs(base) else (path.parent / base).resolve()
    if require_base and not base_path.is_file():
        raise SweepFileError(f"{path}: base: config file not found: {base_path}")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SweepFileError(f"{path}: name: {name!r} must be letters, digits and . _ + = -")
    workers = data.get("workers")
    return Sweep(
        path, name, base_path,
        overrides=_check_overrides(f"{path}: overrides", data.get("overrides")),
        axes=_parse_grid(path, data.get("grid") or []),
        workers=None if workers is None else _positive_int(f"{path}: workers", workers),
        threads_per_run=_positive_int(f"{path}: threads_per_run", data.get("threads_per_run", 1)),
    )


def format_value(value: Any) -> str:
    """Render an override value for ``--set key=value`` so that a YAML parser reads it back unchanged."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        # PyYAML (YAML 1.1) reads "1e-06" as a string: a float needs a dot and a signed exponent.
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent if exponent[0] in '+-' else '+' + exponent}"
        return text
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    text = str(value)
    # A string YAML would read as something else ("10", "true", "null") is quoted.
    return text if yaml.safe_load(text) == text else json.dumps(text)
