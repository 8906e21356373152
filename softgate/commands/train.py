"""``softgate train``: one RL run from a YAML config plus ``--set key=value`` overrides."""

from __future__ import annotations

import argparse
import dataclasses


def _key_help() -> str:
    """Every config key with its default, built from the dataclasses themselves (never out of date)."""
    from softgate.config import Config

    lines = []

    def walk(obj, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                lines.append(f"  {prefix}{f.name} = {value!r}")

    walk(Config(), "")
    return "config keys (defaults = the embedded demo; see docs/config.md):\n" + "\n".join(lines)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="run RL (GRPO family with any gate) on a Hugging Face causal LM",
        description="Run smooth-gated RL. Without CONFIG the defaults train the embedded tiny model on the "
                    "synthetic task.",
        epilog=_key_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="YAML config file (e.g. configs/embedded.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set gate.name=erf --set seed=1 (repeatable)")
    p.add_argument("--output-dir", help="run directory (same as --set output_dir=DIR)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its newest checkpoint")
    p.set_defaults(func=run)


def run(args) -> int:
    from softgate.config import load_config
    from softgate.train import train

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    cfg = load_config(args.config, overrides)  # errors: one line from softgate.cli, exit code 2
    result = train(cfg, resume=args.resume)
    print_summary(result.summary)
    return 0


def print_summary(summary: dict) -> None:
    if not summary or "eval_start" not in summary:
        return
    s, e = summary["eval_start"], summary["eval_end"]

    def pct(x):
        return "n/a" if x is None or x != x else f"{100 * x:5.1f}%"

    print()
    print(f"run: {summary['run_dir']}   gate: {summary['gate']}   seed: {summary['seed']}   steps: {summary['steps']}")
    print(f"  held-out accuracy  start {pct(s['accuracy'])}  ->  end {pct(e['accuracy'])}"
          f"   (95% CI end: {pct(e['accuracy_ci_low'])} .. {pct(e['accuracy_ci_high'])})")
    print(f"  held-out format    start {pct(s['format_rate'])}  ->  end {pct(e['format_rate'])}")
    ts, te = summary["train_start"], summary["train_end"]
    print(f"  entropy            start {ts['policy/entropy']:.3f}  ->  end {te['policy/entropy']:.3f} nats/token")
    print(f"  EUR (off-policy updates) mean {summary['eur_mean_off_policy']:.3f};  all updates {summary['eur_mean']:.3f}")
    print(f"  seconds per RL step {summary['seconds_per_step']:.2f}")
    print(f"  plots: {summary['run_dir']}/plots/curves.png, {summary['run_dir']}/plots/eval.png")
