"""``softgate train``: one RL run from a YAML config plus ``--set key=value`` overrides, or ``--resume`` of a run
from its saved config."""

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


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options `train` and `demo` share: overrides and threads."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set gate.name=erf --set seed=1 (repeatable)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (same as --set model.threads=N; default 0 = automatic: the usable cores "
                        "minus the machine's load, see docs/cli.md)")


def run_overrides(args: argparse.Namespace) -> list[str]:
    return [*args.overrides, *([f"model.threads={args.threads}"] if args.threads is not None else [])]


def add_parser(subparsers) -> None:
    from softgate.choices import ENGINES
    from softgate.config.loading import RESUME_MAY_CHANGE

    p = subparsers.add_parser(
        "train", help="run RL (GRPO family with any gate) on a Hugging Face causal LM",
        description="Run smooth-gated RL. Without CONFIG the defaults train the embedded tiny model on the "
                    "synthetic task. Ctrl-C (or SIGTERM) stops at the next RL step with a checkpoint and prints "
                    "the command that resumes the run.",
        epilog=_key_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="YAML config file (e.g. configs/embedded.yaml)")
    add_run_options(p)
    p.add_argument("--out", "--output-dir", dest="out", metavar="DIR",
                   help="run directory (same as --set output_dir=DIR; --output-dir is the old spelling)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in --out from its newest checkpoint (from step 0 if it has none), "
                           "with its saved config.yaml; CONFIG and --set may only repeat it, or change "
                           f"{', '.join(RESUME_MAY_CHANGE)} and the keys of --allow-change")
    mode.add_argument("--overwrite", action="store_true",
                      help="start over in a directory that holds a run; the old run is moved to --out/.old-<time>/ "
                           "(never deleted)")
    p.add_argument("--allow-change", action="append", default=[], metavar="KEY[=VALUE]",
                   help="with --resume: let KEY differ from the saved config (KEY=VALUE also sets it); repeatable")
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="who runs the loop (same as --set engine=...; default: the config's engine, native): native "
                        "or trl (TRL's GRPOTrainer under accelerate, see docs/integrations.md)")
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="with --engine trl: run N processes under `accelerate launch` (CPU: gloo; GPUs: one each)")
    p.add_argument("--accelerate-config", metavar="FILE",
                   help="with --engine trl: an accelerate config (e.g. examples/deepspeed_zero2.yaml) for the launch")
    p.set_defaults(func=run)


def run(args) -> int:
    from softgate.config import load_config
    from softgate.config.loading import load_resume_config
    from softgate.engines import run as run_engine
    from softgate.rundir import RunDir

    overrides = [*run_overrides(args), *([f"engine={args.engine}"] if args.engine else [])]
    allow = []
    for item in args.allow_change:
        key, sep, _ = item.partition("=")
        allow.append(key.strip())
        if sep:
            overrides.append(item)
    # Config errors: one line from softgate.cli, exit code 2.
    if args.resume:
        if not args.out:
            raise ValueError("--resume needs --out DIR, the run directory to continue")
        RunDir(args.out).require_resumable()
        cfg, changed = load_resume_config(RunDir(args.out).config_yaml, args.config,
                                          [*overrides, f"output_dir={args.out}"], allow)
        for change in changed:
            if not change.startswith("output_dir:"):
                print(f"resume: {change}")
    else:
        if allow:
            raise ValueError("--allow-change applies to --resume only (a new run takes any config)")
        cfg = load_config(args.config, [*overrides, *([f"output_dir={args.out}"] if args.out else [])])
    result = run_engine(cfg, resume=args.resume, overwrite=args.overwrite, processes=args.processes,
                        accelerate_config=args.accelerate_config)
    print_summary(result.summary)
    return 0


def print_summary(summary: dict) -> None:
    if not summary or "eval_start" not in summary:
        return
    s, e = summary["eval_start"], summary["eval_end"]

    def pct(x):
        return "n/a" if x is None or x != x else f"{100 * x:5.1f}%"

    print()
    gate = summary["gate"]  # {"name", "params"}, as run.json stores it
    params = ", ".join(f"{k}={v:g}" for k, v in gate["params"].items())
    print(f"run: {summary['run_dir']}   gate: {gate['name']}({params})   seed: {summary['seed']}   "
          f"steps: {summary['steps']}")
    print(f"  held-out accuracy  start {pct(s['accuracy'])}  ->  end {pct(e['accuracy'])}"
          f"   (95% CI end: {pct(e['accuracy_ci_low'])} .. {pct(e['accuracy_ci_high'])})")
    print(f"  held-out format    start {pct(s['format_rate'])}  ->  end {pct(e['format_rate'])}")
    ts, te = summary["train_start"], summary["train_end"]
    print(f"  entropy            start {ts['policy/entropy']:.3f}  ->  end {te['policy/entropy']:.3f} nats/token")
    print(f"  EUR (off-policy updates) mean {summary['eur_mean_off_policy']:.3f};  all updates {summary['eur_mean']:.3f}")
    print(f"  seconds per RL step {summary['seconds_per_step']:.2f}")
    print(f"  plots: {summary['run_dir']}/plots/curves.png, {summary['run_dir']}/plots/eval.png")
