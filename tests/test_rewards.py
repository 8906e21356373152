"""Format reward levels, answer extraction, answer reward (fast path and symbolic), batched forms, hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softgate import rewards
from softgate.grading import Grader
from softgate.rewards import (
    answer_reward,
    answer_rewards,
    extract_answer,
    format_reward,
    format_rewards,
    grade_answers,
)

# -- format reward ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, level",
    [
        # 1.0: one think block then one answer block, only whitespace outside, non-blank answer
        ("<think>3+4=7</think><answer>7</answer>", 1.0),
        ("  \n<think>\nreason\n</think>\n\n<answer> 7 </answer>\n", 1.0),
        ("<think></think><answer>7</answer>", 1.0),  # empty reasoning is allowed
        # 0.5: both closed pairs, something off
        ("Sure! <think>r</think><answer>7</answer>", 0.5),  # text before
        ("<think>r</think> so <answer>7</answer>", 0.5),  # text between
        ("<think>r</think><answer>7</answer> Done.", 0.5),  # text after
        ("<think>r</think><answer>  </answer>", 0.5),  # blank answer
        ("<answer>7</answer><think>r</think>", 0.5),  # wrong order
        ("<think>r</think><answer>7</answer><answer>8</answer>", 0.5),  # duplicate answer
        ("<think>r</think><think>s</think><answer>7</answer>", 0.5),  # duplicate think
        ("<think>r <answer>7</answer></think>", 0.5),  # answer nested in think
        # 0.25: a closed pair of exactly one of the two
        ("<answer>7</answer>", 0.25),
        ("<think>r</think> The answer is 7.", 0.25),
        ("<think>r</think><answer>7", 0.25),  # answer never closed
        ("<think>r<answer>7</answer>", 0.25),  # think never closed
        # 0.0: no closed pair
        ("The answer is 7.", 0.0),
        ("<think>started but ran out of tokens", 0.0),
        ("</think><answer>", 0.0),  # closing before opening
        ("<THINK>r</THINK><ANSWER>7</ANSWER>", 0.0),  # tags are case-sensitive
        ("", 0.0),
    ],
)
def test_format_levels(completion: str, level: float) -> None:
    assert format_reward(completion) == level


def test_format_rewards_batched_and_huge_input() -> None:
    big = "<think>" + "x" * 2_000_000 + "</think><answer>1</answer>"
    assert format_rewards(["<answer>1</answer>", big, "no tags"]) == [0.25, 1.0, 0.0]


# -- extraction ---------------------------------------------------------------------------------------------------


def test_extract_modes() -> None:
    text = "<think>maybe <answer>3</answer></think> final <answer> 42 </answer> #### 41 \\boxed{\\frac{1}{2}}"
    assert extract_answer(text) == "42"  # the last answer pair
    assert extract_answer(text, "gsm8k") == "41 \\boxed{\\frac{1}{2}}"  # rest of the line after the last ####
    assert extract_answer(text, "boxed") == "\\frac{1}{2}"
    assert extract_answer("no tags", ("answer", "boxed")) is None
    assert extract_answer("so \\boxed{x^{2}}", ("answer", "boxed")) == "x^{2}"  # falls through to boxed
    assert extract_answer("\\boxed{unclosed", "boxed") is None
    assert extract_answer("<answer>  </answer>") is None
    assert extract_answer("work\n#### 1,234\nmore text", "gsm8k") == "1,234"
    with pytest.raises(ValueError, match="unknown extract mode"):
        extract_answer("x", "xml")


# -- answer reward --------------------------------------------------------------------------------------------------


@pytest.fixture()
def fast_grader():
    """A grader that must never start its pool (checked after each test)."""
    g = Grader(timeout=1.0)
    yield g
    assert g._pool.starts == 0
    g.close()


@pytest.mark.parametrize(
    "completion, reference, reward",
    [
        ("<think>t</think><answer>7</answer>", "7", 1.0),
        ("<think>t</think><answer>8</answer>", "7", 0.0),
        ("<answer>1,234</answer>", "1234", 1.0),
        ("<answer>$1,234.00</answer>", "1234", 1.0),
        ("<answer>\\boxed{-5}</answer>", "-5", 1.0),
        ("<answer>-5 degrees</answer>", "-5", 1.0),
        ("<answer>3.5</answer>", "\\frac{7}{2}", 1.0),
        ("<answer>٧</answer>", "7", 1.0),  # Arabic-Indic seven
        ("<answer>7.</answer>", "7", 1.0),
        ("<answer>12%</answer>", "12", 1.0),
        ("<answer>x = 4</answer>", "4", 1.0),
        ("The answer is 7", "7", 0.0),  # no answer tag
        ("<answer>1\x007</answer>", "17", 0.0),  # NUL byte
        ("<answer>" + "7" * 1_000_000 + "</answer>", "7", 0.0),  # megabyte answer, refused unparsed
    ],
)
def test_answer_reward_fast_path(fast_grader: Grader, completion: str, reference: str, reward: float) -> None:
    assert answer_reward(completion, reference, grader=fast_grader) == reward


def test_answer_rewards_batched_synthetic_style(fast_grader: Grader) -> None:
    completions = [f"<think>{i}+1</think><answer>{i + 1}</answer>" for i in range(128)]
    references = [str(i + 1 if i % 3 else i) for i in range(128)]
    out = answer_rewards(completions, references, grader=fast_grader)
    assert out == [1.0 if i % 3 else 0.0 for i in range(128)]
    grades = grade_answers(completions, references, grader=fast_grader)
    assert [1.0 if ok else 0.0 for ok in grades.verdicts] == out
    assert (grades.stats.graded, grades.stats.fast_path, grades.stats.correct) == (128, 128, sum(out))


def test_answer_reward_extract_option(fast_grader: Grader) -> None:
    assert answer_reward("so\n#### 12", "12", extract="gsm8k", grader=fast_grader) == 1.0
    assert answer_reward("so\n#### 12", "12", grader=fast_grader) == 0.0  # default mode wants <answer>
    assert answer_reward("\\boxed{12}", "12", extract=("answer", "boxed"), grader=fast_grader) == 1.0
    assert answer_reward("<answer>2+10</answer>", "12", symbolic=False, grader=fast_grader) == 0.0
    graded = grade_answers(["<answer>2+10</answer>", "no tag"], ["12", "3"], symbolic=False, grader=fast_grader)
    assert (graded.stats.not_numeric, graded.stats.no_answer) == (1, 1)


def test_answer_rewards_length_mismatch() -> None:
    with pytest.raises(ValueError, match="2 completions for 1 references"):
        answer_rewards(["a", "b"], ["a"])


@pytest.mark.timeout(180)
def test_answer_rewards_symbolic_with_a_grader_and_its_counters() -> None:
    completions = [
        "<answer>\\frac{\\sqrt{3}}{2}</answer>",
        "<answer>2\\sqrt{2}</answer>",
        "<answer>10^{10^{10^{10}}}</answer>",  # hangs sympy: times out
    ]
    references = ["\\frac{\\sqrt3}{2}", "\\sqrt{8}", "7"]
    with Grader(timeout=2.0, workers=1) as grader:
        graded = grade_answers(completions, references, grader=grader)
        assert graded.verdicts == [True, True, False]
        assert (graded.stats.graded, graded.stats.timeouts, graded.stats.correct) == (3, 1, 2)
        assert answer_rewards(completions, references, grader=grader) == [1.0, 1.0, 0.0]  # now from the cache


@pytest.mark.timeout(180)
def test_answer_reward_without_a_grader_uses_a_default_one() -> None:
    assert answer_reward("<answer>2\\sqrt{2}</answer>", "\\sqrt{8}") == 1.0  # needs math-verify
    assert answer_reward("<answer>7</answer>", "7") == 1.0
    default = rewards._default_grader()
    assert default is rewards._default_grader() and default.timeout == 5.0  # made once, from default arguments


_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_no_tags = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200).filter(
    lambda t: not any(tag in t for tag in _TAGS)
)


@given(_no_tags, _no_tags.filter(lambda t: t.strip() != ""))
def test_format_full_marks_for_any_reasoning_and_answer(reasoning: str, answer: str) -> None:
    assert format_reward(f"<think>{reasoning}</think>\n<answer>{answer}</answer>") == 1.0
    assert format_reward(f"<answer>{answer}</answer>") == 0.25
    assert format_reward(reasoning) == 0.0


@given(st.text(alphabet="<>/thinkanswer x", max_size=120))
def test_format_reward_is_always_a_paper_level(text: str) -> None:
    assert format_reward(text) in rewards.FORMAT_LEVELS


def test_trainer_scoring_returns_the_grader_counters_of_that_call() -> None:
    from types import SimpleNamespace

    from softgate.config import Config
    from softgate.tasks import get_task
    from softgate.train import grader_metrics, score

    gsm8k, math500 = get_task("gsm8k"), get_task("math500")
    completions = ["<think>t</think><answer>5</answer>", "#### 6", "<answer>\\boxed{7}</answer>", "nothing",
                   "<answer>" + "1" * 2000 + "</answer>"]
    tasks = [gsm8k, gsm8k, math500, math500, math500]
    cfg = Config()
    with Grader(timeout=1.0) as grader:
        rewards_, graded = score(tasks, SimpleNamespace(completions=completions), ["5", "5", "7", "1", "1"], cfg,
                                 grader)
        assert rewards_["answer"].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
        assert rewards_["total"].tolist() == (rewards_["answer"] + rewards_["format"]).tolist()
        assert (graded.graded, graded.correct) == (5, 2)  # both tasks' calls added up
        assert grader_metrics(graded) == {"grader/timeouts": 0.0, "grader/errors": 0.0, "grader/too_long": 1.0,
                                          "grader/no_answer": 1.0}
        _, again = score(tasks[:1], SimpleNamespace(completions=completions[:1]), ["5"], cfg, grader)
        assert grader_metrics(again)["grader/no_answer"] == 0.0  # nothing carried over from the previous step
        assert grader._pool.starts == 0
