"""Small-sample statistics for comparing runs across seeds.

The paper reports one seed per configuration; softgate's studies use several and report intervals. Everything
here is numpy only and deterministic given ``seed``:

- ``bootstrap_mean_ci``: mean of a handful of per-seed values with a percentile bootstrap interval.
- ``paired_difference_ci``: mean of ``a[seed] - b[seed]`` over the seeds both variants have, with a percentile
  bootstrap interval of that mean (pairing removes the between-seed variance the two variants share).
- ``wilson_interval``: binomial interval for an accuracy measured on ``n`` problems.
- ``effective_problems``: how many independent problems ``k`` samples per problem are worth, the ``n`` that
  ``softgate.passk.pass_at_1`` gives ``wilson_interval`` (docs/eval.md: the interval rule).

With fewer than two values a bootstrap interval says nothing (every resample is the same value), so
``low``/``high`` are NaN there rather than a misleading zero-width interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Hashable

import numpy as np

DEFAULT_RESAMPLES = 10_000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class MeanCI:
    """A mean with a two-sided confidence interval.

    ``low``/``high`` are NaN when ``n < 2`` (no interval can be estimated from one value).
    """

    mean: float
    low: float
    high: float
    n: int

    def format(self, scale: float = 1.0, digits: int = 1) -> str:
        """``"mean [low, high]"`` with every number multiplied by ``scale``; ``"—"`` for an empty sample."""
        if self.n == 0 or math.isnan(self.mean):
            return "—"
        m = f"{self.mean * scale:.{digits}f}"
        if math.isnan(self.low):
            return f"{m} (n={self.n})"
        return f"{m} [{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]"


@dataclass(frozen=True)
class PairedDiffCI(MeanCI):
    """Mean of paired differences ``a - b`` with its interval; ``seeds`` are the keys that were paired."""

    seeds: tuple[Hashable, ...] = ()


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def bootstrap_mean_ci(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> MeanCI:
    """Mean of ``values`` with a percentile bootstrap confidence interval.

    Resamples ``values`` with replacement ``n_resamples`` times, takes each resample's mean, and returns the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those means (numpy's default linear
    quantile). NaN values are an error: a missing seed should be left out by the caller, not averaged in.

    Shapes:
        values: (n,) — one value per seed.
        resampled means: (n_resamples,).
    """
    _check_confidence(confidence)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    x = np.asarray(values, dtype=np.float64).reshape(-1)  # (n,)
    if np.isnan(x).any():
        raise ValueError("bootstrap_mean_ci got NaN values; drop missing entries before calling it")
    n = int(x.size)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return MeanCI(mean, math.nan, math.nan, 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))  # (n_resamples, n)
    means = x[idx].mean(axis=1)  # (n_resamples,)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return MeanCI(mean, float(low), float(high), n)


def paired_difference_ci(
    a: Mapping[Hashable, float],
    b: Mapping[Hashable, float],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> PairedDiffCI:
    """Mean of ``a[s] - b[s]`` over the keys ``s`` (seeds) present in both, with a bootstrap interval.

    Keys present in only one mapping are ignored (a seed that failed in one variant cannot be paired); the keys
    used are returned in ``seeds`` so the caller can say how many pairs there were.

    Shapes:
        a, b: {seed: value}; differences: (n_pairs,).
    """
    common = sorted(set(a) & set(b), key=lambda s: (str(type(s)), s))
    diffs = [float(a[s]) - float(b[s]) for s in common]
    ci = bootstrap_mean_ci(diffs, confidence=confidence, n_resamples=n_resamples, seed=seed)
    return PairedDiffCI(ci.mean, ci.low, ci.high, ci.n, seeds=tuple(common))


def wilson_interval(successes: float, n: float, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n``.

    Better than the normal approximation at the extremes (0 of 60 AIME problems gives a non-degenerate upper
    bound: ``z^2 / (n + z^2)``). ``successes`` and ``n`` may be fractional (a mean over problems times an effective
    number of problems, see :func:`effective_problems`). Returns ``(nan, nan)`` when ``n == 0``.
    """
    _check_confidence(confidence)
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At p = 0 (or 1) the bound is exactly 0 (or 1); say so rather than leave float rounding of center - half.
    return (0.0 if p == 0 else max(0.0, center - half), 1.0 if p == 1 else min(1.0, center + half))


def effective_problems(fractions: Sequence[float] | np.ndarray, samples: int) -> float:
    """The number of independent problems that ``m`` problems with several samples each are worth, for
    :func:`wilson_interval` on the mean of the per-problem ``fractions`` correct (``samples`` in total).

    ``n_eff = m * p (1 - p) / v``, with ``p`` the mean fraction and ``v`` the variance of the fractions (the design
    effect of cluster sampling: ``p (1 - p) / n_eff`` is the variance of the mean), clamped to ``[m, samples]``:
    never fewer problems than were drawn, never more than independent samples. ``v`` is computed with two pseudo-
    problems added, one that no sample solves and one that every sample solves, so that it is never zero and a
    few rare successes cannot pass for ``samples`` independent trials: when every outcome agrees (``v = 0``,
    ``p`` in {0, 1}) ``n_eff = m`` and the interval is the one-sample Wilson interval over ``m`` problems, and with
    one sample per problem ``n_eff = m`` exactly. Simulated coverage at 95%: 0.94-0.99 (docs/eval.md).

    Shapes:
        fractions: (m,) — per-problem fraction of correct samples; samples: total samples (>= m).
    """
    f = np.asarray(fractions, dtype=np.float64).reshape(-1)  # (m,)
    m = int(f.size)
    if m == 0:
        return 0.0
    if samples < m:
        raise ValueError(f"{samples} samples for {m} problems: every problem needs at least one sample")
    p = float(f.mean())
    v = float(np.concatenate([f, [0.0, 1.0]]).var())  # (m + 2,) values; > 0 always
    return float(min(samples, max(m, m * p * (1.0 - p) / v)))
