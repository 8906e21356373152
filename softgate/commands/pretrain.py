"""``softgate pretrain``: rebuild the embedded tiny model (tokenizer, init, noisy supervised warm start)."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from softgate.pretrain import PretrainConfig  # light: torch and transformers are imported only when run

    d = PretrainConfig()
    p = subparsers.add_parser(
        "pretrain",
        help="rebuild the embedded tiny model from scratch (supervised warm start on the synthetic task)",
        description="Build the word-level tokenizer, initialise a tiny Llama-architecture model from --seed, train it "
        "on synthetic arithmetic problems whose targets carry format defects and wrong numbers at the given rates "
        "(so the start policy is partly right: room for RL), measure it on the held-out split, and write a "
        "safetensors checkpoint + card to --out. The defaults reproduce softgate/assets/tiny.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True,
                   help=f"output directory (the shipped checkpoint lives in {d.out}, relative to the repository)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the initialisation, data and noise")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="problems per step")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--difficulty", type=int, nargs="+", default=list(d.difficulty),
                   help="task levels (1 2 3 4; 4 = long reasoning)")
    p.add_argument("--format-noise", type=float, default=d.format_noise, help="share of targets with a format defect")
    p.add_argument("--format-rate", type=float, default=d.format_rate,
                   help="share of targets in the <think>/<answer> format at all; the rest are plain equations and "
                        "the number (0.1 with --format-noise 0 --answer-noise 0.2 --out softgate/assets/tiny-cold "
                        "rebuilds embedded:tiny-cold)")
    p.add_argument("--answer-noise", type=float, default=d.answer_noise, help="share of targets with a wrong number")
    p.add_argument("--hidden-size", type=int, default=d.hidden_size, help="width of the model (embedding size)")
    p.add_argument("--num-layers", type=int, default=d.num_layers, help="transformer layers")
    p.add_argument("--num-heads", type=int, default=d.num_heads, help="attention heads per layer")
    p.add_argument("--intermediate-size", type=int, default=d.intermediate_size, help="width of the MLP blocks")
    p.add_argument("--eval-n", type=int, default=d.eval_n, help="held-out problems per level to measure (0: skip)")
    p.add_argument("--eval-k", type=int, default=d.eval_k, help="samples per held-out problem")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = automatic: the usable cores minus the machine's load; the shipped "
                        "model was built with 1, and another count may change the last bits of the weights)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from softgate.pretrain import PretrainConfig, pretrain
    from softgate.threads import default_threads

    names = {f.name for f in fields(PretrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["difficulty"] = tuple(values["difficulty"])
    values["threads"] = values["threads"] or default_threads()
    record = pretrain(PretrainConfig(**values), progress=not args.no_progress)
    print(f"wrote {args.out} ({record['parameters'] / 1e6:.2f}M parameters, {record['train_seconds']} s)")
    for key, m in record["start_metrics"].items():
        print(f"  {key}: " + json.dumps(m))
    return 0
