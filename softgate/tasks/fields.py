"""Any question/answer file, no task module needed: the ``fields`` task.

Rows need a question and a final answer; the columns are named by ``columns`` (``softgate eval --question-field
Q --answer-field A``; defaults ``question`` / ``answer``). An ``id`` column is used when present (else the row
index) and a ``source`` column, when present, names each row's source so that an evaluation reports one figure
per source. Completions are graded on the ``<answer>`` content (the default extraction mode) by the grader:
numbers and exact matches on the fast path, anything else (LaTeX) by math-verify (``symbolic=True``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from softgate.tasks.base import Examples, Task, load_records, merge_columns, question_answer_parser

NAME = "fields"
COLUMNS = {"question": "question", "answer": "answer", "id": "id", "source": "source"}


def load_fields(
    source: str | os.PathLike[str],
    *,
    split: str | None = None,
    columns: Mapping[str, str] | None = None,
    skip_invalid: bool = False,
    dedupe: bool = False,
    limit: int | None = None,
    hf_config: str | None = None,
) -> Examples:
    """Examples of a question/answer file; ``columns`` maps the roles ``question``, ``answer``, ``id`` and
    ``source`` to column names."""
    parse = question_answer_parser(NAME, merge_columns(COLUMNS, columns))
    return load_records(source, parse, split=split, hf_config=hf_config, skip_invalid=skip_invalid, dedupe=dedupe,
                        limit=limit)


TASK = Task(name=NAME, loader=load_fields)  # extract ("answer",) and symbolic grading: the Task defaults
