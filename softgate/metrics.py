"""Where training figures go: a JSONL file in the run directory, and TensorBoard / W&B when asked for.

metrics.jsonl is appended one line per optimizer step and flushed at once, so a killed run keeps everything it
logged. On resume, lines past the checkpoint's step are moved to ``metrics.orphaned.jsonl`` (kept, not deleted)
because the resumed run writes those steps again.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlLogger:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL log; a torn last line (killed mid-write) is ignored, any other bad line is an error."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
    return records


def truncate_after(path: Path, step: int, *, key: str = "step") -> int:
    """Keep records with ``record[key] <= step``; move the others to ``<name>.orphaned.jsonl``. Returns the count moved."""
    path = Path(path)
    if not path.is_file():
        return 0
    records = read_jsonl(path)
    keep = [r for r in records if r.get(key, 0) <= step]
    moved = [r for r in records if r.get(key, 0) > step]
    if moved:
        orphaned = path.with_name(path.stem + ".orphaned.jsonl")
        with orphaned.open("a", encoding="utf-8") as f:
            for r in moved:
                f.write(json.dumps(r) + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
    os.replace(tmp, path)
    return len(moved)


class TrackingSinks:
    """Optional TensorBoard and Weights & Biases sinks; each is created only when asked for."""

    def __init__(self, run_dir: Path, *, tensorboard: bool, wandb_project: str | None, config: dict[str, Any]):
        self.writers = []
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError("log.tensorboard=true needs TensorBoard: pip install 'softgate[tracking]'") from err
            self.writers.append(("tb", SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))))
        if wandb_project:
            try:
                import wandb
            except ImportError as err:
                raise ImportError("log.wandb_project needs Weights & Biases: pip install 'softgate[tracking]'") from err
            self.writers.append(("wandb", wandb.init(project=wandb_project, dir=str(run_dir), config=config,
                                                     name=Path(run_dir).name)))

    def log(self, record: dict[str, Any], step: int) -> None:
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        for kind, writer in self.writers:
            if kind == "tb":
                for k, v in scalars.items():
                    writer.add_scalar(k, v, step)
            else:
                writer.log(scalars, step=step)

    def close(self) -> None:
        for kind, writer in self.writers:
            if kind == "tb":
                writer.close()
            else:
                writer.finish()
