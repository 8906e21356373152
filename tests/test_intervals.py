"""softgate.intervals: bootstrap intervals checked against exact resampling distributions worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from softgate import intervals


def test_identical_values_give_zero_width_interval():
    ci = intervals.bootstrap_mean_ci([0.42, 0.42, 0.42, 0.42])
    assert ci.mean == pytest.approx(0.42, abs=1e-15)
    assert ci.low == pytest.approx(0.42, abs=1e-15)
    assert ci.high == pytest.approx(0.42, abs=1e-15)
    assert ci.n == 4


def test_two_values_interval_spans_both():
    # Resamples of [0, 1] have mean 0 (p = 1/4), 0.5 (p = 1/2) or 1 (p = 1/4): the 2.5% quantile is 0 and the
    # 97.5% quantile is 1 (each extreme holds ~25% of the 10k resamples, far from the 2.5% cut).
    ci = intervals.bootstrap_mean_ci([0.0, 1.0])
    assert (ci.mean, ci.low, ci.high) == (0.5, 0.0, 1.0)


def test_three_values_interval_matches_exact_distribution():
    # Resample means of [0, 0, 1] are k/3 with k ~ Binomial(3, 1/3): P(0) = 8/27 = 0.296, P(1/3) = 12/27,
    # P(2/3) = 6/27, P(1) = 1/27 = 0.037. The 2.5% quantile is 0. P(mean <= 2/3) = 26/27 = 0.963 < 0.975, so the
    # 97.5% quantile is 1 (the margin 0.012 is ~6 standard errors of a proportion over 10k resamples).
    ci = intervals.bootstrap_mean_ci([0.0, 0.0, 1.0])
    assert ci.mean == pytest.approx(1 / 3, abs=1e-15)
    assert ci.low == 0.0
    assert ci.high == 1.0
    # At 80% confidence the quantiles are 10% and 90%: P(0) = 0.296 > 0.10 -> low 0; P(<= 1/3) = 20/27 = 0.741
    # < 0.90 <= P(<= 2/3) = 0.963 -> high 2/3.
    ci80 = intervals.bootstrap_mean_ci([0.0, 0.0, 1.0], confidence=0.80)
    assert ci80.low == 0.0
    assert ci80.high == pytest.approx(2 / 3, abs=1e-12)


def test_interval_of_larger_sample_is_close_to_normal_theory():
    # For n = 200 draws the percentile bootstrap of the mean ~ mean +- 1.96 * sd / sqrt(n) (sd with ddof=0).
    x = np.random.default_rng(1).normal(3.0, 2.0, size=200)
    ci = intervals.bootstrap_mean_ci(x)
    half = 1.959964 * x.std() / math.sqrt(x.size)
    assert ci.low == pytest.approx(x.mean() - half, abs=0.06 * half)
    assert ci.high == pytest.approx(x.mean() + half, abs=0.06 * half)


def test_deterministic_given_seed_and_seed_matters():
    x = [0.1, 0.5, 0.2, 0.9, 0.4]
    assert intervals.bootstrap_mean_ci(x, seed=3) == intervals.bootstrap_mean_ci(x, seed=3)
    assert intervals.bootstrap_mean_ci(x, seed=3) != intervals.bootstrap_mean_ci(x, seed=4)


def test_small_samples_have_no_interval():
    one = intervals.bootstrap_mean_ci([0.7])
    assert one.mean == 0.7 and one.n == 1 and math.isnan(one.low) and math.isnan(one.high)
    assert one.format(100) == "70.0 (n=1)"
    empty = intervals.bootstrap_mean_ci([])
    assert empty.n == 0 and math.isnan(empty.mean)
    assert empty.format() == "—"


def test_rejects_nan_and_bad_arguments():
    with pytest.raises(ValueError, match="NaN"):
        intervals.bootstrap_mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        intervals.bootstrap_mean_ci([1.0, 2.0], confidence=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        intervals.bootstrap_mean_ci([1.0, 2.0], n_resamples=0)


def test_paired_difference_pairs_by_seed():
    # b = a + 0.1 on the shared seeds 0, 1, 2 -> every difference is exactly -0.1: zero-width interval, although
    # the values themselves spread widely across seeds. Seed 3 (only in a) is ignored.
    a = {0: 0.2, 1: 0.9, 2: 0.5, 3: 0.0}
    b = {2: 0.6, 0: 0.3, 1: 1.0}
    d = intervals.paired_difference_ci(a, b)
    assert d.seeds == (0, 1, 2)
    assert d.n == 3
    assert d.mean == pytest.approx(-0.1, abs=1e-12)
    assert d.low == pytest.approx(-0.1, abs=1e-12)
    assert d.high == pytest.approx(-0.1, abs=1e-12)


def test_paired_difference_known_small_sample():
    # Differences [0, 0, 3] (seeds 0..2): means k with k ~ Binomial(3, 1/3) -> interval [0, 3] as above.
    d = intervals.paired_difference_ci({0: 1.0, 1: 2.0, 2: 6.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    assert d.mean == pytest.approx(1.0)
    assert (d.low, d.high) == (0.0, 3.0)
    none = intervals.paired_difference_ci({0: 1.0}, {1: 1.0})
    assert none.n == 0 and none.seeds == ()


def test_wilson_interval_known_values():
    # 5/10 at 95%: center 0.5, half = z sqrt(0.025 + z^2/400) / (1 + z^2/10) with z = 1.959964 -> 0.26338.
    low, high = intervals.wilson_interval(5, 10)
    assert low == pytest.approx(0.236593, abs=1e-6)
    assert high == pytest.approx(0.763407, abs=1e-6)
    # 0/60 (an AIME run that solves nothing): low 0, high = z^2 / (n + z^2), z^2 = 3.841458821.
    low, high = intervals.wilson_interval(0, 60)
    assert low == 0.0
    assert high == pytest.approx(3.841458821 / 63.841458821, abs=1e-10)
    assert all(math.isnan(v) for v in intervals.wilson_interval(0, 0))
    with pytest.raises(ValueError, match="successes"):
        intervals.wilson_interval(3, 2)


def test_effective_problems_hand_values_and_clamps():
    # One sample per problem: exactly m (the binomial Wilson interval).
    assert intervals.effective_problems([1.0, 0.0, 0.0, 1.0, 1.0], 5) == 5
    # Every outcome agrees: m, whatever the number of samples (never 0/0, never all samples).
    assert intervals.effective_problems([0.0] * 20, 80) == 20
    assert intervals.effective_problems([1.0] * 20, 80) == 20
    # 20 problems each 2 of 4 right: with the pseudo-problems the variance is 2 (1/4) / 22, so
    # n = 20 (1/4) 22 / (1/2) = 220, clamped to the 80 samples (the samples then behave as independent).
    assert intervals.effective_problems([0.5] * 20, 80) == 80
    # fractions 1, 1/2, 0, 1 (2 samples each): variance 7.25/36 with the pseudo-problems -> 33.75/7.25.
    assert intervals.effective_problems([1.0, 0.5, 0.0, 1.0], 8) == pytest.approx(33.75 / 7.25, abs=1e-12)
    assert intervals.effective_problems([], 0) == 0.0
    with pytest.raises(ValueError, match="at least one sample"):
        intervals.effective_problems([0.5, 0.5], 1)


def test_wilson_interval_takes_fractional_counts():
    # 2.5 of 5 is the same proportion as 5 of 10 at half the n: the interval is that of p = 0.5, n = 5.
    z2 = 3.841458821
    low, high = intervals.wilson_interval(2.5, 5.0)
    half = math.sqrt(z2) * math.sqrt(0.25 / 5 + z2 / 100) / (1 + z2 / 5)
    assert (low, high) == (pytest.approx(0.5 - half, abs=1e-9), pytest.approx(0.5 + half, abs=1e-9))
    assert intervals.wilson_interval(0.0, 7.5)[0] == 0.0 and intervals.wilson_interval(7.5, 7.5)[1] == 1.0
