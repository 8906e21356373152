"""MATH500: the 500-problem subset of MATH (``problem`` / ``answer``, plus ``subject``, ``level``, ``unique_id``).

References are LaTeX (``\\frac{14}{3}``, ``(3, \\frac{\\pi}{2})``, ``\\text{(C)}``): the fast path handles numbers
and exact matches, everything else goes to math-verify in the grader pool.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from softgate.tasks.base import Examples, Task, load_records, merge_columns, question_answer_parser

NAME = "math500"
HF_NAME = "HuggingFaceH4/MATH-500"  # split test
COLUMNS = {"question": "problem", "answer": "answer", "id": "unique_id"}
META_COLUMNS = ("subject", "level")


def load_math500(
    source: str | os.PathLike[str],
    *,
    split: str | None = None,
    columns: Mapping[str, str] | None = None,
    skip_invalid: bool = False,
    limit: int | None = None,
    hf_config: str | None = None,
) -> Examples:
    """MATH500 examples; ``columns`` maps the roles ``question``, ``answer`` and ``id``."""
    parse = question_answer_parser(NAME, merge_columns(COLUMNS, columns), META_COLUMNS)
    return load_records(source, parse, split=split, hf_config=hf_config, skip_invalid=skip_invalid, limit=limit)


TASK = Task(name=NAME, extract=("answer", "boxed"), symbolic=True, loader=load_math500, default_hf=(HF_NAME,))
