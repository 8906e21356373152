"""Running a sweep: one training subprocess per cell, at most ``workers`` at a time, resumable.

A cell whose run.json says ``finished`` is skipped; a cell with a checkpoint is resumed; a cell that left logs but
no checkpoint starts over after its files are moved aside. A failing cell is reported at the end and does not stop
the others. What the run directory holds is read through ``softgate.rundir``.
"""

from __future__ import annotations

import datetime as _dt
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, TextIO

from softgate.rundir import RunDir, RunDirError
from softgate.sweep.manifest import write_manifest
from softgate.sweep.spec import Cell, Sweep, format_value
from softgate.threads import THREAD_ENV_VARS, usable_cores

CELL_LOG = "sweep.log"
# Environment variables that bound the threads of one training process (torch reads OMP_NUM_THREADS at start).
THREADS_KEY = "model.threads"  # torch's intra-op threads (softgate.config.ModelConfig.threads)
PROGRESS_KEY = "log.progress"  # the trainer's own progress bar, turned off in sweep cells
# The default trainer: this interpreter running softgate's CLI. Tests substitute a fake trainer script.
DEFAULT_TRAINER: tuple[str, ...] = (sys.executable, "-m", "softgate.cli")

CellState = Literal["new", "restart", "resume", "finished"]
Outcome = Literal["finished", "skipped", "failed", "interrupted"]


# --------------------------------------------------------------------------------------------------------------
# Commands and cell state


def train_command(base: Path, cell: Cell, *, resume: bool, trainer: Sequence[str] | None = None,
                  threads_per_run: int | None = None) -> list[str]:
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


def cell_state(run_dir: Path) -> CellState:
    """``finished`` (skip), ``resume`` (a checkpoint exists), ``restart`` (logs but no checkpoint) or ``new``."""
    run = RunDir(run_dir)
    try:
        info = run.read_info()
    except RunDirError:  # a damaged run.json is not a finished run: train it again
        info = None
    if info is not None and info.status == "finished":
        return "finished"
    if run.latest_checkpoint() is not None:
        return "resume"
    return "restart" if run.metrics_jsonl.exists() else "new"


def set_aside(run_dir: Path) -> Path | None:
    """Move a checkpoint-less attempt's files into ``run_dir/.stale-<UTC time>/``; returns that directory.

    The trainer refuses to start over them (it would mix two runs in one metrics.jsonl), so they are moved, never
    deleted. The leading dot keeps ``softgate report`` from counting the old attempt as a run.
    """
    run = RunDir(run_dir)
    return run.move_aside(".stale", run.attempt_files())


def check_cells(sweep: Sweep, cells: Sequence[Cell]) -> list[str]:
    """Validate every cell's config (base + overrides) with ``softgate.config``; one message per bad cell.

    Catches a misspelled key once, before 18 training processes each fail on it.
    """
    from softgate.config import ConfigError, load_config

    problems: list[str] = []
    for cell in cells:
        try:
            load_config(sweep.base, overrides=[f"{k}={format_value(v)}" for k, v in cell.overrides.items()])
        except ConfigError as err:
            problems.append(f"{sweep.path}: cell {cell.name}: {err}")
    return problems


def available_cpus() -> int:
    """CPUs this process may use (affinity-aware; the one rule lives in softgate.threads)."""
    return usable_cores()


def default_workers(threads_per_run: int) -> int:
    """Parallel cells that fit the machine: one per ``threads_per_run`` CPUs, at least one."""
    return max(1, available_cpus() // max(1, threads_per_run))


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


def cell_env(threads_per_run: int, base_env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a cell's process: thread counts bounded so that parallel cells do not oversubscribe."""
    env = dict(os.environ if base_env is None else base_env)
    for var in THREAD_ENV_VARS:
        env[var] = str(threads_per_run)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")  # so the cell log fills while it runs
    return env


# --------------------------------------------------------------------------------------------------------------
# Results and printing


@dataclass
class CellResult:
    """What happened to one cell in this invocation."""

    cell: Cell
    outcome: Outcome
    returncode: int | None = None
    seconds: float = 0.0
    resumed: bool = False
    log: Path | None = None
    error: str | None = None  # why the trainer could not be started


@dataclass
class SweepResult:
    results: list[CellResult] = field(default_factory=list)

    @property
    def failed(self) -> list[CellResult]:
        return [r for r in self.results if r.outcome in ("failed", "interrupted")]

    @property
    def ok(self) -> bool:
        return not self.failed


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


def print_summary(result: SweepResult, stream: TextIO | None = None) -> None:
    """Print the end-of-sweep summary: counts, then each failed cell with the tail of its log."""
    stream = sys.stderr if stream is None else stream
    counts = {k: sum(r.outcome == k for r in result.results) for k in ("finished", "skipped", "failed")}
    print(f"sweep done: {counts['finished']} finished, {counts['skipped']} skipped (already finished), "
          f"{counts['failed']} failed", file=stream)
    for r in result.failed:
        print(f"  FAILED {r.cell.name} (exit {r.returncode}); log: {r.log}", file=stream)
        tail = _tail(r.log) if r.log is not None else ""
        if tail:
            print(tail, file=stream)


def dry_run(sweep: Sweep, out: Path, *, workers: int, threads_per_run: int,
            trainer: Sequence[str] | None = None, stream: TextIO | None = None) -> list[Cell]:
    """Print the cells, their state, overrides and commands without running anything."""
    stream = sys.stdout if stream is None else stream
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


# --------------------------------------------------------------------------------------------------------------
# Running


@dataclass
class _Running:
    """A cell whose training process is running."""

    cell: Cell
    proc: subprocess.Popen[bytes]
    started: float  # time.monotonic()
    resumed: bool
    log: IO[bytes]

    def result(self, outcome: Outcome) -> CellResult:
        return CellResult(self.cell, outcome, self.proc.returncode, time.monotonic() - self.started, self.resumed,
                          self.cell.run_dir / CELL_LOG)


class _Progress:
    """One tqdm bar over cells (on a terminal) plus one line per event on ``stream``."""

    def __init__(self, sweep: Sweep, total: int, stream: TextIO, enabled: bool):
        from tqdm import tqdm

        self.stream, self.enabled, self.total = stream, enabled, total
        self.bar = tqdm(total=total, unit="cell", desc=f"sweep {sweep.name}", file=stream, disable=not enabled,
                        dynamic_ncols=True)

    def say(self, msg: str) -> None:
        if self.enabled:
            self.bar.write(msg, file=self.stream)
        else:
            print(msg, file=self.stream, flush=True)


def _start(sweep: Sweep, cell: Cell, resume: bool, trainer: Sequence[str], threads_per_run: int,
           env: dict[str, str], progress: _Progress) -> _Running | CellResult:
    """Start a cell's training process, its output appended to ``CELL_DIR/sweep.log`` under a header line.

    A trainer that cannot be started at all is a failed cell (the CellResult), not a crash of the sweep.
    """
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    stale = None if resume else set_aside(cell.run_dir)
    if stale is not None:
        progress.say(f"       {cell.name}: no checkpoint to resume from; earlier attempt moved to {stale}")
    cmd = train_command(sweep.base, cell, resume=resume, trainer=trainer, threads_per_run=threads_per_run)
    log = open(cell.run_dir / CELL_LOG, "ab")
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    log.write(f"=== softgate sweep {stamp}: {shlex.join(cmd)}\n".encode())
    log.flush()
    try:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    except OSError as err:
        log.write(f"cannot start the trainer: {err}\n".encode())
        log.close()
        return CellResult(cell, "failed", None, 0.0, resume, cell.run_dir / CELL_LOG, error=str(err))
    return _Running(cell, proc, time.monotonic(), resume, log)


def _stop(running: list[_Running]) -> list[CellResult]:
    """Ctrl-C: the children share our process group and usually got the SIGINT too; make sure they are gone."""
    for r in running:
        r.proc.terminate()
    for r in running:
        try:
            r.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()
        r.log.close()
    return [r.result("interrupted") for r in running]


def _finish(r: _Running, done: int, total: int, progress: _Progress) -> CellResult:
    """Close a cell whose process ended and say how it went."""
    r.log.close()
    result = r.result("finished" if r.proc.returncode == 0 else "failed")
    k = f"[{done}/{total}]"
    if result.outcome == "finished":
        progress.say(f"{k} done   {r.cell.name} in {_fmt_seconds(result.seconds)}")
    else:
        progress.say(f"{k} FAILED {r.cell.name} (exit {result.returncode}) after {_fmt_seconds(result.seconds)}; "
                     f"log: {result.log}")
    return result


def run_sweep(sweep: Sweep, out: Path, *, workers: int, threads_per_run: int, trainer: Sequence[str] | None = None,
              stream: TextIO | None = None, progress: bool = True, poll_seconds: float = 0.2) -> SweepResult:
    """Run every cell not yet finished, at most ``workers`` at a time; never raises for a failing cell.

    ``trainer`` is the argv prefix before ``train`` (default ``DEFAULT_TRAINER``, read at call time so tests can
    substitute a fake trainer script). Each cell's stdout and stderr go to ``CELL_DIR/sweep.log`` (appended, one
    header per attempt). ``sweep.json`` is rewritten after every cell.
    """
    trainer = DEFAULT_TRAINER if trainer is None else trainer
    out, cells = Path(out), sweep.cells(Path(out))
    states = {c.name: cell_state(c.run_dir) for c in cells}
    results = {c.name: CellResult(c, "skipped") for c in cells if states[c.name] == "finished"}
    queue = [c for c in cells if states[c.name] != "finished"]
    write_manifest(sweep, out, cells, results)
    bar = _Progress(sweep, len(cells), sys.stderr if stream is None else stream, progress)
    bar.bar.update(len(results))
    if results:
        bar.say(f"skipping {len(results)} finished cell(s): {', '.join(results)}")
    env, running = cell_env(threads_per_run), []
    try:
        while queue or running:
            while queue and len(running) < max(1, workers):
                cell = queue.pop(0)
                started = _start(sweep, cell, states[cell.name] == "resume", trainer, threads_per_run, env, bar)
                if isinstance(started, CellResult):
                    results[cell.name] = started
                    bar.say(f"[{len(results)}/{len(cells)}] FAILED {cell.name}: cannot start the trainer: "
                            f"{started.error}")
                    bar.bar.update(1)
                    continue
                running.append(started)
                bar.say(f"[{len(results) + len(running)}/{len(cells)}] start  {cell.name}"
                        + (" (resume)" if started.resumed else ""))
            for r in [r for r in running if r.proc.poll() is not None]:
                running.remove(r)
                results[r.cell.name] = _finish(r, len(results) + 1, len(cells), bar)
                bar.bar.update(1)
                write_manifest(sweep, out, cells, results)
            if running:
                n_failed = sum(r.outcome == "failed" for r in results.values())
                bar.bar.set_postfix_str(f"running {len(running)}, failed {n_failed}")
                time.sleep(poll_seconds)
    except KeyboardInterrupt:
        results.update((r.cell.name, r) for r in _stop(running))
        write_manifest(sweep, out, cells, results)
        raise
    finally:
        bar.bar.close()
    return SweepResult([results[c.name] for c in cells if c.name in results])


__all__ = ["CELL_LOG", "CellResult", "CellState", "DEFAULT_TRAINER", "Outcome", "SweepResult", "available_cpus",
           "cell_env", "cell_state", "check_cells", "default_out", "default_workers", "dry_run", "print_summary",
           "resolve_workers", "run_sweep", "set_aside", "train_command"]
