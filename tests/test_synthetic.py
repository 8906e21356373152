"""The synthetic task: determinism, split disjointness, answers recomputed from the question text itself."""

from __future__ import annotations

import re

import pytest

from softgate.tasks import synthetic
from softgate.tasks.base import Example, Task

ADD_VERBS = ("buys", "finds", "gets")
SUB_VERBS = ("gives", "loses", "sells")


def answer_from_text(question: str) -> int:
    """Independent reading of a question: start count, then each verb with its number, applied in order."""
    mul = re.match(r"\w+ has (\d+) \w+ with (\d+) \w+ in each\.", question)
    if mul:
        value, rest = int(mul.group(1)) * int(mul.group(2)), question[mul.end():]
    else:
        head = re.match(r"\w+ has (\d+) \w+", question)
        assert head, question
        value, rest = int(head.group(1)), question[head.end():]
    for verb, number in re.findall(r"\b(buys|finds|gets|gives|loses|sells) (\d+)", rest):
        value = value + int(number) if verb in ADD_VERBS else value - int(number)
    return value


@pytest.mark.parametrize("level", synthetic.LEVELS)
def test_generation_is_deterministic(level: int) -> None:
    a = synthetic.generate(50, seed=7, difficulty=level)
    b = synthetic.generate(50, seed=7, difficulty=level)
    c = synthetic.generate(50, seed=8, difficulty=level)
    assert a == b
    assert [p.question for p in a] != [p.question for p in c]
    assert len({p.question for p in a}) == 50  # distinct within a draw


@pytest.mark.parametrize("level", synthetic.LEVELS)
def test_answers_match_an_independent_reading_of_the_text(level: int) -> None:
    for split in ("train", "test"):
        for p in synthetic.generate(300, seed=3, difficulty=level, split=split):
            expected = answer_from_text(p.question)
            assert p.reference == str(expected), p.question
            assert p.completion.endswith(f"<answer>{expected}</answer>")
            assert expected >= 1  # counts never go negative or to zero
            # Every equation in the reasoning is true (checked by integer arithmetic on its parts).
            think = re.fullmatch(r"<think>(.*)</think><answer>-?\d+</answer>", p.completion).group(1)
            for lhs, op, rhs, result in re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", think):
                x, y = int(lhs), int(rhs)
                assert {"+": x + y, "-": x - y, "*": x * y}[op] == int(result), think
            assert think.count("=") == len(p.steps)


def test_difficulty_levels_have_their_shape() -> None:
    level1 = synthetic.generate(200, seed=0, difficulty=1)
    assert all(len(p.steps) == 1 and p.steps[0][0] in ("add", "sub") for p in level1)
    assert all(2 <= p.start <= 9 and 2 <= p.steps[0][1] <= 9 for p in level1)
    level2 = synthetic.generate(200, seed=0, difficulty=2)
    assert all(len(p.steps) == 2 for p in level2)
    assert any(p.steps[0][0] == "mul" for p in level2)
    level3 = synthetic.generate(200, seed=0, difficulty=3)
    assert all(p.start >= 10 and all(x >= 10 for _, x in p.steps) for p in level3)
    level4 = synthetic.generate(200, seed=0, difficulty=4)
    assert all(len(p.steps) == 3 and 2 <= p.start <= 9 for p in level4)
    assert any(p.steps[0][0] == "mul" for p in level4) and any(p.steps[0][0] != "mul" for p in level4)


def test_long_level_works_through_the_story_in_think() -> None:
    """Level 4's gold completions restate every step of the question with its equation inside <think>: at least
    40 tokens on average (the tokenizer of the shipped models), and the story the reasoning tells computes the
    answer when read by the independent parser."""
    from softgate.tokenizer import build_tokenizer

    tok = build_tokenizer()
    problems = synthetic.generate(300, seed=4, difficulty=synthetic.LONG_LEVEL)
    think_lengths = []
    for p in problems:
        think = re.fullmatch(r"<think>(.*)</think><answer>\d+</answer>", p.completion).group(1)
        think_lengths.append(len(tok(think, add_special_tokens=False)["input_ids"]))
        name, items = p.question.split()[0], re.search(r"How many (\w+) does", p.question).group(1)
        assert think.startswith(f"{name} has {p.start} ") and think.endswith(f"{name} has {p.reference} {items} now.")
        for verb, number in re.findall(r"\b(buys|finds|gets|gives|loses|sells) (\d+)", p.question):
            assert f"{verb} {number}" in think, (p.question, think)
        assert answer_from_text(think.replace(":", ".", 1) if p.steps[0][0] == "mul" else think) == int(p.reference)
    assert sum(think_lengths) / len(think_lengths) >= 40
    assert min(think_lengths) >= 35
    # Levels 1-3 keep their short completions: one equation each.
    short = synthetic.generate(100, seed=4, difficulty=[1, 2, 3])
    assert all(re.fullmatch(r"<think>[\d +*=,-]*</think><answer>\d+</answer>", p.completion) for p in short)


def test_the_vocabulary_is_that_of_the_shipped_models() -> None:
    """The task's words build the tokenizer; a new word would shift token ids under the shipped checkpoints."""
    import json
    from pathlib import Path

    from softgate.modeling import EMBEDDED_MODELS, embedded_path
    from softgate.tokenizer import build_tokenizer

    vocab = build_tokenizer().get_vocab()
    for name in EMBEDDED_MODELS:
        shipped = json.loads((Path(embedded_path(name)) / "tokenizer.json").read_text())["model"]["vocab"]
        assert vocab == shipped, name


def test_splits_are_disjoint_and_test_split_is_fixed() -> None:
    train = synthetic.load_synthetic("train", n=3000, difficulty=[1, 2], seed=0)
    other_train = synthetic.load_synthetic("train", n=3000, difficulty=[1, 2], seed=123)
    test = synthetic.load_synthetic("test", n=500, difficulty=[1, 2], seed=0)
    test_again = synthetic.load_synthetic("test", n=500, difficulty=[1, 2], seed=99)  # seed ignored for test
    test_questions = {e.question for e in test}
    assert [e.id for e in test] == [e.id for e in test_again]
    assert not test_questions & ({e.question for e in train} | {e.question for e in other_train})
    assert all(synthetic.split_of(q) == "test" for q in test_questions)
    assert all(e.id.startswith("synthetic-test-") for e in test)
    # The hash buckets give about TEST_BUCKETS % of problem texts to the test split.
    drawn = [synthetic._draw(__import__("random").Random(i), 1)[0] for i in range(4000)]
    share = sum(synthetic.split_of(q) == "test" for q in drawn) / len(drawn)
    assert 0.07 < share < 0.13


def test_task_contract() -> None:
    task = synthetic.SyntheticTask
    assert isinstance(task, Task) and task.name == "synthetic"
    examples = task.load("test", n=5, difficulty=2)
    assert len(examples) == 5 and all(isinstance(e, Example) for e in examples)
    e = examples[0]
    assert e.source == "synthetic" and e.meta["difficulty"] == 2
    assert task.render_prompt(e) == f"Question: {e.question}\nAnswer:\n"  # no chat template: plain, no system text
    assert task.render_prompt(e) == synthetic.format_prompt(e.question)
    assert task.load("synthetic:train", limit=3, difficulty=1)[0].id.startswith("synthetic-train-")


def test_from_registry() -> None:
    from softgate.tasks import get_task

    assert get_task("synthetic") is synthetic.SyntheticTask


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=1, seed=0, difficulty=5), "difficulty"),
        (dict(n=1, seed=0, difficulty=[]), "difficulty"),
        (dict(n=-1, seed=0, difficulty=1), "n=-1"),
        (dict(n=1, seed=0, difficulty=1, split="dev"), "split"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        synthetic.generate(**kwargs)


def test_bad_split_name() -> None:
    with pytest.raises(ValueError, match="'validation'"):
        synthetic.load_synthetic("validation", n=1)


def test_apply_steps_rejects_unknown_op() -> None:
    assert synthetic.apply_steps(3, [("add", 5), ("mul", 2), ("sub", 4)]) == [8, 16, 12]
    with pytest.raises(ValueError, match="'div'"):
        synthetic.apply_steps(3, [("div", 1)])
