"""Metrics against values worked out by hand (and against math.comb for the pass@k product form)."""

from __future__ import annotations

import math
from fractions import Fraction

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


def test_pass_at_1_wilson_for_one_sample_bootstrap_for_several() -> None:
    one = pass_at_1([[True]] * 5 + [[False]] * 5)
    assert (one.mean, one.n) == (0.5, 10) and one.low == pytest.approx(0.236593, abs=1e-6)
    several = pass_at_1([[True, True], [True, False], [False, False], [True, True]])
    assert several.mean == pytest.approx(0.625, abs=1e-15)  # (1 + 0.5 + 0 + 1) / 4
    assert 0.0 <= several.low <= several.mean <= several.high <= 1.0
    assert several == pass_at_1([[True, True], [True, False], [False, False], [True, True]])  # seeded
    with pytest.raises(ValueError, match="item 1 has no samples"):
        pass_at_1([[True], []])
    assert math.isnan(pass_at_1([]).mean)


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
    assert s.ci_method == "bootstrap" and (s.n, s.samples) == (3, 6)
    assert s.format_rate == pytest.approx(4 / 6, abs=1e-15) and s.format_reward == pytest.approx(4.75 / 6)
    assert s.length_mean == 35.0
    assert s.pass_at[2] == pytest.approx(2 / 3, abs=1e-15)  # items 1 and 3 have a correct sample
    assert s.maj_at[2] == pytest.approx(2 / 3, abs=1e-15)  # item 1: tie 5/6 -> "5" correct; item 3: "7"
    d = s.as_dict("eval/")
    assert {"eval/accuracy", "eval/accuracy_ci_low", "eval/accuracy_ci_high", "eval/format_rate", "eval/n",
            "eval/length_mean", "eval/pass@2", "eval/maj@1"} <= set(d)
    one = eval_summary([[True], [False]])
    assert one.ci_method == "wilson" and math.isnan(one.format_rate)
    with pytest.raises(ValueError, match="k=3 needs 1 <= k <= 2"):
        eval_summary([[True, False]], ks=(3,))
