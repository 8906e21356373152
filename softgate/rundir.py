"""The run directory: the one module that knows its files, their schema, and how to read and write them.

Written by ``softgate train`` (and by every engine that writes runs), read by ``softgate report``, ``softgate
sweep``, the run plots and resume. Layout (schema 2)::

    RUN_DIR/
      run.json          RunInfo: schema, softgate_version, status, engine, gate {"name", "params"}, seed, steps,
                        last_step, task, model (+ free extras such as final_eval_accuracy)
      config.yaml       the resolved config (what --resume reloads)
      metrics.jsonl     one JSON object per optimizer step ("step", "rl_step", "policy/on_policy", ...)
      eval.jsonl        one JSON object per held-out evaluation ("step", "rl_step", "eval/..."), one per (step,
                        task) (``RunDir.write_eval``)
      samples.jsonl     with log.samples_every = N: one JSON object per kept completion of every N-th RL step
                        ("rl_step", "row", "advantage", "tokens", "ratio", "gate_weight"; softgate.inspect)
      summary.json      start vs end figures, written when the run finishes
      checkpoints/step_XXXXXX/   complete checkpoints only (state.json written last; see softgate.checkpoint)
      plots/            figures of the run

docs/design.md lists every metric key; a test keeps the page and the trainer's keys equal.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import shlex
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import softgate

SCHEMA = 2
RUN_JSON = "run.json"
CONFIG_YAML = "config.yaml"
METRICS_JSONL = "metrics.jsonl"
EVAL_JSONL = "eval.jsonl"
SAMPLES_JSONL = "samples.jsonl"
SUMMARY_JSON = "summary.json"
CHECKPOINTS = "checkpoints"
PLOTS = "plots"

Status = Literal["running", "interrupted", "failed", "finished"]
STATUSES: tuple[str, ...] = get_args(Status)

_CHECKPOINT_NAME = re.compile(r"^step_(\d{6,})$")
# Directories inside a run that never hold another run (discovery does not descend into them).
_NOT_RUNS = {CHECKPOINTS, PLOTS, "__pycache__", "tensorboard", "wandb"}


class RunDirError(ValueError):
    """A run-directory file that cannot be read; the message names the file (and line)."""


class IncompatibleRunError(RunDirError):
    """A run written by a softgate whose run-directory schema this version does not read."""


class RunInterrupted(Exception):
    """A run stopped by a signal (Ctrl-C, SIGTERM) after saving what it had; the message says how to resume.
    ``exit_code`` is 128 + the signal number (130 for Ctrl-C), the shell's convention."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


def resume_command(path: str | os.PathLike[str]) -> str:
    """The command that continues the run in ``path`` (its saved config.yaml holds everything else)."""
    return f"softgate train --resume --out {shlex.quote(str(path))}"


# --------------------------------------------------------------------------------------------------------------
# JSONL: append-only logs that survive a kill (one flushed line per record, a torn last line is ignored).


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: they are written as null so that every line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlWriter:
    """Appends one JSON object per line and flushes it at once, so a killed run keeps everything it logged."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _finite_or_none(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike[str], *, require: str | None = None) -> list[dict[str, Any]]:
    """Records of a JSONL log ([] when the file is absent).

    A torn last line (the writer was killed mid-line) is ignored; any other bad line is a ``RunDirError`` naming
    ``path:line``. ``require`` names a key every record must carry (``IncompatibleRunError`` otherwise).
    """
    path = Path(path)
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise RunDirError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise RunDirError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise RunDirError(f"{path}:{number}: expected one JSON object per line, got {type(record).__name__}")
        if require is not None and require not in record:
            raise IncompatibleRunError(f"{path}:{number}: no {require!r} key; not a softgate run log of schema "
                                       f"{SCHEMA} (written by an incompatible version?)")
        records.append(record)
    return records


def truncate_after(path: str | os.PathLike[str], step: int, *, key: str = "step") -> int:
    """Keep records with ``record[key] <= step``; move the others to ``<name>.orphaned.jsonl`` (kept, never
    deleted: a resumed run writes those steps again). Returns how many records moved."""
    return set_aside(path, lambda record: record.get(key, 0) > step)


def set_aside(path: str | os.PathLike[str], drop: Callable[[dict[str, Any]], bool]) -> int:
    """Move the records of a JSONL log for which ``drop`` is true to ``<name>.orphaned.jsonl`` and rewrite the log
    with the others (atomically; a torn last line goes). Returns how many records moved."""
    path = Path(path)
    records = read_jsonl(path)
    keep = [r for r in records if not drop(r)]
    moved = [r for r in records if drop(r)]
    if moved:
        with orphaned_path(path).open("a", encoding="utf-8") as orphaned:
            orphaned.writelines(json.dumps(r) + "\n" for r in moved)
    if records:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
        os.replace(tmp, path)
    return len(moved)


def orphaned_path(path: str | os.PathLike[str]) -> Path:
    """Where ``truncate_after`` keeps the records it moves: ``metrics.jsonl`` -> ``metrics.orphaned.jsonl``."""
    path = Path(path)
    return path.with_name(path.stem + ".orphaned.jsonl")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON through a temporary file and a rename: readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_finite_or_none))
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunDirError(f"{path}: not valid JSON ({err})") from None


# --------------------------------------------------------------------------------------------------------------
# Updates: on-policy or not, and one row per RL step.


def is_on_policy(record: dict[str, Any]) -> bool:
    """True for an update made before any optimizer step since its rollout was sampled (r = 1 exactly, EUR = 1
    for every gate). The trainer logs this as ``policy/on_policy``; schema-1 logs, which lack the flag, used
    "first minibatch of the first pass"."""
    if "policy/on_policy" in record:
        return bool(record["policy/on_policy"])
    return record.get("policy/iteration") == 0 and record.get("policy/minibatch") == 0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def per_rl_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per RL step from the trainer's one row per optimizer step (rows carry ``rl_step``).

    The rollout figures (reward/*, train/*, response/*) repeat on every update of an RL step, so their mean is that
    value. ``gate/*`` figures are averaged over the off-policy updates only (``is_on_policy`` is False): on-policy
    updates have r = 1 and EUR = 1 for every gate and would only dilute the differences between gates. Other keys
    are averaged over all updates. ``step`` becomes the RL step.
    """
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["rl_step"], []).append(row)
    out = []
    for rl_step in sorted(groups):
        members = groups[rl_step]
        off = [r for r in members if not is_on_policy(r)]
        merged: dict[str, Any] = {"step": rl_step}
        for key in dict.fromkeys(k for r in members for k in r):
            if key in ("step", "rl_step"):
                continue
            source = off if (key.startswith("gate/") and off) else members
            values = [v for v in (_number(r.get(key)) for r in source) if v is not None]
            if values:
                merged[key] = sum(values) / len(values)
        out.append(merged)
    return out


# --------------------------------------------------------------------------------------------------------------
# run.json


@dataclass
class RunInfo:
    """The content of run.json. ``gate`` is the gate as one value: ``{"name": ..., "params": {...}}``."""

    status: Status
    gate: dict[str, Any]
    seed: int
    steps: int
    last_step: int = 0
    task: str | None = None
    model: str | None = None
    engine: str = "native"
    softgate_version: str = softgate.__version__
    schema: int = SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = {"schema": self.schema, "softgate_version": self.softgate_version, "status": self.status,
                "engine": self.engine, "gate": self.gate, "seed": self.seed, "steps": self.steps,
                "last_step": self.last_step, "task": self.task, "model": self.model}
        return {**data, **self.extra}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = RUN_JSON) -> RunInfo:
        schema = data.get("schema")
        if schema == 1:
            data = _upgrade_schema_1(data)
        elif schema != SCHEMA:
            raise IncompatibleRunError(f"{where}: schema {schema!r}, but this softgate reads schemas 1 and {SCHEMA} "
                                       "(the run was written by an incompatible softgate version)")
        gate = data.get("gate")
        if not (isinstance(gate, dict) and isinstance(gate.get("name"), str) and isinstance(gate.get("params"), dict)):
            raise RunDirError(f"{where}: 'gate' must be {{\"name\": ..., \"params\": {{...}}}}, got {gate!r}")
        known = {"schema", "softgate_version", "status", "engine", "gate", "seed", "steps", "last_step", "task",
                 "model"}
        return cls(status=data.get("status", "running"), gate=gate, seed=data.get("seed"), steps=data.get("steps"),
                   last_step=data.get("last_step", 0), task=data.get("task"), model=data.get("model"),
                   engine=data.get("engine", "native"), softgate_version=data.get("softgate_version", "?"),
                   schema=SCHEMA, extra={k: v for k, v in data.items() if k not in known})


def _upgrade_schema_1(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 wrote the gate's parameters flat next to its name (``"gate": "sigmoid", "tau_pos": 10, ...``)."""
    flat = ("tau_pos", "tau_neg", "eps_low", "eps_high", "nu")
    params = {k: data[k] for k in flat if isinstance(data.get(k), (int, float))}
    rest = {k: v for k, v in data.items() if k not in flat}
    return {**rest, "schema": SCHEMA, "gate": {"name": data.get("gate"), "params": params}}


# --------------------------------------------------------------------------------------------------------------
# The directory


class RunDir:
    """Paths and typed reads/writes of one run directory."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- paths --
    @property
    def run_json(self) -> Path:
        return self.path / RUN_JSON

    @property
    def config_yaml(self) -> Path:
        return self.path / CONFIG_YAML

    @property
    def metrics_jsonl(self) -> Path:
        return self.path / METRICS_JSONL

    @property
    def eval_jsonl(self) -> Path:
        return self.path / EVAL_JSONL

    @property
    def samples_jsonl(self) -> Path:
        return self.path / SAMPLES_JSONL

    @property
    def summary_json(self) -> Path:
        return self.path / SUMMARY_JSON

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def plots(self) -> Path:
        return self.path / PLOTS

    # -- state --
    def holds_run(self) -> bool:
        """True when a run has started here (run.json or metrics.jsonl exists)."""
        return self.run_json.is_file() or self.metrics_jsonl.is_file()

    def list_checkpoints(self) -> list[Path]:
        """Complete checkpoints (their state.json exists: it is written last), oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir()
                 if p.is_dir() and _CHECKPOINT_NAME.match(p.name) and (p / "state.json").is_file()]
        return sorted(found, key=lambda p: int(_CHECKPOINT_NAME.match(p.name).group(1)))  # type: ignore[union-attr]

    def latest_checkpoint(self) -> Path | None:
        found = self.list_checkpoints()
        return found[-1] if found else None

    def require_resumable(self) -> None:
        """FileNotFoundError unless a run to resume is here (its config.yaml: resume starts from it)."""
        if not self.config_yaml.is_file():
            raise FileNotFoundError(f"--resume: {self.path} holds no run to resume (no {CONFIG_YAML}); start one "
                                    f"without --resume")

    def checkpoint_step(self, path: Path) -> int:
        return int(_CHECKPOINT_NAME.match(path.name).group(1))  # type: ignore[union-attr]

    def advice(self) -> str:
        """One line on what to do with the run held here, by its status (for ``softgate train`` without
        ``--resume``): resume it (and from where), start over with ``--overwrite``, or nothing to do."""
        try:
            info = self.read_info()
        except RunDirError:  # a damaged run.json: the directory still holds a run
            info = None
        ckpt = self.latest_checkpoint()
        start = f"from its step-{self.checkpoint_step(ckpt)} checkpoint" if ckpt else "from step 0 (no checkpoint yet)"
        resume = f"continue it {start} with `{resume_command(self.path)}`"
        over = "or start over with --overwrite (the old run is moved to .old-<time>/ inside it)"
        if info is None:
            return f"{self.path} already holds a run: {resume}, {over}"
        where = f" at step {info.last_step} of {info.steps}"
        match info.status:
            case "finished":
                return (f"{self.path} holds a finished run (steps={info.steps}): nothing to do; extend it with "
                        f"`{resume_command(self.path)} --set steps=N`, {over}, or choose another --out")
            case "interrupted":
                return f"{self.path} holds a run interrupted{where}: {resume}, {over}"
            case "failed":
                return f"{self.path} holds a run that failed{where}: after fixing the cause, {resume}, {over}"
        return f"{self.path} holds a run marked running{where} (still running elsewhere, or killed): {resume}, {over}"

    def move_aside(self, prefix: str = ".old", paths: list[Path] | None = None) -> Path | None:
        """Move ``paths`` (default: everything in the directory except hidden entries) into ``<prefix>-<UTC time>/``
        inside it (never deleted; the leading dot keeps run discovery from counting it). Returns that directory, or
        None when there is nothing to move."""
        if paths is None:
            paths = [p for p in self.path.iterdir() if not p.name.startswith(".")] if self.path.is_dir() else []
        present = paths
        if not present:
            return None
        target = self.path / f"{prefix}-{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%dT%H%M%S%f')}"
        target.mkdir()
        for path in present:
            os.replace(path, target / path.name)
        return target

    def attempt_files(self) -> list[Path]:
        """The files of a run attempt that exist, checkpoints aside (what ``softgate sweep`` moves out of the way
        before starting a cell over: the trainer refuses to mix two runs in one metrics.jsonl)."""
        names = (RUN_JSON, CONFIG_YAML, METRICS_JSONL, orphaned_path(METRICS_JSONL).name, EVAL_JSONL,
                 orphaned_path(EVAL_JSONL).name, SAMPLES_JSONL, orphaned_path(SAMPLES_JSONL).name, SUMMARY_JSON,
                 PLOTS)
        return [self.path / name for name in names if (self.path / name).exists()]

    # -- run.json --
    def write_info(self, info: RunInfo) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.run_json, info.to_json())

    def read_info(self) -> RunInfo | None:
        if not self.run_json.is_file():
            return None
        data = _read_json(self.run_json)
        if not isinstance(data, dict):
            raise RunDirError(f"{self.run_json}: expected a JSON object")
        return RunInfo.from_json(data, where=str(self.run_json))

    # -- logs --
    def metrics_writer(self) -> JsonlWriter:
        return JsonlWriter(self.metrics_jsonl)

    def read_metrics(self) -> list[dict[str, Any]]:
        """One record per optimizer step, in step order."""
        return sorted(read_jsonl(self.metrics_jsonl, require="step"), key=lambda r: r["step"])

    def read_evals(self) -> list[dict[str, Any]]:
        return read_jsonl(self.eval_jsonl, require="step")

    def find_eval(self, step: int, task: str) -> dict[str, Any] | None:
        """The evaluation line of ``step`` (the optimizer-step index) and ``task``, or None. A line without
        ``eval/task`` (older runs, one task) counts as ``task``'s."""
        found = [r for r in self.read_evals() if _eval_key(r, task) == (step, task)]
        return found[-1] if found else None

    def write_eval(self, record: dict[str, Any]) -> None:
        """Append one evaluation line; eval.jsonl holds one line per (step, task), so a line of the same step and
        task already there (made with other settings before a resume) is moved to eval.orphaned.jsonl first."""
        key = _eval_key(record, None)
        set_aside(self.eval_jsonl, lambda r: _eval_key(r, key[1]) == key)
        with JsonlWriter(self.eval_jsonl) as out:
            out.write(record)

    def write_samples(self, records: Iterable[dict[str, Any]]) -> None:
        """Append kept completions (``log.samples_every``) to samples.jsonl."""
        with JsonlWriter(self.samples_jsonl) as out:
            for record in records:
                out.write(record)

    def read_samples(self) -> list[dict[str, Any]]:
        """Kept completions, in the order written ([] when the run kept none)."""
        return read_jsonl(self.samples_jsonl, require="rl_step")

    def truncate_logs_after(self, rl_step: int) -> int:
        """Move log lines past ``rl_step`` aside (resume); returns how many metric lines moved."""
        truncate_after(self.eval_jsonl, rl_step, key="rl_step")
        truncate_after(self.samples_jsonl, rl_step, key="rl_step")
        return truncate_after(self.metrics_jsonl, rl_step, key="rl_step")

    # -- config and summary --
    def read_config(self) -> dict[str, Any]:
        """config.yaml as a nested dict ({} when absent)."""
        if not self.config_yaml.is_file():
            return {}
        import yaml

        try:
            data = yaml.safe_load(self.config_yaml.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise RunDirError(f"{self.config_yaml}: not valid YAML: {err}") from None
        return data if isinstance(data, dict) else {}

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.summary_json, summary)

    def read_summary(self) -> dict[str, Any] | None:
        if not self.summary_json.is_file():
            return None
        data = _read_json(self.summary_json)
        return data if isinstance(data, dict) else None


def _eval_key(record: dict[str, Any], task: str | None) -> tuple[Any, Any]:
    """(step, task) of an evaluation line; ``task`` stands in for a line that names none."""
    return record.get("step"), record.get("eval/task", task)


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    return RunDir(path).holds_run()


def discover_runs(roots: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Run directories at or below each root, in sorted order. Hidden directories (``.stale-*`` attempts) and the
    inside of a run (checkpoints, plots) are skipped; a run directory does not hold other runs."""
    for raw in roots:
        root = Path(raw)
        if is_run_dir(root):
            yield root
            continue
        for dirpath, dirnames, _ in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in _NOT_RUNS and not d.startswith("."))
            here = Path(dirpath)
            if here != root and is_run_dir(here):
                dirnames[:] = []
                yield here
