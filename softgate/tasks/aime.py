"""AIME 2024 and 2025 (30 problems each; the paper pools them: 60 problems).

Data: ``problem`` / ``answer`` and a ``year`` column (also accepted: a ``url`` or ``id`` from which a 4-digit year
can be read, e.g. ``2024-I-3``). Answers are integers 0..999 (leading zeros allowed in the file: ``"033"``), so the
numeric fast path decides and the math-verify pool is never used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from typing import Any

from softgate.tasks.base import Example, Examples, RowError, Task, get_field, load_records, merge_columns, row_id

NAME = "aime"
HF_NAMES = {2024: "HuggingFaceH4/aime_2024", 2025: "yentinglin/aime_2025"}
COLUMNS = {"question": "problem", "answer": "answer", "id": "id", "year": "year"}
_YEAR = re.compile(r"(?<!\d)(19[89]\d|20\d\d)(?!\d)")
_INT = re.compile(r"^\d{1,3}$")


def _year(row: Mapping[str, Any], cols: Mapping[str, str]) -> int | None:
    value = row.get(cols["year"])
    if value is not None and str(value).strip():
        text = str(value).strip()
        if not text.isdigit():
            raise RowError(f"malformed field {cols['year']!r} (year): {value!r}")
        return int(text)
    for key in (cols["id"], "url", "ID"):  # e.g. "2024-II-4" or ".../2025_AIME_I_Problems/Problem_3"
        match = _YEAR.search(str(row.get(key) or ""))
        if match:
            return int(match.group(1))
    return None


def load_aime(
    source: str | os.PathLike[str],
    *,
    split: str | None = None,
    columns: Mapping[str, str] | None = None,
    years: Collection[int] | None = None,
    skip_invalid: bool = False,
    dedupe: bool = False,
    limit: int | None = None,
    hf_config: str | None = None,
) -> Examples:
    """AIME examples; ``years`` keeps only those years (rows without a readable year are then an error).

    ``columns`` maps the roles ``question``, ``answer``, ``id`` and ``year``. The reference is the integer answer
    without leading zeros; a non-integer or out-of-range answer is a malformed ``answer`` field.
    """
    cols = merge_columns(COLUMNS, columns)
    wanted = set(years) if years is not None else None

    def parse(row: Mapping[str, Any], index: int) -> Example:
        question = get_field(row, cols["question"], "question")
        answer = get_field(row, cols["answer"], "answer").strip()
        if not _INT.match(answer):
            raise RowError(
                f"malformed field {cols['answer']!r} (answer): AIME answers are integers 0..999, got {answer!r}"
            )
        year = _year(row, cols)
        if wanted is not None and year is None:
            raise RowError(f"missing field {cols['year']!r} (year): needed to filter years {sorted(wanted)}")
        meta = {"year": year} if year is not None else {}
        return Example(question.strip(), str(int(answer)), row_id(row, cols["id"], NAME, index), NAME, meta)

    examples = load_records(
        source, parse, split=split or "train", hf_config=hf_config, skip_invalid=skip_invalid, dedupe=dedupe, limit=None
    )
    if wanted is not None:
        kept = [e for e in examples if e.meta.get("year") in wanted]
        if not kept:
            raise ValueError(f"{source}: no AIME problems from years {sorted(wanted)}")
        examples = Examples(kept, examples.skipped, examples.origin, examples.duplicates)
    if limit is not None:
        examples = Examples(examples[:limit], examples.skipped, examples.origin, examples.duplicates)
    return examples


TASK = Task(
    name=NAME, extract=("answer", "boxed"), symbolic=False, loader=load_aime, default_hf=tuple(HF_NAMES.values())
)
