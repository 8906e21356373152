"""``softgate eval``: pass@1 (and pass@k, maj@k) of a model on a task or any question/answer file, with 95%
intervals (docs/eval.md). Bad input is one line and exit code 2 (``softgate.cli``): every check here raises
ValueError / FileNotFoundError / FileExistsError with a message naming the option, file or field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from softgate.tasks import Examples, Task


def add_parser(subparsers) -> None:
    from softgate.grading import DEFAULT_TIMEOUT_S
    from softgate.tasks import names as task_names

    p = subparsers.add_parser(
        "eval", help="evaluate a model on a task (pass@1 / pass@k / maj@k with 95%% CIs)",
        description="Sample completions for each problem, grade them with the task's answer and format rewards, "
                    "write per-item JSONL and a summary JSON. See docs/eval.md.",
    )
    p.add_argument("--model", required=True,
                   help="embedded:tiny, a local model dir, a checkpoint dir, a hub name, smollm2:135m-instruct, or a .gguf")
    p.add_argument("--task", default=None, choices=task_names(),
                   help="task whose prompt and grading to use (default with --question-field/--answer-field: fields)")
    p.add_argument("--data", default=None,
                   help="held-out file (.jsonl/.json/.parquet) or hf:owner/name; the synthetic task needs none")
    p.add_argument("--question-field", default=None, help="column holding the question (any JSONL/Parquet file)")
    p.add_argument("--answer-field", default=None, help="column holding the final answer (with --question-field)")
    p.add_argument("--dedupe", action="store_true",
                   help="keep the first row of each repeated id (default: a repeated id is an error)")
    p.add_argument("--samples", type=int, default=1, help="samples per problem, k (default 1)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default 0.7; 0 = greedy)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="completion limit (default 512)")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per generate call (default 32)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default 0 = automatic: usable cores minus the machine's load)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (it is hidden anyway when stderr is not a terminal)")
    p.add_argument("--out", default="eval_out", help="output directory (items.jsonl, summary.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --out")
    p.add_argument("--grader-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"seconds math-verify may spend on one answer before it scores 0 (default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--grader-workers", type=int, default=1,
                   help="math-verify worker processes (default 1; only LaTeX-answer tasks use them)")
    p.set_defaults(func=run)


def run(args) -> int:
    from softgate import __version__
    from softgate.evaluation import evaluate_policy
    from softgate.grading import Grader
    from softgate.modeling import load_model_and_tokenizer
    from softgate.threads import apply_threads

    check_options(args)
    out = output_dir(args.out, args.overwrite)
    task, examples = load_examples(args)
    threads = apply_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer(args.model)  # hub failures: one line (softgate.modeling)
    with Grader(timeout=args.grader_timeout, workers=args.grader_workers) as grader:
        result = evaluate_policy(model, tokenizer, task, examples, temperature=args.temperature,
                                 max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                 samples=args.samples, seed=args.seed, progress=args.progress, grader=grader)
    summary = dict(result.summary)
    summary.update(model=args.model, task=task.name, data=args.data, question_field=args.question_field,
                   answer_field=args.answer_field, limit=args.limit, batch_size=args.batch_size, threads=threads,
                   duplicates_dropped=examples.duplicates, softgate_version=__version__)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "items.jsonl").open("w", encoding="utf-8") as f:
        for r in result.records:
            f.write(json.dumps(r) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary, result.grader_stats)
    print(f"wrote {out / 'items.jsonl'} and {out / 'summary.json'}")
    return 0


# Options that must be at least a minimum (the message names the option as typed).
_MINIMUMS = (("--samples", "samples", 1), ("--max-new-tokens", "max_new_tokens", 1), ("--limit", "limit", 1),
             ("--batch-size", "batch_size", 1), ("--grader-workers", "grader_workers", 1), ("--threads", "threads", 0))


def check_options(args) -> None:
    """Reject bad numbers before anything is loaded (ValueError, one line each)."""
    for option, attr, minimum in _MINIMUMS:
        value = getattr(args, attr)
        if value is not None and value < minimum:
            raise ValueError(f"{option} must be >= {minimum}, got {value}")
    if not args.temperature >= 0:  # also rejects NaN
        raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if not args.grader_timeout > 0:
        raise ValueError(f"--grader-timeout must be > 0, got {args.grader_timeout}")
    if (args.question_field is None) != (args.answer_field is None):
        raise ValueError("--question-field and --answer-field go together (give both)")


def output_dir(path: str, overwrite: bool) -> Path:
    """``--out`` as a directory that holds no earlier evaluation (unless ``overwrite``); created later."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; give a directory")
    earlier = [name for name in ("summary.json", "items.jsonl") if (out / name).exists()]
    if earlier and not overwrite:
        raise FileExistsError(f"{out} already holds an evaluation ({earlier[0]}); pass --overwrite to replace it "
                              "or choose another --out")
    return out


def load_examples(args) -> tuple[Task, Examples]:
    """The task and its examples from --task / --data / --question-field / --answer-field / --limit / --dedupe."""
    from softgate.tasks import get_task

    fields = args.question_field is not None
    name = args.task or ("fields" if fields else None)
    if name is None:
        raise ValueError("give --task NAME, or --question-field and --answer-field for any question/answer file")
    task = get_task(name)
    if name == "synthetic":
        from softgate.data import SYNTHETIC_TEST_SIZE

        if fields:
            raise ValueError("--question-field/--answer-field name columns of a data file; the synthetic task "
                             "generates its problems")
        return task, task.load(args.data or "test", n=args.limit or SYNTHETIC_TEST_SIZE)
    if not args.data:
        raise ValueError(f"--data is required for task {name!r} (a .jsonl/.json/.parquet file or hf:owner/name)")
    columns = {"question": args.question_field, "answer": args.answer_field} if fields else None
    return task, task.load(args.data, limit=args.limit, dedupe=args.dedupe, columns=columns)


def print_summary(summary: dict[str, Any], grader_stats) -> None:
    acc, lo, hi = summary["accuracy"], summary["accuracy_ci_low"], summary["accuracy_ci_high"]
    print(f"{summary['task']}: pass@1 {100 * acc:.1f}% (95% CI {100 * lo:.1f}..{100 * hi:.1f}), "
          f"format rate {100 * summary['format_rate']:.1f}%, mean length {summary['length_mean']:.1f} tokens, "
          f"{summary['n']} problems x {summary['samples_per_problem']} samples")
    for key in summary:
        if key.startswith(("pass@", "maj@")):
            print(f"  {key}: {summary[key]:.3f}")
    for source, s in summary.get("by_source", {}).items():
        print(f"  {source}: pass@1 {100 * s['accuracy']:.1f}% (95% CI {100 * s['accuracy_ci_low']:.1f}.."
              f"{100 * s['accuracy_ci_high']:.1f}), {s['n']} problems")
    if summary["duplicates_dropped"]:
        print(f"  --dedupe: dropped {summary['duplicates_dropped']} row(s) whose id repeats an earlier row's")
    events = {k: getattr(grader_stats, k) for k in ("timeouts", "errors", "too_long")}
    if any(events.values()):  # each of these scored 0: say so rather than let it pass for a wrong answer
        print("  grader: " + ", ".join(f"{v} {k}" for k, v in events.items()) + " (scored 0)")
    print(f"  {summary['wall_time_s']:.1f} s, {summary['generated_tokens']} tokens generated "
          f"({summary['tokens_per_s']:.1f} tokens/s), {summary['threads']} thread(s)")
