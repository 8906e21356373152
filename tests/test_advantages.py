"""Group advantages against a plain Python loop, hand values, and the error cases."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softgate.advantages import ESTIMATORS, group_advantages, zero_variance_groups


def _reference(rewards: list[float], G: int, estimator: str, eps: float) -> list[float]:
    """Readable per-group loop (the definitions in the module docstring, written out)."""
    out: list[float] = []
    for start in range(0, len(rewards), G):
        group = rewards[start:start + G]
        mean = sum(group) / G
        for i, r in enumerate(group):
            if estimator == "std":
                std = math.sqrt(sum((x - mean) ** 2 for x in group) / (G - 1))
                out.append((r - mean) / (std + eps))
            elif estimator == "mean":
                out.append(r - mean)
            else:  # rloo: baseline = mean of the *other* completions
                others = [x for j, x in enumerate(group) if j != i]
                out.append(r - sum(others) / (G - 1))
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(2, 6),
    st.sampled_from(ESTIMATORS),
    st.data(),
)
def test_vectorized_matches_loop(num_groups: int, G: int, estimator: str, data: st.DataObject) -> None:
    rewards = data.draw(st.lists(st.floats(-10, 10, allow_nan=False), min_size=num_groups * G,
                                 max_size=num_groups * G))
    got = group_advantages(torch.tensor(rewards, dtype=torch.float64), G, estimator, eps=1e-6)  # type: ignore[arg-type]
    want = torch.tensor(_reference(rewards, G, estimator, 1e-6), dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_hand_values() -> None:
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    # Group 0: mean 0.5, unbiased std sqrt(1/3); group 1: all equal -> 0 for every estimator.
    s = math.sqrt(1 / 3)
    torch.testing.assert_close(
        group_advantages(r, 4, "std", eps=0.0)[:4], torch.tensor([0.5, -0.5, -0.5, 0.5], dtype=torch.float64) / s
    )
    torch.testing.assert_close(group_advantages(r, 4, "mean")[:4],
                               torch.tensor([0.5, -0.5, -0.5, 0.5], dtype=torch.float64))
    # RLOO for the first reward: 1 - (0 + 0 + 1) / 3 = 2/3.
    assert group_advantages(r, 4, "rloo")[0].item() == pytest.approx(2 / 3, abs=1e-15)
    for est in ESTIMATORS:
        assert (group_advantages(r, 4, est)[4:] == 0).all()  # type: ignore[arg-type]


def test_integer_rewards_become_float_and_groups_are_independent() -> None:
    adv = group_advantages(torch.tensor([1, 0, 5, 5]), 2, "mean")
    assert adv.is_floating_point()
    assert adv.tolist() == [0.5, -0.5, 0.0, 0.0]


def test_errors() -> None:
    with pytest.raises(ValueError, match="B=5 is not divisible by group_size=2"):
        group_advantages(torch.zeros(5), 2)
    for est in ("std", "rloo"):
        with pytest.raises(ValueError, match="group_size >= 2"):
            group_advantages(torch.zeros(4), 1, est)  # type: ignore[arg-type]
    assert (group_advantages(torch.tensor([1.0, 2.0]), 1, "mean") == 0).all()  # G = 1 is fine for mean
    with pytest.raises(ValueError, match="unknown advantage estimator 'grpo'.*std, mean, rloo"):
        group_advantages(torch.zeros(4), 2, "grpo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 2), 2)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(4), 0, "mean")


def test_zero_variance_groups() -> None:
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.5, 0.0, 0.0, 0.0])
    assert zero_variance_groups(r, 3).tolist() == [True] * 3 + [False] * 3 + [True] * 3
    with pytest.raises(ValueError, match="not divisible"):
        zero_variance_groups(r, 2)
