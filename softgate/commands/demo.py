"""``softgate demo``: the README's first command — RL on the embedded tiny model and synthetic task, on CPU."""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="RL on the embedded tiny model + synthetic task (CPU, minutes), then a summary and plots",
        description="Runs `softgate train` with the embedded defaults (configs/embedded.yaml is the same config "
                    "written out), prints start vs end held-out accuracy, format rate, EUR and entropy, and writes "
                    "curves as PNG.",
    )
    p.add_argument("--out", default="runs/demo",
                   help="run directory (default runs/demo; if it exists, runs/demo-1, -2, ... is used instead)")
    p.add_argument("--gate", default=None, help="gate family (default: the config's, sigmoid at tau 10/12)")
    p.add_argument("--steps", type=int, default=None, help="RL steps (default: the config's)")
    p.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    from softgate.commands.train import print_summary
    from softgate.config import load_config
    from softgate.train import train

    out = Path(args.out)
    suffix = 0
    while (out / "metrics.jsonl").exists():  # never overwrite an earlier run
        suffix += 1
        out = Path(f"{args.out}-{suffix}")
    overrides = [f"output_dir={out}"]
    if args.gate:
        overrides.append(f"gate.name={args.gate}")
    if args.steps:
        overrides.append(f"steps={args.steps}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = load_config(None, overrides)
    result = train(cfg)
    print_summary(result.summary)
    return 0
