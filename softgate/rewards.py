"""Format and answer rewards (the paper's reward = answer reward + format reward).

Public API, the same for the trainer, ``softgate eval``, the TRL plug-in and verl:

- :func:`format_reward` ``(completion) -> float`` in {1, 0.5, 0.25, 0} and :func:`format_rewards` for a list;
- :func:`answer_reward` ``(completion, reference) -> float`` in {1, 0} and :func:`answer_rewards` for lists;
- :func:`grade_answers` ``(completions, references) -> Grades``: the verdicts with the counters of that call
  (timeouts, parse errors, which path decided), for callers that log grader events;
- :func:`extract_answer` ``(completion, mode) -> str | None``.

Every answer function takes ``grader=``, a :class:`~softgate.grading.Grader` the caller made and owns (the trainer
makes one from the ``grader.*`` config keys, ``softgate eval`` from its options). Without one, a grader with the
default settings is made on first use and kept by this module; it only starts worker processes when an answer
needs math-verify.

Completions are untrusted text: extraction and the format check are linear scans with ``str.find``/``count`` (no
backtracking regular expressions over the whole completion), answers longer than
``softgate.grading.MAX_ANSWER_CHARS`` score 0 unparsed, and nothing is ever evaluated as code. See
``softgate.grading`` for normalization and the math-verify process pool, and ``docs/rewards.md``.

Format levels (the paper gives the levels 1 / 0.5 / 0.25 / 0 but not the partial cases; softgate defines them).
A *closed pair* of a tag is an opening tag followed later by its closing tag (``<think>`` ... ``</think>``); tags
are matched literally and case-sensitively.

- **1.0** -- exactly one ``<think>``, one ``</think>``, one ``<answer>``, one ``</answer>``, in that order; nothing
  but whitespace before ``<think>``, between ``</think>`` and ``<answer>``, and after ``</answer>``; the answer
  content is not blank. (The reasoning may be empty.)
- **0.5** -- a closed think pair and a closed answer pair both exist, but one of the 1.0 conditions fails: text
  outside the blocks, a blank answer, a repeated tag, answer before think, one block nested in the other.
- **0.25** -- a closed pair of exactly one of the two tags (for example only ``<answer>5</answer>``, or reasoning
  in ``<think>...</think>`` and a bare final answer).
- **0.0** -- no closed pair at all (no tags, or only opening tags, e.g. a completion cut off inside ``<think>``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from softgate.choices import EXTRACT_MODES
from softgate.grading import MAX_ANSWER_CHARS, Grader, Grades, matching_brace

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
FORMAT_LEVELS = (1.0, 0.5, 0.25, 0.0)

__all__ = [
    "ANSWER_CLOSE",
    "ANSWER_OPEN",
    "EXTRACT_MODES",
    "FORMAT_LEVELS",
    "MAX_ANSWER_CHARS",
    "THINK_CLOSE",
    "THINK_OPEN",
    "Grader",
    "Grades",
    "answer_reward",
    "answer_rewards",
    "extract_answer",
    "format_reward",
    "format_rewards",
    "grade_answers",
]


# --------------------------------------------------------------------------------------------------------------
# Format reward


def _has_closed_pair(text: str, open_tag: str, close_tag: str) -> bool:
    start = text.find(open_tag)
    return start >= 0 and text.find(close_tag, start + len(open_tag)) >= 0


def format_reward(completion: str) -> float:
    """The paper's format reward for ``<think>...</think><answer>...</answer>``: 1.0, 0.5, 0.25 or 0.0.

    The levels are defined in this module's docstring (and ``docs/rewards.md``). Linear time in the length of
    ``completion``.
    """
    think = _has_closed_pair(completion, THINK_OPEN, THINK_CLOSE)
    answer = _has_closed_pair(completion, ANSWER_OPEN, ANSWER_CLOSE)
    if not (think or answer):
        return 0.0
    if think != answer:
        return 0.25
    if not all(completion.count(tag) == 1 for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)):
        return 0.5
    t0, t1 = completion.find(THINK_OPEN), completion.find(THINK_CLOSE)
    a0, a1 = completion.find(ANSWER_OPEN), completion.find(ANSWER_CLOSE)
    in_order = t0 < t1 < a0 < a1  # also rules out nesting
    if not in_order:
        return 0.5
    outside_blank = (
        not completion[:t0].strip()
        and not completion[t1 + len(THINK_CLOSE) : a0].strip()
        and not completion[a1 + len(ANSWER_CLOSE) :].strip()
    )
    answer_filled = bool(completion[a0 + len(ANSWER_OPEN) : a1].strip())
    return 1.0 if outside_blank and answer_filled else 0.5


def format_rewards(completions: Sequence[str]) -> list[float]:
    """:func:`format_reward` for each completion."""
    return [format_reward(c) for c in completions]


# --------------------------------------------------------------------------------------------------------------
# Answer extraction


def _extract_tag(text: str) -> str | None:
    end = text.rfind(ANSWER_CLOSE)
    if end < 0:
        return None
    start = text.rfind(ANSWER_OPEN, 0, end)
    if start < 0:
        return None
    return text[start + len(ANSWER_OPEN) : end].strip() or None


def _extract_gsm8k(text: str) -> str | None:
    idx = text.rfind("####")
    if idx < 0:
        return None
    line = text[idx + 4 :].split("\n", 1)[0].strip()
    return line or None


# A \boxed{ whose brace does not close within this many characters gives no answer (the content would be refused
# as too long anyway); it keeps the brace scan of a hostile megabyte completion short.
_BOXED_SCAN_CHARS = 100_000


def _extract_boxed(text: str) -> str | None:
    for cmd in ("\\boxed", "\\fbox"):
        idx = text.rfind(cmd + "{")
        if idx >= 0:
            open_idx = idx + len(cmd)
            close = matching_brace(text, open_idx, limit=_BOXED_SCAN_CHARS)
            if close > open_idx:
                return text[open_idx + 1 : close].strip() or None
    return None


_EXTRACTORS = {"answer": _extract_tag, "gsm8k": _extract_gsm8k, "boxed": _extract_boxed}


def _modes(extract: str | Sequence[str]) -> tuple[str, ...]:
    modes = (extract,) if isinstance(extract, str) else tuple(extract)
    bad = [m for m in modes if m not in _EXTRACTORS]
    if bad or not modes:
        raise ValueError(f"unknown extract mode(s) {bad or modes!r}; valid: {list(EXTRACT_MODES)}")
    return modes


def extract_answer(completion: str, extract: str | Sequence[str] = "answer") -> str | None:
    """The final answer in ``completion``, or None when there is none.

    Modes, tried in the given order (the first that finds something wins):
    ``"answer"`` -- content of the last ``<answer>...</answer>`` pair; ``"gsm8k"`` -- the rest of the line after
    the last ``####``; ``"boxed"`` -- the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces matched.
    Surrounding whitespace is stripped; blank content counts as no answer.
    """
    for mode in _modes(extract):
        found = _EXTRACTORS[mode](completion)
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------------------------------------------
# Answer reward


_fallback: Grader | None = None  # made on first use by a call without grader=; default settings only
_fallback_lock = threading.Lock()


def _default_grader() -> Grader:
    global _fallback
    with _fallback_lock:
        if _fallback is None:
            _fallback = Grader()
        return _fallback


def grade_answers(
    completions: Sequence[str],
    references: Sequence[str],
    *,
    extract: str | Sequence[str] = "answer",
    symbolic: bool = True,
    grader: Grader | None = None,
) -> Grades:
    """Extract each completion's answer and grade it against its reference: one verdict per completion, and the
    counters of this call (``Grades.stats``: timeouts, errors, refused and missing answers, which path decided).

    Args:
        completions: model outputs (untrusted).
        references: gold answers, same length.
        extract: extraction mode or modes (see :func:`extract_answer`).
        symbolic: let math-verify decide what the exact/numeric fast path cannot (in the grader's process pool,
            with a timeout). False: only the fast path; integer-answer tasks (synthetic, GSM8K, AIME) use this.
        grader: the :class:`~softgate.grading.Grader` to use; default: one with default settings, made on first use.
    """
    if len(completions) != len(references):
        raise ValueError(f"{len(completions)} completions for {len(references)} references")
    modes = _modes(extract)
    predictions = [extract_answer(c, modes) for c in completions]
    return (grader or _default_grader()).grade_many(predictions, list(references), symbolic=symbolic)


def answer_rewards(
    completions: Sequence[str],
    references: Sequence[str],
    *,
    extract: str | Sequence[str] = "answer",
    symbolic: bool = True,
    grader: Grader | None = None,
) -> list[float]:
    """1.0 where the extracted answer equals the reference, else 0.0; one entry per completion (the arguments are
    those of :func:`grade_answers`)."""
    grades = grade_answers(completions, references, extract=extract, symbolic=symbolic, grader=grader)
    return [1.0 if ok else 0.0 for ok in grades.verdicts]


def answer_reward(
    completion: str,
    reference: str,
    *,
    extract: str | Sequence[str] = "answer",
    symbolic: bool = True,
    grader: Grader | None = None,
) -> float:
    """1.0 if the answer in ``completion`` equals ``reference``, else 0.0 (see :func:`grade_answers`)."""
    return answer_rewards([completion], [reference], extract=extract, symbolic=symbolic, grader=grader)[0]
