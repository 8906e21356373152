"""Training engines: who runs the RL loop of a softgate config (``engine`` in the config, ``--engine`` on the
command line). ``native`` is :func:`softgate.train.train`; ``trl`` is TRL's GRPOTrainer with softgate's loss
(:mod:`softgate.engines.trl`), in this process or, with ``processes > 1`` or an accelerate config, under
``accelerate launch`` (:mod:`softgate.engines.launch`). Both write the same run directory.
"""

from __future__ import annotations

from typing import Any

from softgate.config import Config


def run(cfg: Config, *, resume: bool = False, overwrite: bool = False, processes: int = 1,
        accelerate_config: str | None = None) -> Any:
    """Train ``cfg`` with its engine; returns ``softgate.train.TrainResult``."""
    if cfg.engine == "native":
        if processes != 1 or accelerate_config:
            raise ValueError("--processes and --accelerate-config need --engine trl (the native engine runs in one "
                             "process)")
        from softgate.train import train

        return train(cfg, resume=resume, overwrite=overwrite)
    from softgate.engines.trl_args import check_trl_engine

    check_trl_engine(cfg, processes)  # refused keys in one line, before TRL is imported
    if processes == 1 and not accelerate_config:
        from softgate.engines.trl import train_trl

        return train_trl(cfg, resume=resume, overwrite=overwrite)
    return _launched(cfg, resume=resume, overwrite=overwrite, processes=processes,
                     accelerate_config=accelerate_config)


def _launched(cfg: Config, *, resume: bool, overwrite: bool, processes: int, accelerate_config: str | None) -> Any:
    """Check the run directory here, run the processes, and read back what rank 0 wrote."""
    from softgate.engines.launch import launch
    from softgate.lifecycle import prepare_run_dir
    from softgate.rundir import RunDir, RunInterrupted, resume_command
    from softgate.train import TrainResult

    run = RunDir(cfg.output_dir)
    if not prepare_run_dir(run, cfg, resume=resume, overwrite=overwrite):
        return TrainResult(run.path, run.read_summary() or {})
    code = launch(cfg, processes=processes, resume=resume, accelerate_config=accelerate_config)
    if code != 0:
        info = run.read_info()
        if info is not None and info.status == "interrupted":
            raise RunInterrupted(f"interrupted after step {info.last_step} of {cfg.steps}; resume with: "
                                 f"{resume_command(run.path)} --processes {processes}", code)
        raise RuntimeError(f"the {processes} trl engine processes exited with code {code} (their output is above)")
    return TrainResult(run.path, run.read_summary() or {})
