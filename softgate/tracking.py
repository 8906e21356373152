"""Optional experiment trackers (TensorBoard, Weights & Biases) next to the run directory's own logs.

Each is created only when asked for; a missing package is named with its install command before any work starts.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

INSTALL = "pip install 'softgate[tracking]'"


def check_trackers(*, tensorboard: bool, wandb_project: str | None) -> None:
    """Raise ImportError naming the install command when an asked-for tracker's package is missing (called before
    the model loads, so that a run does not fail after minutes of set-up)."""
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ImportError(f"log.tensorboard=true needs the tensorboard package: {INSTALL}")
    if wandb_project and importlib.util.find_spec("wandb") is None:
        raise ImportError(f"log.wandb_project={wandb_project} needs the wandb package: {INSTALL}")


class TrackingSinks:
    """Optional TensorBoard and Weights & Biases sinks; each is created only when asked for."""

    def __init__(self, run_dir: Path, *, tensorboard: bool, wandb_project: str | None, config: dict[str, Any]):
        check_trackers(tensorboard=tensorboard, wandb_project=wandb_project)
        self.writers = []
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writers.append(("tb", SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))))
        if wandb_project:
            import wandb

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
