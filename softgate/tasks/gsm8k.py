"""GSM8K: grade-school word problems; the reference is the number after the final ``#### `` of the solution.

Data: ``question`` / ``answer`` columns (the Hugging Face ``openai/gsm8k`` layout, config ``main``), where
``answer`` is a worked solution ending in ``#### N``. Completions are graded on the ``<answer>`` content, falling
back to a ``#### N`` line (the dataset's own convention); answers are integers, so the numeric fast path decides
and the math-verify pool is never used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from softgate.tasks.base import Example, Examples, RowError, Task, get_field, load_records, merge_columns, row_id

NAME = "gsm8k"
HF_NAME = "openai/gsm8k"  # config "main"; splits train / test
COLUMNS = {"question": "question", "answer": "answer", "id": "id"}

# "#### 1,234" / "#### -5" / "#### 3.5" at the end of the solution.
_FINAL = re.compile(r"####\s*(.+?)\s*$")


def parse_final_answer(solution: str) -> str | None:
    """The reference after the last ``####`` with thousands separators removed; None when there is none."""
    idx = solution.rfind("####")
    if idx < 0:
        return None
    match = _FINAL.match(solution[idx:].strip())
    if not match:
        return None
    value = match.group(1).replace(",", "").strip()
    return value or None


def load_gsm8k(
    source: str | os.PathLike[str],
    *,
    split: str | None = None,
    columns: Mapping[str, str] | None = None,
    skip_invalid: bool = False,
    dedupe: bool = False,
    limit: int | None = None,
    hf_config: str | None = "main",
) -> Examples:
    """GSM8K examples from a local file or ``hf:openai/gsm8k``.

    ``columns`` maps the roles ``question``, ``answer`` (the solution ending in ``#### N``) and ``id`` to column
    names. A solution without ``#### N`` is a malformed ``answer`` field.
    """
    cols = merge_columns(COLUMNS, columns)

    def parse(row: Mapping[str, Any], index: int) -> Example:
        question = get_field(row, cols["question"], "question")
        solution = get_field(row, cols["answer"], "answer")
        final = parse_final_answer(solution)
        if final is None:
            raise RowError(f"malformed field {cols['answer']!r} (answer): no final '#### N' line")
        return Example(question.strip(), final, row_id(row, cols["id"], NAME, index), NAME, {"solution": solution})

    return load_records(source, parse, split=split, hf_config=hf_config, skip_invalid=skip_invalid, dedupe=dedupe,
                        limit=limit)


TASK = Task(name=NAME, extract=("answer", "gsm8k"), symbolic=False, loader=load_gsm8k, default_hf=(HF_NAME,))
