"""MATH500 and DeepMath-103K: a question and its final answer in LaTeX, one task definition serving both.

- MATH500, the 500-problem subset of MATH: ``problem`` / ``answer`` (plus ``subject``, ``level``, ``unique_id``);
  Hugging Face ``HuggingFaceH4/MATH-500``, split test.
- DeepMath-103K, the paper's second train set: ``question`` / ``final_answer`` (plus ``difficulty``, ``topic``);
  Hugging Face ``zwhe99/DeepMath-103K``, split train.

References are LaTeX (``\\frac{14}{3}``, ``(3, \\frac{\\pi}{2})``, ``\\text{(C)}``): the fast path handles numbers and
exact matches, everything else goes to math-verify in the grader pool (``symbolic=True``). Completions are graded
on the ``<answer>`` content, falling back to the last ``\\boxed{...}``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from softgate.tasks.base import Examples, Task, load_records, merge_columns, question_answer_parser


def latex_answer_task(name: str, hf_name: str, default_columns: Mapping[str, str], meta_columns: Sequence[str],
                      default_split: str) -> Task:
    """A task over question / LaTeX-answer rows: ``default_columns`` maps the roles ``question``, ``answer`` and
    ``id`` to the dataset's column names (the loader's ``columns=`` overrides them), ``meta_columns`` are kept in
    ``meta``, and ``default_split`` is the Hugging Face split read when none is given."""

    def load(
        source: str | os.PathLike[str],
        *,
        split: str | None = None,
        columns: Mapping[str, str] | None = None,
        skip_invalid: bool = False,
        dedupe: bool = False,
        limit: int | None = None,
        hf_config: str | None = None,
    ) -> Examples:
        parse = question_answer_parser(name, merge_columns(default_columns, columns), meta_columns)
        return load_records(source, parse, split=split or default_split, hf_config=hf_config,
                            skip_invalid=skip_invalid, dedupe=dedupe, limit=limit)

    load.__name__ = load.__qualname__ = f"load_{name}"
    load.__doc__ = f"{name} examples; ``columns`` maps the roles ``question``, ``answer`` and ``id``."
    return Task(name=name, extract=("answer", "boxed"), symbolic=True, loader=load, default_hf=(hf_name,))


MATH500 = latex_answer_task("math500", "HuggingFaceH4/MATH-500",
                            {"question": "problem", "answer": "answer", "id": "unique_id"}, ("subject", "level"),
                            default_split="test")
DEEPMATH = latex_answer_task("deepmath", "zwhe99/DeepMath-103K",
                             {"question": "question", "answer": "final_answer", "id": "id"}, ("difficulty", "topic"),
                             default_split="train")
load_math500 = MATH500.loader
load_deepmath = DEEPMATH.loader
