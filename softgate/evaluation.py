"""Evaluate a policy on held-out examples: sample, grade, and summarize (pass@1 with a 95% interval, format rate).

Used by the trainer every ``eval.every`` steps and by ``softgate eval``. The summary also says how the evaluation
was made (``seed``, ``temperature``, ``samples_per_problem``, ``max_new_tokens``) and how long it took (``wall_time_s``,
``generated_tokens``, ``tokens_per_s``), so that two evaluations can be told apart or recognized as the same
(the report pools distinct evaluations only). docs/eval.md describes every figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from softgate import passk
from softgate.grading import Grader, GraderStats
from softgate.rollout import HFSampler
from softgate.tasks import Task


@dataclass
class EvalResult:
    """Summary figures, one record per (example, sample), and how the grader decided (timeouts, errors...)."""

    summary: dict[str, Any]
    records: list[dict[str, Any]]
    grader_stats: GraderStats = field(default_factory=GraderStats)


def evaluate_policy(model, tokenizer, task: Task, examples, *, temperature: float = 0.7, max_new_tokens: int = 64,
                    batch_size: int = 64, samples: int = 1, seed: int = 0, progress: bool = False,
                    grader: Grader | None = None) -> EvalResult:
    """Sample ``samples`` completions per example and grade them with the task's rewards and ``grader`` (None: the
    default one of ``softgate.rewards``). ``temperature`` 0 is greedy decoding.

    The sampling seed is fixed so that evaluations at different training steps see the same random stream.
    ``progress``: a bar that ticks once per generated batch with the tokens/s so far (hidden when stderr is not a
    terminal).
    """
    sampler = HFSampler(model, tokenizer)
    records: list[dict[str, Any]] = []
    graded = GraderStats()
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    t0, tokens = time.perf_counter(), 0
    bar = tqdm(total=len(examples) * samples, desc="eval", unit="sample", leave=False,
               disable=None if progress else True)  # None: tqdm hides itself when not on a terminal
    try:
        for start in range(0, len(examples), batch_size):
            chunk = list(examples[start:start + batch_size])
            prompts = [task.render_prompt(e, tokenizer) for e in chunk]
            rollout = sampler.sample(prompts, samples, temperature=temperature, max_new_tokens=max_new_tokens,
                                     do_sample=temperature > 0)
            lengths = rollout.completion_lengths.tolist()
            tokens += int(sum(lengths))
            bar.update(len(rollout.completions))
            bar.set_postfix_str(f"{tokens / (time.perf_counter() - t0):.1f} tok/s")
            references = [e.reference for e in chunk for _ in range(samples)]
            grades = task.grade_answers(rollout.completions, references, grader)
            graded += grades.stats
            fmt = task.format_rewards(rollout.completions)
            for i, text in enumerate(rollout.completions):
                example = chunk[i // samples]
                records.append({
                    "item": start + i // samples, "id": example.id, "source": example.source, "sample": i % samples,
                    "prompt": prompts[i // samples], "completion": text, "extracted": task.extract_answer(text),
                    "reference": example.reference, "correct": grades.verdicts[i], "format_reward": fmt[i],
                    "length": int(lengths[i]), "truncated": bool(rollout.truncated[i]),
                })
    finally:
        bar.close()
        torch.set_rng_state(generator_state)
    wall = time.perf_counter() - t0
    summary = summary_of_records(records, samples)
    summary.update(seed=seed, temperature=temperature, samples_per_problem=samples, max_new_tokens=max_new_tokens,
                   wall_time_s=wall, generated_tokens=tokens, tokens_per_s=tokens / wall if wall > 0 else 0.0)
    return EvalResult(summary=summary, records=records, grader_stats=graded)


def summary_of_records(records: list[dict[str, Any]], samples: int) -> dict[str, Any]:
    """Figures of an evaluation from its per-sample records (see ``softgate.passk.eval_summary``): pass@1 and its
    95% interval, pass@k and maj@k for k = samples when samples > 1, format rate, mean length, truncation rate.

    Records are grouped into problems by their ``item`` (position in the evaluation), never by id, so that two
    problems can never merge. When the records come from more than one ``source``, ``by_source`` holds the same
    figures per source.
    """
    summary = _figures(records, samples)
    sources = list(dict.fromkeys(r.get("source") for r in records))
    if len(sources) > 1:
        summary["by_source"] = {str(s): _figures([r for r in records if r.get("source") == s], samples)
                                for s in sources}
    return summary


def _figures(records: list[dict[str, Any]], samples: int) -> dict[str, Any]:
    per_item: dict[Any, list[dict[str, Any]]] = {}
    for r in records:
        per_item.setdefault(r["item"], []).append(r)
    items = list(per_item.values())
    summary = passk.eval_summary(
        [[r["correct"] for r in rs] for rs in items],
        format_rewards=[[r["format_reward"] for r in rs] for rs in items],
        lengths=[[r["length"] for r in rs] for rs in items],
        answers=[[r["extracted"] for r in rs] for rs in items],
        ks=sorted({1, samples}) if samples > 1 else (),
    ).as_dict()
    n = len(records)
    summary["truncated_frac"] = sum(r["truncated"] for r in records) / n if n else float("nan")
    return summary
