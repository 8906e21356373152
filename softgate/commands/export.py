"""``softgate export``: a run's checkpoint as a Hugging Face folder without the training state; ``--merge`` folds a
LoRA adapter into its base model, giving a plain model that ``from_pretrained`` loads."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="write a run's checkpoint as a Hugging Face model folder (--merge: LoRA folded in)",
        description="Copy the Hugging Face files of a checkpoint (weights or LoRA adapter, config, tokenizer) to "
                    "--out, leaving out the optimizer, schedule and RNG state. A LoRA checkpoint is exported as its "
                    "adapter folder (peft's AutoPeftModelForCausalLM loads it), or with --merge as a plain model: "
                    "the base model with the adapter folded in, which AutoModelForCausalLM.from_pretrained, "
                    "`softgate eval --model` and `softgate train` (model.name_or_path) load.",
    )
    p.add_argument("run", metavar="RUN", help="run directory (its newest checkpoint) or a checkpoint folder")
    p.add_argument("--out", required=True, metavar="DIR", help="new (or empty) output directory")
    p.add_argument("--step", type=int, default=None, help="export the checkpoint of this RL step (default: newest)")
    p.add_argument("--merge", action="store_true",
                   help="fold a LoRA adapter into its base model (a full fine-tuning checkpoint is plain already)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from softgate.checkpoint import export_checkpoint
    from softgate.lora import is_adapter_dir

    ckpt = export_checkpoint(Path(args.run), Path(args.out), merge=args.merge, step=args.step)
    if is_adapter_dir(ckpt):
        what = "the merged model" if args.merge else "the LoRA adapter (--merge writes a plain model)"
    else:
        what = "the model"
    print(f"wrote {what} of {ckpt} to {args.out}")
    return 0
