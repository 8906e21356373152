"""DeepMath-103K: ``question`` / ``final_answer`` (plus ``difficulty``, ``topic``); the paper's second train set."""

from __future__ import annotations

import os
from collections.abc import Mapping

from softgate.tasks.base import Examples, Task, load_records, merge_columns, question_answer_parser

NAME = "deepmath"
HF_NAME = "zwhe99/DeepMath-103K"  # split train
COLUMNS = {"question": "question", "answer": "final_answer", "id": "id"}
META_COLUMNS = ("difficulty", "topic")


def load_deepmath(
    source: str | os.PathLike[str],
    *,
    split: str | None = None,
    columns: Mapping[str, str] | None = None,
    skip_invalid: bool = False,
    limit: int | None = None,
    hf_config: str | None = None,
) -> Examples:
    """DeepMath examples; ``columns`` maps the roles ``question``, ``answer`` and ``id``."""
    parse = question_answer_parser(NAME, merge_columns(COLUMNS, columns), META_COLUMNS)
    return load_records(
        source, parse, split=split or "train", hf_config=hf_config, skip_invalid=skip_invalid, limit=limit
    )


TASK = Task(name=NAME, extract=("answer", "boxed"), symbolic=True, loader=load_deepmath, default_hf=(HF_NAME,))
