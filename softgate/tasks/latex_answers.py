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

from softgate.tasks.base import question_answer_task

MATH500 = question_answer_task("math500", {"question": "problem", "answer": "answer", "id": "unique_id"},
                               meta_columns=("subject", "level"), extract=("answer", "boxed"), default_split="test",
                               default_hf=("HuggingFaceH4/MATH-500",))
DEEPMATH = question_answer_task("deepmath", {"question": "question", "answer": "final_answer", "id": "id"},
                                meta_columns=("difficulty", "topic"), extract=("answer", "boxed"),
                                default_split="train", default_hf=("zwhe99/DeepMath-103K",))
load_math500 = MATH500.loader
load_deepmath = DEEPMATH.loader
