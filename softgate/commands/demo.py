"""``softgate demo``: the README's first command — RL on the embedded tiny model and synthetic task, on CPU."""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    from softgate.commands.train import add_run_options

    p = subparsers.add_parser(
        "demo", help="RL on the embedded tiny model + synthetic task (CPU, minutes), then a summary and plots",
        description="Runs `softgate train` with the embedded defaults (configs/embedded.yaml is the same config "
                    "written out), prints start vs end held-out accuracy, format rate, EUR and entropy, and writes "
                    "curves as PNG. Ctrl-C stops at the next RL step with a checkpoint and prints how to resume.",
    )
    p.add_argument("--out", default="runs/demo",
                   help="run directory (default runs/demo; if it holds a run, runs/demo-1, -2, ... is used instead)")
    p.add_argument("--gate", default=None, help="gate family (default: the config's, sigmoid at tau 10/12)")
    p.add_argument("--steps", type=int, default=None, help="RL steps (default: the config's)")
    p.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    add_run_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from softgate.commands.train import print_summary, run_overrides
    from softgate.config import load_config
    from softgate.rundir import RunDir
    from softgate.engines import run as run_engine

    out = Path(args.out)
    suffix = 0
    while RunDir(out).holds_run():  # never overwrite an earlier run
        suffix += 1
        out = Path(f"{args.out}-{suffix}")
    overrides = []
    if args.gate:
        overrides.append(f"gate.name={args.gate}")
    if args.steps:
        overrides.append(f"steps={args.steps}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = load_config(None, [*overrides, *run_overrides(args), f"output_dir={out}"])
    result = run_engine(cfg)  # the config's engine (native unless --set engine=trl)
    print_summary(result.summary)
    return 0
