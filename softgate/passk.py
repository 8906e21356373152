"""Evaluation metrics from per-sample correctness: pass@1 with a 95% interval, unbiased pass@k, maj@k, format rate.

Pure functions, no model code: ``softgate.evaluation`` samples and grades, this module turns the grades into figures.

Conventions. An evaluation has ``m`` items (problems) with ``n_i`` samples each. ``correct[i][j]`` says whether
sample ``j`` of item ``i`` is right.

- pass@1 is the mean over items of the per-item fraction correct (with one sample per item: plain accuracy).
  Its 95% interval is the Wilson score interval of that mean over an effective number of problems
  (``softgate.intervals.effective_problems``): exactly the binomial Wilson interval with one sample per item; with
  several, between ``m`` problems and all samples depending on how much the samples of one problem agree (they
  are not independent, so pooling them into one binomial would understate the width). It never collapses to a
  point: all-wrong on 20 problems gives [0, 16.1%] whatever the number of samples. See docs/eval.md.
- pass@k uses the unbiased estimator of Chen et al. 2021 (Codex paper, Eq. 1):
  ``pass@k = E_items[1 - C(n - c, k) / C(n, k)]`` with ``c`` correct of ``n`` samples, computed as a product so
  that large ``n`` does not overflow.
- maj@k: majority vote over the (normalized) extracted answers of the first ``k`` samples; the item counts as
  solved when the winning answer is correct. Samples without an answer do not vote; ties go to the answer that
  appeared first.
- format rate: fraction of samples whose format reward is 1.0 (the complete ``<think>``/``<answer>`` format).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from softgate.grading import as_number, normalize_answer
from softgate.intervals import DEFAULT_CONFIDENCE, MeanCI, effective_problems, wilson_interval

__all__ = [
    "EvalSummary",
    "answer_key",
    "format_rate",
    "maj_at_k",
    "pass_at_1",
    "pass_at_k",
    "pass_at_k_dataset",
    "eval_summary",
    "wilson_interval",
]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of the probability that at least one of ``k`` samples is correct, from ``c`` of ``n``.

    ``1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k / i)`` (Chen et al. 2021). Requires
    ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not (0 <= c <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got c={c}, n={n}")
    if not (1 <= k <= n):
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_dataset(ns: Sequence[int], cs: Sequence[int], k: int) -> float:
    """Mean of :func:`pass_at_k` over items with ``ns[i]`` samples of which ``cs[i]`` are correct."""
    if len(ns) != len(cs):
        raise ValueError(f"{len(ns)} sample counts for {len(cs)} correct counts")
    if not ns:
        return math.nan
    return sum(pass_at_k(n, c, k) for n, c in zip(ns, cs)) / len(ns)


def _check_ragged(correct: Sequence[Sequence[bool]]) -> None:
    for i, row in enumerate(correct):
        if len(row) == 0:
            raise ValueError(f"item {i} has no samples")


def _pass_at_1(correct: Sequence[Sequence[bool]], confidence: float) -> tuple[MeanCI, float]:
    """pass@1 with its interval, and the effective number of problems the interval counts."""
    _check_ragged(correct)
    m = len(correct)
    if m == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0), 0.0
    per_item = [sum(map(bool, row)) / len(row) for row in correct]
    mean = sum(per_item) / m
    n_eff = effective_problems(per_item, sum(len(row) for row in correct))
    low, high = wilson_interval(min(mean * n_eff, n_eff), n_eff, confidence)  # min: float rounding of mean * n
    return MeanCI(mean, low, high, m), n_eff


def pass_at_1(correct: Sequence[Sequence[bool]], *, confidence: float = DEFAULT_CONFIDENCE) -> MeanCI:
    """pass@1 (mean over items of the fraction of correct samples) with its Wilson interval over the effective
    number of problems (``MeanCI.n`` is the number of items; see the module docstring)."""
    return _pass_at_1(correct, confidence)[0]


def answer_key(answer: str | None) -> Hashable | None:
    """The voting key of an extracted answer: its exact value for plain numbers (``18``, ``18.0`` and ``$18``
    vote together), else the normalized string; None for no answer."""
    if answer is None:
        return None
    text = normalize_answer(answer)
    if not text:
        return None
    number = as_number(text) if len(text) <= 100 else None
    return ("num", number) if number is not None else ("str", text)


def maj_at_k(
    answers: Sequence[Sequence[str | None]], correct: Sequence[Sequence[bool]], k: int | None = None
) -> float:
    """Fraction of items whose majority answer among the first ``k`` samples (all when None) is correct.

    The winner is the most frequent :func:`answer_key`; ties go to the key seen first; samples without an answer do
    not vote; an item where no sample has an answer is unsolved. The winner's correctness is that of its first
    sample.
    """
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answer lists for {len(correct)} correctness lists")
    if not answers:
        return math.nan
    solved = 0
    for i, (ans_row, ok_row) in enumerate(zip(answers, correct)):
        if len(ans_row) != len(ok_row):
            raise ValueError(f"item {i}: {len(ans_row)} answers for {len(ok_row)} correctness flags")
        if k is not None and not 1 <= k <= len(ans_row):
            raise ValueError(f"maj@k needs 1 <= k <= samples, got k={k} with {len(ans_row)} samples (item {i})")
        counts: dict[Hashable, int] = {}
        first_ok: dict[Hashable, bool] = {}
        for a, ok in list(zip(ans_row, ok_row))[:k]:
            key = answer_key(a)
            if key is None:
                continue
            counts[key] = counts.get(key, 0) + 1
            first_ok.setdefault(key, bool(ok))
        if counts:
            winner = max(counts, key=counts.__getitem__)  # max keeps the first of equal counts (dict order)
            solved += first_ok[winner]
    return solved / len(answers)


def format_rate(format_rewards: Sequence[float]) -> float:
    """Fraction of samples with the complete format (format reward 1.0)."""
    if not format_rewards:
        return math.nan
    return sum(r == 1.0 for r in format_rewards) / len(format_rewards)


@dataclass(frozen=True)
class EvalSummary:
    """Figures of one evaluation (see the module docstring for definitions).

    ``as_dict("eval/")`` gives the keys of the run directory's ``eval.jsonl`` (``eval/accuracy``,
    ``eval/accuracy_ci_low``, ``eval/accuracy_ci_high``, ``eval/format_rate``, ``eval/n``, ``eval/length_mean``)
    plus ``pass@k`` / ``maj@k`` entries.
    """

    accuracy: float  # pass@1
    accuracy_ci_low: float
    accuracy_ci_high: float
    ci_effective_n: float  # the number of problems the interval counts (intervals.effective_problems)
    n: int  # items
    samples: int  # total samples
    format_rate: float  # fraction of samples with format reward 1.0 (NaN if not given)
    format_reward: float  # mean format reward (NaN if not given)
    length_mean: float  # mean completion length in tokens (NaN if not given)
    pass_at: dict[int, float] = field(default_factory=dict)  # k -> pass@k
    maj_at: dict[int, float] = field(default_factory=dict)  # k -> maj@k

    def as_dict(self, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if key == "pass_at":
                out.update({f"{prefix}pass@{k}": v for k, v in value.items()})
            elif key == "maj_at":
                out.update({f"{prefix}maj@{k}": v for k, v in value.items()})
            else:
                out[prefix + key] = value
        return out


def eval_summary(
    correct: Sequence[Sequence[bool]],
    *,
    format_rewards: Sequence[Sequence[float]] | None = None,
    lengths: Sequence[Sequence[float]] | None = None,
    answers: Sequence[Sequence[str | None]] | None = None,
    ks: Sequence[int] = (),
    confidence: float = DEFAULT_CONFIDENCE,
) -> EvalSummary:
    """All figures at once from per-item lists of per-sample values (same nesting as ``correct``).

    ``ks``: the k of pass@k (and of maj@k when ``answers`` is given); each must not exceed the smallest number of
    samples of an item.
    """
    _check_ragged(correct)
    p1, n_eff = _pass_at_1(correct, confidence)
    flat = [x for row in correct for x in row]
    min_n = min((len(row) for row in correct), default=0)
    for k in ks:
        if not 1 <= k <= min_n:
            raise ValueError(f"k={k} needs 1 <= k <= {min_n} (the fewest samples of an item)")
    pass_at = {k: pass_at_k_dataset([len(r) for r in correct], [sum(map(bool, r)) for r in correct], k) for k in ks}
    maj_at = {k: maj_at_k(answers, correct, k) for k in ks} if answers is not None else {}
    fmt = [x for row in format_rewards for x in row] if format_rewards is not None else []
    lens = [x for row in lengths for x in row] if lengths is not None else []
    return EvalSummary(
        accuracy=p1.mean,
        accuracy_ci_low=p1.low,
        accuracy_ci_high=p1.high,
        ci_effective_n=n_eff,
        n=len(correct),
        samples=len(flat),
        format_rate=format_rate(fmt),
        format_reward=sum(fmt) / len(fmt) if fmt else math.nan,
        length_mean=sum(lens) / len(lens) if lens else math.nan,
        pass_at=pass_at,
        maj_at=maj_at,
    )
