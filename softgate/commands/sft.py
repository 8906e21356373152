"""``softgate sft``: the supervised cold start before RL (TRL's SFTTrainer) from a YAML config plus ``--set``
overrides; writes a Hugging Face model folder that ``softgate train`` takes as ``model.name_or_path``."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from softgate.commands.train import add_run_options

    p = subparsers.add_parser(
        "sft", help="supervised cold start on the task's format before RL (TRL's SFTTrainer)",
        description="Train a Hugging Face causal LM on target completions in the <think>...</think><answer>..."
                    "</answer> format (the synthetic task's problems, rendered with the task's prompt and the "
                    "model's chat template), then write it to --out as a Hugging Face folder that `softgate train` "
                    "takes as model.name_or_path (LoRA adapters, model.lora, are merged into it). Keys: sft.*, "
                    "model.*, task.* (see docs/config.md and docs/training.md).",
    )
    p.add_argument("config", nargs="?", help="YAML config file (e.g. configs/smollm2_coldstart.yaml)")
    add_run_options(p)
    p.add_argument("--out", metavar="DIR", help="output model directory (same as --set output_dir=DIR)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a directory that is not empty; what it held is moved to DIR/.old-<time>/")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (same as --set log.progress=false)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from softgate.commands.train import run_overrides
    from softgate.config import load_config
    from softgate.rundir import RunDir
    from softgate.sft import sft

    overrides = [*run_overrides(args), *([f"output_dir={args.out}"] if args.out else []),
                 *(["log.progress=false"] if args.no_progress else [])]
    cfg = load_config(args.config, overrides)
    out = Path(cfg.output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not args.overwrite:
            raise FileExistsError(f"{out} is not empty; choose a new --out, or pass --overwrite (what is there is "
                                  "moved aside, never deleted)")
        moved = RunDir(out).move_aside(".old")
        print(f"--overwrite: what {out} held was moved to {moved}")
    record = sft(cfg, out)
    last = record["loss_log"][-1]["loss"] if record["loss_log"] else float("nan")
    print(f"wrote {out} ({record['examples']} examples, {cfg.sft.steps} steps, last logged loss {last:.3f}, "
          f"{record['train_seconds']} s); RL from it: softgate train CONFIG --set model.name_or_path={out}")
    return 0
