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
``workers`` at a time. A cell whose run.json says ``finished`` is skipped; a cell with a checkpoint is resumed.
A failing cell is reported at the end and does not stop the others.

``OUT/sweep.json`` records the cells (name, variant, seed, overrides, command, outcome) so that
``softgate report`` can label runs by their cell names.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import yaml

SWEEP_MANIFEST = "sweep.json"
CELL_LOG = "sweep.log"
MANIFEST_SCHEMA = 1

TOP_LEVEL_KEYS = ("base", "name", "overrides", "grid", "workers", "threads_per_run")
# Keys the sweep sets itself: a sweep file may not set them.
RESERVED_KEYS = ("output_dir",)
# Environment variables that bound the threads of one training process (torch reads OMP_NUM_THREADS at start).
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
# Config key of torch's intra-op threads (softgate.config.ModelConfig.threads).
THREADS_KEY = "model.threads"
# Config key of the trainer's own progress bar, turned off in sweep cells.
PROGRESS_KEY = "log.progress"
# The default trainer: this interpreter running softgate's CLI. Tests substitute a fake trainer script.
DEFAULT_TRAINER: tuple[str, ...] = (sys.executable, "-m", "softgate.cli")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

CellState = Literal["new", "restart", "resume", "finished"]
Outcome = Literal["finished", "skipped", "failed", "interrupted"]


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
        out = Path(out)
        cells: list[Cell] = []
        choice_lists = [axis.choices for axis in self.axes]
        for combo in itertools.product(*choice_lists):
            overrides = dict(self.overrides)
            parts: list[str] = []
            variant_parts: list[str] = []
            for axis, (part, axis_overrides) in zip(self.axes, combo):
                overrides.update(axis_overrides)  # grid values win over the sweep-wide overrides
                parts.append(part)
                if "seed" not in axis.keys:
                    variant_parts.append(part)
            name = "/".join(parts) if parts else "base"
            variant = "/".join(variant_parts) if variant_parts else "base"
            cells.append(Cell(name, variant, overrides.get("seed"), overrides, out.joinpath(*name.split("/"))))
        return cells


# ----------------------------------------------------------------------------------------------------------------
# Loading and validation


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


def _parse_axis(where: str, axis: Any) -> Axis:
    if not isinstance(axis, dict) or len(axis) != 1:
        got = ", ".join(map(str, axis)) if isinstance(axis, dict) else type(axis).__name__
        raise SweepFileError(
            f"{where}: each axis is a mapping with exactly one key, e.g. `- seed: [0, 1, 2]` (got {got})"
        )
    ((label, values),) = axis.items()
    where = f"{where}.{label}"
    if not isinstance(label, str) or not label:
        raise SweepFileError(f"{where}: axis label must be a non-empty string")
    if not isinstance(values, list) or not values:
        raise SweepFileError(f"{where}: expected a non-empty list of values or of {{name, set}} variants")
    named = [isinstance(v, dict) for v in values]
    if any(named) and not all(named):
        raise SweepFileError(f"{where}: mixes plain values and {{name, set}} variants; use one form per axis")
    choices: list[tuple[str, dict[str, Any]]] = []
    if all(named):
        for i, item in enumerate(values):
            item_where = f"{where}[{i}]"
            extra = set(item) - {"name", "set"}
            if extra or "name" not in item:
                raise SweepFileError(
                    f"{item_where}: a variant has keys `name` and `set` only (got {', '.join(map(str, item))})"
                )
            name = item["name"]
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise SweepFileError(
                    f"{item_where}.name: {name!r} must be a non-empty name of letters, digits and . _ + = - "
                    "(it becomes a directory name)"
                )
            choices.append((name, _check_overrides(f"{item_where}.set", item.get("set"))))
    else:
        if not _KEY_RE.match(label):
            raise SweepFileError(f"{where}: {label!r} is not a config key (dotted name such as gate.tau_pos)")
        _check_overrides(where, {label: values[0]})  # reserved key / key syntax
        for i, value in enumerate(values):
            if not _is_scalar(value):
                raise SweepFileError(f"{where}[{i}]: value must be a scalar, got {value!r}")
            choices.append((_name_part(label, value), {label: value}))
    parts = [part for part, _ in choices]
    duplicates = sorted({p for p in parts if parts.count(p) > 1})
    if duplicates:
        raise SweepFileError(f"{where}: duplicate cell names {duplicates} (each choice needs its own name)")
    return Axis(label, tuple(choices))


def _positive_int(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SweepFileError(f"{where}: expected a positive integer, got {value!r}")
    return value


def load_sweep(path: str | os.PathLike[str], *, require_base: bool = True) -> Sweep:
    """Read and validate a sweep file; errors are ``SweepFileError`` naming the file and the key.

    ``require_base=False`` skips the check that the base config exists (to inspect a preset whose base config is
    elsewhere).
    """
    path = Path(path)
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
    base = data.get("base")
    if not isinstance(base, str) or not base:
        raise SweepFileError(f"{path}: base: required, the path of the base config (relative to the sweep file)")
    base_path = (path.parent / base).resolve() if not os.path.isabs(base) else Path(base)
    if require_base and not base_path.is_file():
        raise SweepFileError(f"{path}: base: config file not found: {base_path}")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SweepFileError(f"{path}: name: {name!r} must be letters, digits and . _ + = -")
    overrides = _check_overrides(f"{path}: overrides", data.get("overrides"))
    grid = data.get("grid") or []
    if not isinstance(grid, list):
        raise SweepFileError(f"{path}: grid: expected a list of axes (`- seed: [0, 1]`), got {type(grid).__name__}")
    axes = [_parse_axis(f"{path}: grid[{i}]", axis) for i, axis in enumerate(grid)]
    for (i, a), (j, b) in itertools.combinations(enumerate(axes), 2):
        shared = sorted(a.keys & b.keys)
        if shared:
            raise SweepFileError(
                f"{path}: grid[{i}] ({a.label}) and grid[{j}] ({b.label}) both set {shared}; "
                "a key may vary along one axis only"
            )
    workers = data.get("workers")
    if workers is not None:
        workers = _positive_int(f"{path}: workers", workers)
    threads = _positive_int(f"{path}: threads_per_run", data.get("threads_per_run", 1))
    return Sweep(path, name, base_path, overrides, axes, workers, threads)


# ----------------------------------------------------------------------------------------------------------------
# Commands and cell state


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


def train_command(
    base: Path,
    cell: Cell,
    *,
    resume: bool,
    trainer: Sequence[str] | None = None,
    threads_per_run: int | None = None,
) -> list[str]:
    """The argv that trains ``cell``: ``TRAINER train BASE --set k=v ... --output-dir DIR [--resume]``.

    ``threads_per_run`` adds ``--set model.threads=T`` (torch intra-op threads) and ``--set log.progress=false``
    (the sweep shows one progress display; a per-cell bar would only fill its log with carriage returns), each
    unless the cell sets that key itself.
    """
    argv = [*(DEFAULT_TRAINER if trainer is None else trainer), "train", str(base)]
    for key, value in cell.overrides.items():
        argv += ["--set", f"{key}={format_value(value)}"]
    if threads_per_run is not None:
        for key, value in ((THREADS_KEY, threads_per_run), (PROGRESS_KEY, False)):
            if key not in cell.overrides:
                argv += ["--set", f"{key}={format_value(value)}"]
    argv += ["--output-dir", str(cell.run_dir)]
    if resume:
        argv.append("--resume")
    return argv


def _read_status(run_dir: Path) -> str | None:
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return info.get("status") if isinstance(info, dict) else None


def has_checkpoint(run_dir: Path) -> bool:
    """True when ``run_dir/checkpoints`` holds a completed ``step_*`` checkpoint (one with its state.json)."""
    ckpt = run_dir / "checkpoints"
    return ckpt.is_dir() and any((d / "state.json").is_file() for d in ckpt.glob("step_*"))


def cell_state(run_dir: Path) -> CellState:
    """``finished`` (skip), ``resume`` (a checkpoint exists), ``restart`` (logs but no checkpoint) or ``new``."""
    if _read_status(run_dir) == "finished":
        return "finished"
    if has_checkpoint(run_dir):
        return "resume"
    return "restart" if (run_dir / "metrics.jsonl").exists() else "new"


# Files of an attempt that died before its first checkpoint. The trainer refuses to start over them (it would mix
# two runs in one metrics.jsonl), so they are moved aside, never deleted.
_ATTEMPT_FILES = ("run.json", "config.yaml", "metrics.jsonl", "metrics.orphaned.jsonl", "eval.jsonl",
                  "summary.json", "plots")


def set_aside(run_dir: Path) -> Path | None:
    """Move a checkpoint-less attempt's files into ``run_dir/.stale-<UTC time>/``; returns that directory.

    The leading dot keeps ``softgate report`` from counting the old attempt as a run.
    """
    present = [name for name in _ATTEMPT_FILES if (run_dir / name).exists()]
    if not present:
        return None
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    target = run_dir / f".stale-{stamp}"
    target.mkdir()
    for name in present:
        os.replace(run_dir / name, target / name)
    return target


def check_cells(sweep: Sweep, cells: Sequence[Cell]) -> list[str]:
    """Validate every cell's config (base + overrides) with ``softgate.config``; one message per bad cell.

    Catches a misspelled key once, before 18 training processes each fail on it.
    """
    from softgate.config import ConfigError, load_config

    problems: list[str] = []
    for cell in cells:
        sets = [f"{k}={format_value(v)}" for k, v in cell.overrides.items()]
        try:
            load_config(sweep.base, overrides=sets)
        except ConfigError as err:
            problems.append(f"{sweep.path}: cell {cell.name}: {err}")
    return problems


def available_cpus() -> int:
    """CPUs this process may use (affinity-aware where the OS supports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(threads_per_run: int) -> int:
    """Parallel cells that fit the machine: one per ``threads_per_run`` CPUs, at least one."""
    return max(1, available_cpus() // max(1, threads_per_run))


def cell_env(threads_per_run: int, base_env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a cell's process: thread counts bounded so that parallel cells do not oversubscribe."""
    env = dict(os.environ if base_env is None else base_env)
    for var in THREAD_ENV_VARS:
        env[var] = str(threads_per_run)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")  # so the cell log fills while it runs
    return env


# ----------------------------------------------------------------------------------------------------------------
# Running


@dataclass
class CellResult:
    """What happened to one cell in this invocation."""

    cell: Cell
    outcome: Outcome
    returncode: int | None = None
    seconds: float = 0.0
    resumed: bool = False
    log: Path | None = None


@dataclass
class SweepResult:
    results: list[CellResult] = field(default_factory=list)

    @property
    def failed(self) -> list[CellResult]:
        return [r for r in self.results if r.outcome in ("failed", "interrupted")]

    @property
    def ok(self) -> bool:
        return not self.failed


def _manifest(sweep: Sweep, out: Path, cells: list[Cell], results: dict[str, CellResult]) -> dict[str, Any]:
    return {
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


def write_manifest(sweep: Sweep, out: Path, cells: list[Cell], results: dict[str, CellResult]) -> Path:
    """Write ``OUT/sweep.json`` atomically."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / SWEEP_MANIFEST
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_manifest(sweep, out, cells, results), indent=2) + "\n")
    os.replace(tmp, target)
    return target


def _fmt_seconds(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def dry_run(sweep: Sweep, out: Path, *, workers: int, threads_per_run: int,
            trainer: Sequence[str] | None = None, stream: TextIO | None = None) -> list[Cell]:
    """Print the cells, their state, overrides and commands without running anything."""
    stream = sys.stdout if stream is None else stream
    trainer = DEFAULT_TRAINER if trainer is None else trainer
    cells = sweep.cells(out)
    print(f"sweep {sweep.name}: {len(cells)} cells, base {sweep.base}", file=stream)
    print(f"output {out}, {workers} worker(s), {threads_per_run} thread(s) per run", file=stream)
    for i, cell in enumerate(cells, 1):
        state = cell_state(cell.run_dir)
        sets = " ".join(f"{k}={format_value(v)}" for k, v in cell.overrides.items()) or "(no overrides)"
        print(f"[{i}/{len(cells)}] {cell.name}  ({state})", file=stream)
        print(f"    overrides: {sets}", file=stream)
        if state == "finished":
            print("    skip: run.json says finished", file=stream)
        elif state == "restart":
            print("    restart: logs but no checkpoint; they will be moved to .stale-<time>/", file=stream)
        else:
            cmd = train_command(sweep.base, cell, resume=state == "resume", trainer=trainer,
                                threads_per_run=threads_per_run)
            print(f"    command: {shlex.join(cmd)}", file=stream)
    return cells


def run_sweep(
    sweep: Sweep,
    out: Path,
    *,
    workers: int,
    threads_per_run: int,
    trainer: Sequence[str] | None = None,
    stream: TextIO | None = None,
    progress: bool = True,
    poll_seconds: float = 0.2,
) -> SweepResult:
    """Run every cell not yet finished, at most ``workers`` at a time; never raises for a failing cell.

    ``trainer`` is the argv prefix before ``train`` (default ``DEFAULT_TRAINER``, read at call time so tests can
    substitute a fake trainer script). Each cell's stdout and stderr go to ``CELL_DIR/sweep.log`` (appended, one
    header per attempt). Progress is one tqdm bar over cells plus one status line per cell on ``stream``.
    """
    from tqdm import tqdm

    trainer = DEFAULT_TRAINER if trainer is None else trainer
    stream = sys.stderr if stream is None else stream
    out = Path(out)
    cells = sweep.cells(out)
    results: dict[str, CellResult] = {}
    pending: list[tuple[Cell, bool]] = []
    for cell in cells:
        state = cell_state(cell.run_dir)
        if state == "finished":
            results[cell.name] = CellResult(cell, "skipped")
        else:
            pending.append((cell, state == "resume"))
    write_manifest(sweep, out, cells, results)

    bar = tqdm(total=len(cells), unit="cell", desc=f"sweep {sweep.name}", file=stream, disable=not progress,
               dynamic_ncols=True)
    bar.update(len(results))

    def say(msg: str) -> None:
        if progress:
            bar.write(msg, file=stream)
        else:
            print(msg, file=stream, flush=True)

    if results:
        say(f"skipping {len(results)} finished cell(s): {', '.join(results)}")
    env = cell_env(threads_per_run)
    running: list[tuple[Cell, subprocess.Popen[bytes], float, bool, Any]] = []
    queue = list(pending)
    try:
        while queue or running:
            while queue and len(running) < max(1, workers):
                cell, resume = queue.pop(0)
                cell.run_dir.mkdir(parents=True, exist_ok=True)
                stale = None if resume else set_aside(cell.run_dir)
                if stale is not None:
                    say(f"       {cell.name}: no checkpoint to resume from; earlier attempt moved to {stale}")
                cmd = train_command(sweep.base, cell, resume=resume, trainer=trainer,
                                    threads_per_run=threads_per_run)
                log = open(cell.run_dir / CELL_LOG, "ab")
                stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
                log.write(f"=== softgate sweep {stamp}: {shlex.join(cmd)}\n".encode())
                log.flush()
                try:
                    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            stdin=subprocess.DEVNULL)
                except OSError as err:  # the trainer could not be started at all: a failed cell, not a crash
                    log.write(f"cannot start the trainer: {err}\n".encode())
                    log.close()
                    results[cell.name] = CellResult(cell, "failed", None, 0.0, resume, cell.run_dir / CELL_LOG)
                    say(f"[{len(results)}/{len(cells)}] FAILED {cell.name}: cannot start the trainer: {err}")
                    bar.update(1)
                    continue
                running.append((cell, proc, time.monotonic(), resume, log))
                note = " (resume)" if resume else ""
                say(f"[{len(results) + len(running)}/{len(cells)}] start  {cell.name}{note}")
            still: list[tuple[Cell, subprocess.Popen[bytes], float, bool, Any]] = []
            for cell, proc, t0, resume, log in running:
                rc = proc.poll()
                if rc is None:
                    still.append((cell, proc, t0, resume, log))
                    continue
                log.close()
                seconds = time.monotonic() - t0
                log_path = cell.run_dir / CELL_LOG
                outcome: Outcome = "finished" if rc == 0 else "failed"
                results[cell.name] = CellResult(cell, outcome, rc, seconds, resume, log_path)
                k = f"[{len(results)}/{len(cells)}]"
                if rc == 0:
                    say(f"{k} done   {cell.name} in {_fmt_seconds(seconds)}")
                else:
                    say(f"{k} FAILED {cell.name} (exit {rc}) after {_fmt_seconds(seconds)}; log: {log_path}")
                bar.update(1)
                write_manifest(sweep, out, cells, results)
            running = still
            if running:
                n_failed = sum(r.outcome == "failed" for r in results.values())
                bar.set_postfix_str(f"running {len(running)}, failed {n_failed}")
                time.sleep(poll_seconds)
    except KeyboardInterrupt:
        # Children share our process group and usually got the SIGINT too; make sure they are gone.
        for cell, proc, t0, resume, log in running:
            proc.terminate()
        for cell, proc, t0, resume, log in running:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
            results[cell.name] = CellResult(cell, "interrupted", proc.returncode, time.monotonic() - t0, resume,
                                            cell.run_dir / CELL_LOG)
        write_manifest(sweep, out, cells, results)
        bar.close()
        raise
    bar.close()
    ordered = [results[c.name] for c in cells if c.name in results]
    return SweepResult(ordered)


def summarize(result: SweepResult, stream: TextIO | None = None) -> None:
    """Print the end-of-sweep summary: counts, then each failed cell with the tail of its log."""
    stream = sys.stderr if stream is None else stream
    counts = {k: sum(r.outcome == k for r in result.results) for k in ("finished", "skipped", "failed")}
    print(f"sweep done: {counts['finished']} finished, {counts['skipped']} skipped (already finished), "
          f"{counts['failed']} failed", file=stream)
    for r in result.failed:
        print(f"  FAILED {r.cell.name} (exit {r.returncode}); log: {r.log}", file=stream)
        if r.log is not None:
            tail = _tail(r.log)
            if tail:
                print(tail, file=stream)


def resolve_workers(sweep: Sweep, workers: int | None, threads_per_run: int | None) -> tuple[int, int]:
    """(workers, threads per run): command line over sweep file over machine default."""
    threads = threads_per_run if threads_per_run is not None else sweep.threads_per_run
    if threads < 1:
        raise ValueError(f"--threads-per-run must be >= 1, got {threads}")
    if workers is None:
        workers = sweep.workers if sweep.workers is not None else default_workers(threads)
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    return workers, threads


def default_out(sweep: Sweep) -> Path:
    """``runs/sweeps/<sweep name>`` under the current directory."""
    return Path("runs") / "sweeps" / sweep.name


__all__ = [
    "CELL_LOG", "SWEEP_MANIFEST", "Axis", "Cell", "CellResult", "Sweep", "SweepFileError", "SweepResult",
    "cell_env", "cell_state", "check_cells", "default_out", "default_workers", "dry_run", "format_value",
    "has_checkpoint", "load_sweep", "resolve_workers", "run_sweep", "set_aside", "summarize", "train_command",
    "write_manifest",
]
