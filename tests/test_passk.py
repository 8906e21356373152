"""Metrics against values worked out by hand (and against math.comb for the pass@k product form)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from softgate.passk import (
    answer_key,
    format_rate,
    maj_at_k,
    pass_at_1,
    pass_at_k,
    pass_at_k_dataset,
    eval_summary,
    wilson_interval,
)


def test_pass_at_k_hand_values() -> None:
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4, abs=1e-15)  # c / n
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-15)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(10, 1, 5) == pytest.approx(0.5, abs=1e-15)  # 1 - C(9,5)/C(10,5) = 1 - 126/252
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c = 2 < k: every 3-subset has a correct sample
    assert pass_at_k(1, 1, 1) == 1.0


def test_pass_at_k_matches_binomial_ratio() -> None:
    for n in range(1, 25):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)
    # large n: the product form neither overflows nor loses the value (C(n-c,k)/C(n,k) = 0.5 exactly here)
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5, abs=1e-12)


def test_pass_at_k_errors_and_dataset_mean() -> None:
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(3, 1, 4)
    assert pass_at_k_dataset([5, 5], [2, 0], 2) == pytest.approx(0.35, abs=1e-15)  # (0.7 + 0) / 2
    assert math.isnan(pass_at_k_dataset([], [], 1))


def test_wilson_hand_values() -> None:
    # 5/10, z = 1.959964: centre (0.5 + z^2/20) / (1 + z^2/10) = 0.5,
    # half-width z sqrt(0.025 + z^2/400) / (1 + z^2/10) = 0.263407 -> [0.236593, 0.763407]
    low, high = wilson_interval(5, 10)
    assert (low, high) == (pytest.approx(0.236593, abs=1e-6), pytest.approx(0.763407, abs=1e-6))
    # 0/60 (no AIME problem solved): [0, (z^2/60) / (1 + z^2/60)] = [0, 0.060172]
    low, high = wilson_interval(0, 60)
    assert low == 0.0 and high == pytest.approx(0.060172, abs=1e-6)


def test_pass_at_1_with_one_sample_is_the_binomial_wilson_interval() -> None:
    one = pass_at_1([[True]] * 5 + [[False]] * 5)
    assert (one.mean, one.n) == (0.5, 10) and one.low == pytest.approx(0.236593, abs=1e-6)
    with pytest.raises(ValueError, match="item 1 has no samples"):
        pass_at_1([[True], []])
    assert math.isnan(pass_at_1([]).mean)


# z^2 / (20 + z^2) with z = 1.959964 (z^2 = 3.841458821): the one-sample Wilson bound of 0 of 20 problems.
WILSON_0_OF_20 = 3.841458821 / 23.841458821  # 0.161125


@pytest.mark.parametrize("k", [1, 4, 16])
def test_pass_at_1_never_collapses_when_all_outcomes_agree(k: int) -> None:
    wrong = pass_at_1([[False] * k] * 20)
    assert (wrong.mean, wrong.low, wrong.n) == (0.0, 0.0, 20)
    assert wrong.high == pytest.approx(WILSON_0_OF_20, abs=1e-9)  # more samples do not shrink it to a point
    right = pass_at_1([[True] * k] * 20)
    assert (right.mean, right.high) == (1.0, 1.0)
    assert right.low == pytest.approx(1.0 - WILSON_0_OF_20, abs=1e-9)


def test_pass_at_1_several_samples_hand_value() -> None:
    # fractions 1, 1/2, 0, 1 -> mean 5/8. With the pseudo-problems 0 and 1 added: 6 values, mean 7/12, mean of
    # squares 3.25/6, variance 7.25/36. n_eff = 4 (5/8)(3/8) 36/7.25 = 33.75/7.25 = 4.6552, within [4, 8].
    several = pass_at_1([[True, True], [True, False], [False, False], [True, True]])
    assert several.mean == pytest.approx(0.625, abs=1e-15) and several.n == 4
    n_eff = 33.75 / 7.25
    low, high = wilson_interval(0.625 * n_eff, n_eff)
    assert (several.low, several.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))


def test_pass_at_1_one_success_does_not_shrink_the_interval() -> None:
    # Old rule (bootstrap over problems): all-wrong gave [0, 0] and one right sample of 80 about [0, 3.75%].
    one = pass_at_1([[True, False, False, False]] + [[False] * 4] * 19)
    assert one.high > WILSON_0_OF_20  # monotone: one more success never lowers the upper bound


def test_pass_at_1_covers_the_truth_when_problems_differ_in_difficulty() -> None:
    """Simulated 95% coverage with 4 samples per problem, problem difficulty p_i ~ Beta(a, b): per-sample pooling
    and the bootstrap over problems fall to ~0.7 in the skewed case; the rule here stays above 0.92."""
    rng = np.random.default_rng(0)
    for a, b in ((0.05, 2.0), (5.0, 5.0), (0.5, 0.5)):
        truth, hits, reps = a / (a + b), 0, 300
        for _ in range(reps):
            p = rng.beta(a, b, size=20)  # (problems,)
            correct = rng.random((20, 4)) < p[:, None]  # (problems, samples)
            ci = pass_at_1(correct.tolist())
            hits += ci.low <= truth <= ci.high
        assert hits / reps >= 0.92, (a, b, hits / reps)


def test_maj_at_k_hand_values() -> None:
    answers = [
        ["18", "18.0", "17", None],  # 18 and 18.0 vote together: majority 18, correct
        ["3", "4", "4", "3.5"],  # majority 4, wrong
        ["a", "b", None, None],  # tie: the first answer wins ("a", wrong)
        [None, None, None, None],  # nothing to vote for: unsolved
    ]
    correct = [
        [True, True, False, False],
        [True, False, False, False],
        [False, True, False, False],
        [False, False, False, False],
    ]
    assert maj_at_k(answers, correct) == pytest.approx(0.25, abs=1e-15)
    assert maj_at_k(answers, correct, k=1) == pytest.approx(0.5, abs=1e-15)  # first samples: 18 (ok), 3 (ok)
    with pytest.raises(ValueError, match="1 <= k <= samples"):
        maj_at_k(answers, correct, k=5)
    with pytest.raises(ValueError, match="item 0: 1 answers for 2"):
        maj_at_k([["1"]], [[True, False]])


def test_answer_key_groups_equal_numbers() -> None:
    assert answer_key("$1,234") == answer_key("1234.0") == ("num", Fraction(1234))
    assert answer_key("\\boxed{x+1}") == ("str", "x+1")
    assert answer_key(None) is None and answer_key("   ") is None


def test_format_rate_and_summary() -> None:
    assert format_rate([1.0, 0.5, 1.0, 0.0]) == 0.5
    assert math.isnan(format_rate([]))
    s = eval_summary(
        [[True, False], [False, False], [True, True]],
        format_rewards=[[1.0, 0.5], [1.0, 1.0], [0.25, 1.0]],
        lengths=[[10, 20], [30, 40], [50, 60]],
        answers=[["5", "6"], ["1", "2"], ["7", "7"]],
        ks=(1, 2),
    )
    assert s.accuracy == pytest.approx(0.5, abs=1e-15)  # (0.5 + 0 + 1) / 3
    # fractions 1/2, 0, 1 and the pseudo-problems 0, 1: variance 2.25/5 - (1/2)^2 = 0.2, n_eff = 3 (1/4) / 0.2
    assert (s.n, s.samples) == (3, 6) and s.ci_effective_n == pytest.approx(3.75, abs=1e-12)
    assert s.format_rate == pytest.approx(4 / 6, abs=1e-15) and s.format_reward == pytest.approx(4.75 / 6)
    assert s.length_mean == 35.0
    assert s.pass_at[2] == pytest.approx(2 / 3, abs=1e-15)  # items 1 and 3 have a correct sample
    assert s.maj_at[2] == pytest.approx(2 / 3, abs=1e-15)  # item 1: tie 5/6 -> "5" correct; item 3: "7"
    d = s.as_dict("eval/")
    assert {"eval/accuracy", "eval/accuracy_ci_low", "eval/accuracy_ci_high", "eval/format_rate", "eval/n",
            "eval/length_mean", "eval/pass@2", "eval/maj@1"} <= set(d)
    one = eval_summary([[True], [False]])  # one sample per problem: exactly the 2 problems
    assert one.ci_effective_n == 2 and math.isnan(one.format_rate)
    with pytest.raises(ValueError, match="k=3 needs 1 <= k <= 2"):
        eval_summary([[True, False]], ks=(3,))
