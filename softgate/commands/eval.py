"""``softgate eval``: pass@1 (and pass@k, maj@k) of a model on a task, with 95% confidence intervals."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    from softgate.grading import DEFAULT_TIMEOUT_S
    from softgate.tasks import names as task_names

    p = subparsers.add_parser(
        "eval", help="evaluate a model on a task (pass@1 / pass@k / maj@k with 95%% CIs)",
        description="Sample completions for each problem, grade them with the task's answer and format rewards, "
                    "write per-item JSONL and a summary JSON.",
    )
    p.add_argument("--model", required=True,
                   help="embedded:tiny, a local model dir, a checkpoint dir, a hub name, smollm2:135m-instruct, or a .gguf")
    p.add_argument("--task", required=True, choices=task_names(), help="task whose prompt and grading to use")
    p.add_argument("--data", default=None,
                   help="held-out file (.jsonl/.json/.parquet) or hf:owner/name; the synthetic task needs none")
    p.add_argument("--samples", type=int, default=1, help="samples per problem, k (default 1)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default 0.7; 0 = greedy)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="completion limit (default 512)")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per generate call (default 32)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--out", default="eval_out", help="output directory (items.jsonl, summary.json)")
    p.add_argument("--grader-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"seconds math-verify may spend on one answer before it scores 0 (default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--grader-workers", type=int, default=1,
                   help="math-verify worker processes (default 1; only LaTeX-answer tasks use them)")
    p.set_defaults(func=run)


def run(args) -> int:
    from softgate.evaluation import evaluate_policy
    from softgate.grading import Grader
    from softgate.modeling import load_model_and_tokenizer
    from softgate.tasks import get_task

    for option, value, minimum in (("--samples", args.samples, 1), ("--grader-workers", args.grader_workers, 1)):
        if value < minimum:
            print(f"softgate eval: {option} must be >= {minimum}", file=sys.stderr)
            return 2
    if not args.grader_timeout > 0:
        print("softgate eval: --grader-timeout must be > 0", file=sys.stderr)
        return 2
    task = get_task(args.task)
    if args.task == "synthetic":
        from softgate.data import SYNTHETIC_TEST_SIZE

        examples = task.load(args.data or "test", n=args.limit or SYNTHETIC_TEST_SIZE)
    else:
        if not args.data:
            print(f"softgate eval: --data is required for task {args.task!r}", file=sys.stderr)
            return 2
        examples = task.load(args.data, limit=args.limit)
    examples = examples[: args.limit] if args.limit else examples
    model, tokenizer = load_model_and_tokenizer(args.model)
    with Grader(timeout=args.grader_timeout, workers=args.grader_workers) as grader:
        result = evaluate_policy(model, tokenizer, task, examples, temperature=args.temperature,
                                 max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                 samples=args.samples, seed=args.seed, progress=True, grader=grader)
    summary = dict(result.summary)
    summary.update(model=args.model, task=args.task, data=args.data, temperature=args.temperature)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "items.jsonl").open("w", encoding="utf-8") as f:
        for r in result.records:
            f.write(json.dumps(r) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    acc, lo, hi = summary["accuracy"], summary["accuracy_ci_low"], summary["accuracy_ci_high"]
    print(f"{args.task}: pass@1 {100 * acc:.1f}% (95% CI {100 * lo:.1f}..{100 * hi:.1f}), "
          f"format rate {100 * summary['format_rate']:.1f}%, mean length {summary['length_mean']:.1f} tokens, "
          f"{summary['n']} problems x {args.samples} samples")
    for key in summary:
        if key.startswith(("pass@", "maj@")):
            print(f"  {key}: {summary[key]:.3f}")
    events = {k: getattr(result.grader_stats, k) for k in ("timeouts", "errors", "too_long")}
    if any(events.values()):  # each of these scored 0: say so rather than let it pass for a wrong answer
        print("  grader: " + ", ".join(f"{v} {k}" for k, v in events.items()) + " (scored 0)")
    print(f"wrote {out / 'items.jsonl'} and {out / 'summary.json'}")
    return 0
