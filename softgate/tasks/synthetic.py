"""The embedded synthetic task: arithmetic word problems with exactly checkable integer answers.

A problem is a start count and one or two steps (add, subtract, multiply), rendered from a small closed vocabulary
so that the project's own word-level tokenizer (``softgate.tokenizer``) covers every string the task can produce::

    Question: Ann has 3 apples and buys 5 more. How many apples does Ann have now?
    Answer:
    <think>3 + 5 = 8</think><answer>8</answer>

Difficulty levels:

- 1: one addition or subtraction, numbers 2..9 (results 1..18).
- 2: two steps (add / subtract / multiply), numbers 2..9.
- 3: one or two additions / subtractions with numbers 10..99.
- 4 (long reasoning): three steps (half of them start with a multiplication), numbers 2..9, and a gold completion
  that works through the story inside ``<think>``, one sentence per step (``worked_completion``; ~50 tokens)::

    <think>Ann has 3 apples. Ann buys 5 more: 3 + 5 = 8. Ann then gives 2 to Bob: 8 - 2 = 6. Ann then finds 4
    more: 6 + 4 = 10. Ann has 10 apples now.</think><answer>10</answer>

  It reuses the task's words only, so the tokenizer (and the shipped models) stay as they are. Prompt plus gold
  completion is ~90 tokens: set ``rollout.max_new_tokens`` to ~80 for this level.

Splits. Every problem text is hashed (SHA-256); the ``TEST_BUCKETS`` of 100 buckets hold the held-out test split,
the rest the train split. The split of a problem is a function of its text alone, so no train problem can ever be a
test problem whatever seeds are used; the test split itself is fixed (``TEST_SEED``), so every run evaluates on
the same problems.

Generation is deterministic: ``generate(n, seed, difficulty)`` returns the same list for the same arguments, on
any machine (only ``random.Random`` with an integer seed and SHA-256 are used).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from softgate.tasks.base import Example, Examples, Task

Split = Literal["train", "test"]

NAMES = ("Ann", "Bob", "Cal", "Dan", "Eve", "Fay", "Gus", "Hal", "Ida", "Jon", "Kim", "Lea", "Max", "Ned", "Oli", "Pam")
ITEMS = ("apples", "pears", "books", "cards", "coins", "pens", "shells", "stamps", "cups", "eggs", "balls", "rocks")
CONTAINERS = ("boxes", "bags", "jars", "baskets")
LEVELS = (1, 2, 3, 4)
LONG_LEVEL = 4  # the level whose gold completions carry the worked steps
TEST_BUCKETS = 10  # of 100: about 10% of all problem texts are held out
TEST_SEED = 20240  # the fixed seed that draws the held-out test problems
NAME = "synthetic"
# No system prompt for the tiny model: it learns the format from its warm start, and short prompts keep it cheap.
PROMPT_TEMPLATE = "Question: {question}\nAnswer:\n"

# One clause per step. {n}: the subject, {m}: another person, {x}: the operand, {items}/{c}: nouns.
_START = "{n} has {a} {items}"
_START_MUL = "{n} has {a} {c} with {x} {items} in each"
_ADD = ("buys {x} more", "finds {x} more", "gets {x} more from {m}")
_SUB = ("gives {x} to {m}", "loses {x}", "sells {x}")
_ADD2 = ("then buys {x} more", "then finds {x} more", "then gets {x} more from {m}")
_SUB2 = ("then gives {x} to {m}", "then loses {x}", "then sells {x}")
_QUESTION = ("How many {items} does {n} have now?", "How many {items} does {n} have?")
_OP_SYMBOL = {"add": "+", "sub": "-", "mul": "*"}


@dataclass(frozen=True)
class SyntheticProblem:
    """One problem, with its structured form (``start`` then ``steps``) from which the answer is computed.

    ``steps`` holds ``(op, operand)`` pairs with op in {"add", "sub", "mul"}, applied left to right.
    ``completion`` is the gold completion in the paper's format, without EOS.
    """

    id: str
    question: str
    reference: str
    completion: str
    difficulty: int
    start: int
    steps: tuple[tuple[str, int], ...]

    @property
    def prompt(self) -> str:
        """The plain-text prompt the tiny model is trained and sampled with (no chat template)."""
        return format_prompt(self.question)

    def to_example(self) -> Example:
        """The task-contract form; the structured problem and the gold completion go into ``meta``."""
        meta = {"difficulty": self.difficulty, "start": self.start, "steps": self.steps, "completion": self.completion}
        return Example(question=self.question, reference=self.reference, id=self.id, source=NAME, meta=meta)


def format_prompt(question: str) -> str:
    """Plain-text prompt: ``"Question: ...\\nAnswer:\\n"``; the completion starts with ``<think>``."""
    return PROMPT_TEMPLATE.format(question=question)


def apply_steps(start: int, steps: Sequence[tuple[str, int]]) -> list[int]:
    """Running values after each step (the last one is the answer)."""
    values, value = [], start
    for op, x in steps:
        match op:
            case "add":
                value = value + x
            case "sub":
                value = value - x
            case "mul":
                value = value * x
            case _:
                raise ValueError(f"unknown op {op!r}; expected add, sub or mul")
        values.append(value)
    return values


def gold_completion(start: int, steps: Sequence[tuple[str, int]]) -> str:
    """``<think>3 + 5 = 8, 8 - 2 = 6</think><answer>6</answer>``: one equation per step."""
    values = apply_steps(start, steps)
    lhs, equations = start, []
    for (op, x), value in zip(steps, values):
        equations.append(f"{lhs} {_OP_SYMBOL[op]} {x} = {value}")
        lhs = value
    return f"<think>{', '.join(equations)}</think><answer>{values[-1]}</answer>"


def worked_completion(story: Sequence[str], start: int, steps: Sequence[tuple[str, int]], closing: str) -> str:
    """The long-reasoning gold completion: each sentence of ``story`` (the start, then one clause per step, as the
    question tells them) followed by its equation, then ``closing`` with the result::

        <think>Ann has 3 apples. Ann buys 5 more: 3 + 5 = 8. Ann has 8 apples now.</think><answer>8</answer>

    A multiplication is the start itself (``story[0]`` = "Ann has 3 boxes with 4 apples in each"), so ``story``
    holds one sentence per step, plus the start when the first step is not a multiplication.
    """
    values = apply_steps(start, steps)
    sentences = [] if steps[0][0] == "mul" else [f"{story[0]}."]
    lhs = start
    for sentence, (op, x), value in zip(story[len(sentences):], steps, values):
        sentences.append(f"{sentence}: {lhs} {_OP_SYMBOL[op]} {x} = {value}.")
        lhs = value
    sentences.append(closing.format(value=values[-1]))
    return f"<think>{' '.join(sentences)}</think><answer>{values[-1]}</answer>"


def split_of(question: str) -> Split:
    """The split a problem text belongs to: a fixed function of the text (SHA-256 bucket)."""
    bucket = int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "big") % 100
    return "test" if bucket < TEST_BUCKETS else "train"


def _draw(rng: random.Random, difficulty: int) -> tuple[str, int, tuple[tuple[str, int], ...], str]:
    """Draw one problem of the given difficulty: (question, start, steps, gold completion). Every value stays >= 1.
    (The random draws of levels 1-3 are in a fixed order: adding a level must not change their problems.)"""
    n, m = rng.sample(NAMES, 2)
    items = rng.choice(ITEMS)
    lo, hi = (10, 99) if difficulty == 3 else (2, 9)
    n_steps = 1 if difficulty == 1 else 2 if difficulty == 2 else 3 if difficulty == LONG_LEVEL else rng.choice((1, 2))
    # Multiplication only at levels 2 and 4, as the first step.
    use_mul = difficulty in (2, LONG_LEVEL) and rng.random() < 0.5
    clauses: list[str] = []
    if use_mul:
        a, x = rng.randint(2, 5), rng.randint(2, 5)
        start, steps = a, [("mul", x)]
        head = _START_MUL.format(n=n, a=a, c=rng.choice(CONTAINERS), x=x, items=items)
    else:
        start, steps = rng.randint(lo, hi), []
        head = _START.format(n=n, a=start, items=items)
    value = apply_steps(start, steps)[-1] if steps else start
    while len(steps) < n_steps:
        first = not clauses and not use_mul
        # Subtract only what is there, so that counts stay positive (a word problem cannot own -3 apples).
        op = "sub" if value > lo and rng.random() < 0.5 else "add"
        x = rng.randint(lo, min(hi, value - 1)) if op == "sub" else rng.randint(lo, hi)
        pool = (_ADD if first else _ADD2) if op == "add" else (_SUB if first else _SUB2)
        clauses.append(rng.choice(pool).format(x=x, m=m))
        steps.append((op, x))
        value = apply_steps(start, steps)[-1]
    if use_mul:
        body = f"{head}. {n} " + " and ".join(c.removeprefix("then ") for c in clauses)
    elif len(clauses) == 1:
        body = f"{head} and {clauses[0]}"
    else:
        body = f"{head}, " + ", ".join(clauses[:-1]) + f" and {clauses[-1]}"
    question = f"{body}. " + rng.choice(_QUESTION).format(items=items, n=n)
    if difficulty == LONG_LEVEL:
        completion = worked_completion([head, *(f"{n} {c}" for c in clauses)], start, steps,
                                       f"{n} has {{value}} {items} now.")
    else:
        completion = gold_completion(start, steps)
    return question, start, tuple(steps), completion


def iter_problems(seed: int, difficulty: int | Sequence[int], split: Split) -> Iterator[SyntheticProblem]:
    """Endless stream of distinct problems of ``split`` drawn from ``seed``.

    ``difficulty`` is one level or a sequence of levels (drawn uniformly per problem).
    """
    levels = _check_levels(difficulty)
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; expected 'train' or 'test'")
    rng = random.Random(f"softgate-synthetic/{seed}")  # str seeds hash with SHA-512: stable across runs
    seen: set[str] = set()
    misses = 0
    while True:
        level = rng.choice(levels)
        question, start, steps, completion = _draw(rng, level)
        if question in seen or split_of(question) != split:
            misses += 1
            if misses > 1_000_000:  # the problem space is finite: say so instead of looping forever
                raise ValueError(f"ran out of distinct {split} problems at difficulty {levels}")
            continue
        seen.add(question)
        digest = hashlib.sha256(question.encode("utf-8")).hexdigest()[:12]
        yield SyntheticProblem(
            id=f"synthetic-{split}-{digest}",
            question=question,
            reference=str(apply_steps(start, steps)[-1]),
            completion=completion,
            difficulty=level,
            start=start,
            steps=steps,
        )


def generate(n: int, seed: int, difficulty: int | Sequence[int] = 1, split: Split = "train") -> list[SyntheticProblem]:
    """``n`` distinct problems of ``split`` from ``seed`` (deterministic)."""
    if n < 0:
        raise ValueError(f"n={n}; expected n >= 0")
    stream = iter_problems(seed, difficulty, split)
    return [next(stream) for _ in range(n)]


def load_synthetic(split: Split | str = "train", n: int = 1000, difficulty: int | Sequence[int] = 1,
                   seed: int = 0, **kwargs: Any) -> Examples:
    """The train split (from ``seed``) or the fixed held-out test split (always drawn from ``TEST_SEED``), as
    :class:`~softgate.tasks.base.Example` objects (``meta`` holds the structured problem and gold completion).

    ``split`` may also be spelled ``"synthetic:train"``; other keyword arguments of the loader contract (``limit``,
    ...) are accepted, ``limit`` overriding ``n``.
    """
    split = str(split).removeprefix(f"{NAME}:")
    if split not in ("train", "test"):
        raise ValueError(f"synthetic split {split!r}; expected 'train' or 'test'")
    if kwargs.get("limit") is not None:
        n = int(kwargs["limit"])
    problems = generate(n, TEST_SEED if split == "test" else seed, difficulty, split)  # type: ignore[arg-type]
    return Examples([p.to_example() for p in problems], origin=f"{NAME}:{split}")


def vocabulary_corpus() -> list[str]:
    """Strings that together contain every word, number and symbol the task can emit (for the tokenizer)."""
    words = [*NAMES, *ITEMS, *CONTAINERS, "and"]  # "and" joins clauses in _draw
    fields = dict(n="Ann", m="Bob", a=3, x=4, items="apples", c="boxes")
    clauses = [t.format(**fields) for t in (*_ADD, *_SUB, *_ADD2, *_SUB2, *_QUESTION, _START, _START_MUL)]
    long = worked_completion(["Ann has 3 apples", "Ann buys 4 more"], 3, [("add", 4)], "Ann has {value} apples now.")
    return [format_prompt(" ".join(words) + ", ."), *clauses, gold_completion(12, [("add", 3), ("sub", 4)]),
            gold_completion(56, [("mul", 7), ("sub", 89)]), long]


def _check_levels(difficulty: int | Sequence[int]) -> list[int]:
    levels = [difficulty] if isinstance(difficulty, int) else list(difficulty)
    if not levels or any(level not in LEVELS for level in levels):
        raise ValueError(f"difficulty={difficulty!r}; expected one of {LEVELS} or a non-empty list of them")
    return levels


# The task object (registry name "synthetic"): plain prompt without system text, integer answers graded exactly
# on the content of <answer>...</answer> (never the math-verify pool).
SyntheticTask = Task(
    name=NAME,
    plain_template=PROMPT_TEMPLATE,
    extract=("answer",),
    symbolic=False,
    loader=load_synthetic,
)
