"""Aggregation modes: hand-computed values, all-masked rows, and exactness under micro-batching."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softgate.aggregate import AGG_MODES, aggregate, masked_mean, masked_sum, normalizer, token_weights

NAN = float("nan")

# Row 0: 2 valid tokens, row 1: all masked, row 2: 3 valid tokens. Masked cells hold garbage on purpose.
MASK = torch.tensor([[True, True, False], [False, False, False], [True, True, True]])
LOSS = torch.tensor([[1.0, 2.0, NAN], [9.0, float("inf"), NAN], [3.0, 3.0, 6.0]], dtype=torch.float64)


def test_masked_sum_and_mean_ignore_garbage_at_masked_positions() -> None:
    assert masked_sum(LOSS, MASK).item() == 15.0
    assert masked_mean(LOSS, MASK).item() == 3.0
    torch.testing.assert_close(masked_sum(LOSS, MASK, dim=1), torch.tensor([3.0, 0.0, 12.0], dtype=torch.float64))
    # All-masked row: mean 0 (not nan), so it adds nothing when summed.
    torch.testing.assert_close(masked_mean(LOSS, MASK, dim=1), torch.tensor([1.5, 0.0, 4.0], dtype=torch.float64))


def test_normalizer_values_by_hand() -> None:
    assert normalizer(MASK, "token-mean").item() == 5  # valid tokens
    assert normalizer(MASK, "seq-mean-token-mean").item() == 2  # the all-masked row is not counted
    assert normalizer(MASK, "seq-mean-token-sum-norm").item() == 2 * 3  # default norm_len = T = 3
    assert normalizer(MASK, "seq-mean-token-sum-norm", norm_len=512).item() == 2 * 512
    empty = torch.zeros(2, 4, dtype=torch.bool)
    for mode in AGG_MODES:
        assert normalizer(empty, mode).item() == 1.0  # floored: 0 / 1 = 0 instead of 0 / 0


def test_aggregate_values_by_hand() -> None:
    # token-mean: (1 + 2 + 3 + 3 + 6) / 5 = 3
    assert aggregate(LOSS, MASK, "token-mean").item() == pytest.approx(3.0, abs=1e-15)
    # seq-mean-token-mean: ((1 + 2) / 2 + (3 + 3 + 6) / 3) / 2 = (1.5 + 4) / 2 = 2.75
    assert aggregate(LOSS, MASK, "seq-mean-token-mean").item() == pytest.approx(2.75, abs=1e-15)
    # Dr. GRPO: 15 / (2 sequences * 3) = 2.5; with norm_len 10: 15 / 20 = 0.75
    assert aggregate(LOSS, MASK, "seq-mean-token-sum-norm").item() == pytest.approx(2.5, abs=1e-15)
    assert aggregate(LOSS, MASK, "seq-mean-token-sum-norm", norm_len=10).item() == pytest.approx(0.75, abs=1e-15)
    # An explicit normalizer replaces the batch's own.
    assert aggregate(LOSS, MASK, "token-mean", normalizer=10.0).item() == pytest.approx(1.5, abs=1e-15)


def test_gradient_is_the_token_weight_and_zero_at_masked_positions() -> None:
    loss = LOSS.clone().requires_grad_()
    for mode in AGG_MODES:
        (grad,) = torch.autograd.grad(aggregate(loss, MASK, mode), loss)
        assert torch.isfinite(grad).all()
        assert (grad[~MASK] == 0).all()
        torch.testing.assert_close(grad, token_weights(MASK, mode, dtype=torch.float64), rtol=0, atol=1e-15)
    w = token_weights(MASK, "seq-mean-token-mean", dtype=torch.float64)
    torch.testing.assert_close(w[0, :2], torch.full((2,), 1 / (2 * 2), dtype=torch.float64))
    torch.testing.assert_close(w[2], torch.full((3,), 1 / (2 * 3), dtype=torch.float64))


def test_empty_batch_gives_zero_loss_attached_to_the_graph() -> None:
    for shape in [(0, 5), (3, 0)]:
        loss = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        mask = torch.ones(shape, dtype=torch.bool)
        for mode in AGG_MODES:
            out = aggregate(loss, mask, mode)
            assert out.item() == 0.0
            out.backward()


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown aggregation mode 'seq-mean'.*token-mean"):
        aggregate(LOSS, MASK, "seq-mean")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bool"):
        aggregate(LOSS, MASK.float(), "token-mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="norm_len"):
        normalizer(MASK, "seq-mean-token-sum-norm", norm_len=0)
    with pytest.raises(ValueError, match="shape"):
        aggregate(LOSS, MASK[:, :2], "token-mean")
    with pytest.raises(ValueError, match="normalizer must be positive"):
        aggregate(LOSS, MASK, "token-mean", normalizer=0.0)


def test_naive_micro_batch_averaging_is_wrong_and_the_normalizer_fixes_it() -> None:
    # Two micro-batches with different token counts: the mean of per-micro-batch token-means is not the
    # whole-batch token mean. This is the accumulation bug the explicit normalizer exists to prevent.
    loss = torch.tensor([[1.0, 1.0, 1.0], [5.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    whole = aggregate(loss, mask, "token-mean")  # (3 + 5) / 4 = 2
    naive = (aggregate(loss[:1], mask[:1], "token-mean") + aggregate(loss[1:], mask[1:], "token-mean")) / 2
    assert whole.item() == pytest.approx(2.0, abs=1e-15)
    assert naive.item() == pytest.approx(3.0, abs=1e-15)
    z = normalizer(mask, "token-mean")
    fixed = aggregate(loss[:1], mask[:1], "token-mean", normalizer=z) + aggregate(
        loss[1:], mask[1:], "token-mean", normalizer=z
    )
    assert fixed.item() == pytest.approx(2.0, abs=1e-15)


@st.composite
def _batch_and_splits(draw: st.DrawFn) -> tuple[list[list[bool]], list[int], int]:
    B = draw(st.integers(1, 7))
    T = draw(st.integers(1, 6))
    mask = [[draw(st.booleans()) for _ in range(T)] for _ in range(B)]
    cuts = sorted(set(draw(st.lists(st.integers(1, B - 1), max_size=3)))) if B > 1 else []
    seed = draw(st.integers(0, 2**31 - 1))
    return mask, cuts, seed


@settings(max_examples=60, deadline=None)
@given(_batch_and_splits(), st.sampled_from(AGG_MODES), st.sampled_from([None, 17]))
def test_micro_batches_with_the_whole_batch_normalizer_equal_the_whole_batch(
    case: tuple[list[list[bool]], list[int], int], mode: str, norm_len: int | None
) -> None:
    mask_rows, cuts, seed = case
    mask = torch.tensor(mask_rows, dtype=torch.bool)
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(mask.shape, dtype=torch.float64, generator=gen)
    values[~mask] = NAN  # garbage at masked positions must not matter
    x = values.clone().requires_grad_()

    whole = aggregate(x, mask, mode, norm_len=norm_len)  # type: ignore[arg-type]
    (grad_whole,) = torch.autograd.grad(whole, x)

    z = normalizer(mask, mode, norm_len=norm_len)  # type: ignore[arg-type]
    bounds = [0, *cuts, mask.shape[0]]
    total = sum(
        aggregate(x[a:b], mask[a:b], mode, normalizer=z)  # type: ignore[arg-type]
        for a, b in zip(bounds[:-1], bounds[1:])
    )
    (grad_micro,) = torch.autograd.grad(total, x)
    assert math.isfinite(whole.item())
    torch.testing.assert_close(total, whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_micro, grad_whole, rtol=0, atol=1e-12)
    assert (grad_whole[~mask] == 0).all()
