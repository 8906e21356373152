"""Optional experiment trackers (TensorBoard, Weights & Biases) next to the run directory's own logs.

Each is created only when asked for; a missing package is named with its install command before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
