"""EUR (Eq. 12), clip fractions, masked quantiles and the KL estimators, against hand values and references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softgate.diagnostics import (
    eur,
    group_ids,
    hard_clip_frac,
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
    masked_max,
    masked_min,
    masked_quantiles,
    soft_clip_frac,
)

NAN = float("nan")


def _eur_loop(df: torch.Tensor, mask: torch.Tensor, gids: list[int]) -> float:
    """Eq. 12 written as loops: per group, sum of f' over its valid tokens / number of its valid tokens."""
    per_group: list[float] = []
    for g in sorted(set(gids)):
        num, den = 0.0, 0
        for i, gi in enumerate(gids):
            if gi != g:
                continue
            for t in range(df.shape[1]):
                if mask[i, t]:
                    num += float(df[i, t])
                    den += 1
        if den:
            per_group.append(num / den)
    return sum(per_group) / len(per_group) if per_group else NAN


def test_eur_hand_value_is_token_weighted_within_group_and_plain_mean_across_groups() -> None:
    df = torch.tensor([[1.0, 0.0, 9.0], [0.5, NAN, NAN], [0.2, 0.2, 0.2], [7.0, 7.0, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, False, False], [True, True, True], [False, False, False]])
    # Group 0 = rows 0, 1: (1 + 0 + 0.5) / 3 valid tokens = 0.5.
    # Group 1 = rows 2, 3: row 3 has no valid token, so (0.2 * 3) / 3 = 0.2. EUR = (0.5 + 0.2) / 2 = 0.35.
    value = eur(df, mask, group_ids(4, 2))
    assert value.item() == pytest.approx(0.35, abs=1e-15)
    # Token weighting matters: rows of different lengths in one group.
    df2 = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    mask2 = torch.tensor([[True, True, True], [True, False, False]])
    assert eur(df2, mask2, torch.tensor([0, 0])).item() == pytest.approx(3 / 4, abs=1e-15)  # not 1/2


def test_eur_excludes_empty_groups_and_is_nan_when_nothing_is_valid() -> None:
    df = torch.ones(4, 2, dtype=torch.float64)
    mask = torch.tensor([[False, False], [False, False], [True, False], [True, True]])
    assert eur(df * 0.5, mask, group_ids(4, 2)).item() == pytest.approx(0.5, abs=1e-15)
    assert math.isnan(eur(df, torch.zeros(4, 2, dtype=torch.bool), group_ids(4, 2)).item())
    empty = eur(torch.ones(0, 3), torch.ones(0, 3, dtype=torch.bool), torch.zeros(0, dtype=torch.long))
    assert math.isnan(empty.item())


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_eur_matches_loop_with_arbitrary_labels(B: int, T: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    df = torch.rand(B, T, dtype=torch.float64, generator=gen)
    mask = torch.rand(B, T, generator=gen) > 0.4
    labels = torch.randint(0, 3, (B,), generator=gen) * 7 - 5  # non-contiguous, negative labels
    want = _eur_loop(df, mask, labels.tolist())
    got = eur(df, mask, labels).item()
    assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want, abs=1e-12)


def test_eur_of_a_hard_gate_is_one_minus_clip_fraction_for_a_single_group() -> None:
    df = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    one_group = torch.zeros(2, dtype=torch.long)
    assert eur(df, mask, one_group).item() == pytest.approx(1 - hard_clip_frac(df, mask).item(), abs=1e-15)


def test_clip_fractions() -> None:
    df = torch.tensor([[0.0, 0.49, 0.5, 1.0], [NAN, 0.0, 1.0, 0.2]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True], [False, True, False, False]])
    assert soft_clip_frac(df, mask).item() == pytest.approx(3 / 5)  # 0, 0.49, 0 (< 0.5, strictly)
    assert hard_clip_frac(df, mask).item() == pytest.approx(2 / 5)
    assert soft_clip_frac(df, mask, threshold=0.1).item() == pytest.approx(2 / 5)
    assert math.isnan(soft_clip_frac(df, torch.zeros_like(mask)).item())


def test_group_ids() -> None:
    assert group_ids(6, 3).tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="B=5 is not divisible by group_size=2"):
        group_ids(5, 2)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_masked_quantiles_match_torch_quantile_on_the_valid_values(n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, dtype=torch.float64, generator=gen) * 5
    mask = torch.rand(n, 3, generator=gen) > 0.5
    qs = (0.0, 0.05, 0.5, 0.95, 1.0)
    got = masked_quantiles(x, mask, qs)
    if not mask.any():
        assert torch.isnan(got).all()
        return
    want = torch.quantile(x[mask], torch.tensor(qs, dtype=torch.float64))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert masked_min(x, mask).item() == x[mask].min().item()
    assert masked_max(x, mask).item() == x[mask].max().item()


def test_masked_stats_of_nothing_are_nan() -> None:
    x = torch.ones(0, 4)
    m = torch.ones(0, 4, dtype=torch.bool)
    assert torch.isnan(masked_quantiles(x, m)).all()
    assert math.isnan(masked_min(x, m).item()) and math.isnan(masked_max(x, m).item())
    with pytest.raises(ValueError, match="quantiles"):
        masked_quantiles(torch.ones(3), torch.ones(3, dtype=torch.bool), (1.5,))


def test_kl_estimators_closed_forms() -> None:
    lr = torch.tensor([-3.0, -0.1, 0.0, 0.1, 2.0], dtype=torch.float64)
    torch.testing.assert_close(kl_k1(lr), -lr)
    torch.testing.assert_close(kl_k2(lr), lr**2 / 2)
    torch.testing.assert_close(kl_k3(lr), torch.exp(lr) - 1 - lr, rtol=1e-14, atol=1e-15)
    assert (kl_k3(lr) >= 0).all() and kl_k3(lr)[2].item() == 0.0
    for name, fn in (("k1", kl_k1), ("k2", kl_k2), ("k3", kl_k3)):
        torch.testing.assert_close(kl_estimate(lr, name), fn(lr))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_estimate(lr, "k4")  # type: ignore[arg-type]
    # expm1 keeps k3 accurate for tiny log-ratios where exp(x) - 1 - x cancels: k3 ~ x^2 / 2.
    tiny = torch.tensor([1e-6], dtype=torch.float32)
    assert kl_k3(tiny).item() == pytest.approx(0.5e-12, rel=1e-3)


def test_k1_and_k3_are_unbiased_k2_is_second_order() -> None:
    # Exact expectations over a categorical p (samples x ~ p): E_p[k(log q/p)] vs KL(p || q).
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(50, dtype=torch.float64, generator=gen), 0)
    q = torch.softmax(torch.log(p) + 0.3 * torch.randn(50, dtype=torch.float64, generator=gen), 0)
    lr = torch.log(q) - torch.log(p)
    kl = (p * (torch.log(p) - torch.log(q))).sum()
    assert (p * kl_k1(lr)).sum().item() == pytest.approx(kl.item(), rel=1e-12)
    assert (p * kl_k3(lr)).sum().item() == pytest.approx(kl.item(), rel=1e-12)
    k2 = (p * kl_k2(lr)).sum().item()
    assert k2 != pytest.approx(kl.item(), rel=1e-6)  # biased...
    assert k2 == pytest.approx(kl.item(), rel=0.2)  # ...but close for nearby distributions
