"""Grading answers: pure normalization and the exact/numeric fast path (``answers``), math-verify in a killable
worker-process pool with per-item timeouts and memory caps (``pool``, ``worker``), and the :class:`Grader` that
puts them together and returns per-call counters (``grader``).

Nothing here evaluates model output as code, and nothing here is process-wide state: a grader is made from
arguments (or ``Grader.from_config(cfg.grader)``) and passed to whoever grades. See ``docs/rewards.md``.
"""

from softgate.grading.answers import (
    MAX_ANSWER_CHARS,
    MAX_NUMBER_CHARS,
    as_number,
    ascii_digits,
    fast_grade,
    matching_brace,
    normalize_answer,
    screen,
)
from softgate.grading.grader import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, Grader, Grades, GraderStats

__all__ = [
    "DEFAULT_MEMORY_MB",
    "DEFAULT_TIMEOUT_S",
    "MAX_ANSWER_CHARS",
    "MAX_NUMBER_CHARS",
    "Grader",
    "GraderStats",
    "Grades",
    "as_number",
    "ascii_digits",
    "fast_grade",
    "matching_brace",
    "normalize_answer",
    "screen",
]
