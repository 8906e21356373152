"""Any question/answer file, no task module needed: the ``fields`` task.

Rows need a question and a final answer; the columns are named by ``columns`` (``softgate eval --question-field
Q --answer-field A``; defaults ``question`` / ``answer``). An ``id`` column is used when present (else the row
index) and a ``source`` column, when present, names each row's source so that an evaluation reports one figure
per source. Completions are graded on the ``<answer>`` content (the default extraction mode) by the grader:
numbers and exact matches on the fast path, anything else (LaTeX) by math-verify.
"""

from __future__ import annotations

from softgate.tasks.base import question_answer_task

NAME = "fields"
COLUMNS = {"question": "question", "answer": "answer", "id": "id", "source": "source"}

TASK = question_answer_task(NAME, COLUMNS)
load_fields = TASK.loader
