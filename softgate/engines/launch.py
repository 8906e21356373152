"""Several processes for the ``trl`` engine: ``softgate train --engine trl --processes N`` re-runs the engine under
``accelerate launch``.

The launching process resolves the config and checks the run directory (``--resume`` / ``--overwrite``) once,
writes the resolved config to a temporary file and starts ``accelerate launch -m softgate.engines.launch CONFIG``;
every process then runs :func:`softgate.engines.trl.train_trl` on it (only rank 0 writes the run directory).

- CPU (``model.device=cpu``, or no GPU): accelerate's ``--cpu`` starts a single process unless MPI is set up, so
  the processes are started by its torchrun launcher (``--multi_gpu``) with ``ACCELERATE_USE_CPU=true``; each
  process trains on the CPU and the processes talk through gloo.
- ``--accelerate-config FILE`` (e.g. ``examples/deepspeed_zero2.yaml``) passes the file to accelerate
  (``--config_file``); ``--processes`` overrides its ``num_processes``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from softgate.config import Config, load_config, save_config
from softgate.engines.trl_args import check_trl_engine


def free_port() -> int:
    """A TCP port nobody listens on now (the rendezvous port of this run: several runs may share a machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(config_file: Path, *, processes: int, cpu: bool, resume: bool,
                   accelerate_config: str | None = None, port: int | None = None) -> list[str]:
    """The argv of ``accelerate launch`` that runs the engine on ``config_file`` in ``processes`` processes."""
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
            "--num_machines", "1", "--main_process_port", str(port or free_port())]
    if accelerate_config:
        argv += ["--config_file", str(accelerate_config)]
    else:
        argv += ["--mixed_precision", "no", "--dynamo_backend", "no"]
        if processes > 1:
            argv.append("--multi_gpu")  # torchrun; on CPU with ACCELERATE_USE_CPU (see the module docstring)
    argv += ["-m", "softgate.engines.launch", str(config_file)]
    return argv + (["--resume"] if resume else [])


def launch(cfg: Config, *, processes: int, resume: bool, accelerate_config: str | None = None) -> int:
    """Start the processes and wait for them; returns their exit code. The run directory was checked already."""
    from softgate.device import resolve_device

    check_trl_engine(cfg, processes)  # refused keys and the batch split, before any process starts
    if accelerate_config and not Path(accelerate_config).is_file():
        raise FileNotFoundError(f"--accelerate-config: {accelerate_config}: no such file")
    cpu = resolve_device(cfg.model.device).type == "cpu"
    env = {**os.environ, **({"ACCELERATE_USE_CPU": "true"} if cpu else {})}
    with tempfile.TemporaryDirectory(prefix="softgate-launch-") as tmp:
        config_file = Path(tmp) / "config.yaml"
        save_config(cfg, config_file)
        argv = launch_command(config_file, processes=processes, cpu=cpu, resume=resume,
                              accelerate_config=accelerate_config)
        return subprocess.run(argv, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    """One process of a launched run (what ``accelerate launch`` starts)."""
    from softgate.engines.trl import train_trl
    from softgate.rundir import RunInterrupted

    p = argparse.ArgumentParser(prog="python -m softgate.engines.launch")
    p.add_argument("config")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    try:
        train_trl(load_config(args.config), resume=args.resume, prepared=True)
    except RunInterrupted as err:  # every rank stops at the same step; the launching process says how to resume
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
