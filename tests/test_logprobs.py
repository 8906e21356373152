"""Chunked token log-probs / entropies against the naive log_softmax forms: values, gradients, memory contract."""

from __future__ import annotations

import pytest
import torch

from softgate.logprobs import (
    hidden_logprobs,
    hidden_logprobs_and_entropy,
    logprobs_and_entropy,
    token_entropy,
    token_logprobs,
)


def _naive(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The readable reference: a full [B, T, V] log-softmax."""
    logsm = torch.log_softmax(logits.double() / temperature, dim=-1)
    logp = logsm.gather(-1, ids[..., None]).squeeze(-1)
    entropy = -(logsm.exp() * logsm).sum(-1)
    return logp, entropy


def _data(B: int, T: int, V: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=gen, dtype=torch.float64) * 3).to(dtype)
    ids = torch.randint(0, V, (B, T), generator=gen)
    return logits, ids


# (dtype, value tolerance, gradient tolerance): float32 to 1e-5 as required, float64 to rounding.
TOLS = [(torch.float32, 1e-5, 1e-6), (torch.float64, 1e-12, 1e-14)]


@pytest.mark.parametrize("dtype, vtol, gtol", TOLS)
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, None])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_values_and_gradients_match_naive(
    dtype: torch.dtype, vtol: float, gtol: float, chunk_size: int | None, temperature: float
) -> None:
    logits, ids = _data(3, 5, 37, dtype)
    g_out = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = logits.clone().requires_grad_()
    got = token_logprobs(x, ids, chunk_size=chunk_size, temperature=temperature)
    (g_got,) = torch.autograd.grad((got.double() * g_out).sum(), x)

    ref_x = logits.double().requires_grad_()
    want, _ = _naive(ref_x, ids, temperature)
    (g_want,) = torch.autograd.grad((want * g_out).sum(), ref_x)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert g_got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=0, atol=vtol)
    torch.testing.assert_close(g_got.double(), g_want, rtol=0, atol=gtol)


@pytest.mark.parametrize("dtype, vtol, gtol", TOLS)
@pytest.mark.parametrize("chunk_size", [2, None])
def test_entropy_and_combined_match_naive_with_both_gradients(
    dtype: torch.dtype, vtol: float, gtol: float, chunk_size: int | None
) -> None:
    logits, ids = _data(2, 6, 29, dtype, seed=2)
    gen = torch.Generator().manual_seed(3)
    g_lp = torch.randn(2, 6, dtype=torch.float64, generator=gen)
    g_ent = torch.randn(2, 6, dtype=torch.float64, generator=gen)

    ref_x = logits.double().requires_grad_()
    want_lp, want_ent = _naive(ref_x, ids, 1.3)
    (g_want,) = torch.autograd.grad((want_lp * g_lp + want_ent * g_ent).sum(), ref_x)
    ref_x2 = logits.double().requires_grad_()
    (g_want_ent,) = torch.autograd.grad((_naive(ref_x2, ids, 1.3)[1] * g_ent).sum(), ref_x2)

    x = logits.clone().requires_grad_()
    lp, ent = logprobs_and_entropy(x, ids, chunk_size=chunk_size, temperature=1.3)
    (g_got,) = torch.autograd.grad((lp.double() * g_lp + ent.double() * g_ent).sum(), x)
    torch.testing.assert_close(lp.double(), want_lp, rtol=0, atol=vtol)
    torch.testing.assert_close(ent.double(), want_ent, rtol=0, atol=vtol)
    torch.testing.assert_close(g_got.double(), g_want, rtol=0, atol=gtol)

    x = logits.clone().requires_grad_()
    ent_only = token_entropy(x, chunk_size=chunk_size, temperature=1.3)
    (g_ent_only,) = torch.autograd.grad((ent_only.double() * g_ent).sum(), x)
    torch.testing.assert_close(ent_only.double(), want_ent, rtol=0, atol=vtol)
    torch.testing.assert_close(g_ent_only.double(), g_want_ent, rtol=0, atol=gtol)


def test_bf16_logits_give_float32_logprobs_and_bf16_gradients() -> None:
    logits, ids = _data(2, 4, 50, torch.bfloat16, seed=4)
    x = logits.clone().requires_grad_()
    lp = token_logprobs(x, ids, chunk_size=3)
    lp.sum().backward()
    assert lp.dtype == torch.float32 and x.grad is not None and x.grad.dtype == torch.bfloat16
    want, _ = _naive(logits.float(), ids)  # the same bf16 values, upcast: only float32 rounding differs
    torch.testing.assert_close(lp.double(), want, rtol=0, atol=1e-5)


def test_non_contiguous_logits_slice() -> None:
    # logits[:, :-1] (the usual shift) cannot be viewed as [B*T, V]: the per-row fallback must still be exact.
    logits, ids = _data(3, 6, 23, torch.float64, seed=5)
    sliced = logits.clone().requires_grad_()
    view = sliced[:, :-1]
    assert not view.is_contiguous()
    lp = token_logprobs(view, ids[:, 1:], chunk_size=4)
    lp.sum().backward()
    ref = logits.clone().requires_grad_()
    want, _ = _naive(ref[:, :-1], ids[:, 1:])
    want.sum().backward()
    torch.testing.assert_close(lp, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(sliced.grad, ref.grad, rtol=0, atol=1e-14)


def test_masked_vocab_entries_at_minus_inf_keep_entropy_finite() -> None:
    logits, ids = _data(1, 3, 10, torch.float64, seed=6)
    logits[..., 7:] = float("-inf")  # e.g. padded vocabulary rows
    ids = ids % 7
    x = logits.clone().requires_grad_()
    lp, ent = logprobs_and_entropy(x, ids, chunk_size=2)
    (lp.sum() + ent.sum()).backward()
    want_lp, _ = _naive(logits[..., :7], ids)
    p = torch.softmax(logits[..., :7], -1)
    torch.testing.assert_close(lp, want_lp, rtol=0, atol=1e-12)
    torch.testing.assert_close(ent, -(p * p.log()).sum(-1), rtol=0, atol=1e-12)
    assert torch.isfinite(x.grad).all() and (x.grad[..., 7:] == 0).all()


def test_backward_saves_no_full_size_copy() -> None:
    # Memory contract: besides the logits themselves (saved by reference), only [B, T] vectors are saved.
    logits, ids = _data(4, 8, 101, torch.bfloat16, seed=7)
    x = logits.clone().requires_grad_()
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        token_logprobs(x, ids, chunk_size=5)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()
    assert sum(t.numel() for t in saved if t is not big[0]) <= 3 * 4 * 8

    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.log_softmax(x.float(), -1).gather(-1, ids[..., None])
    assert sum(t.numel() for t in saved) >= x.numel()  # the naive form does keep a full copy


@pytest.mark.parametrize("dtype, vtol, gtol", TOLS)
@pytest.mark.parametrize("uses", ["logp", "entropy", "both"])
@pytest.mark.parametrize("tiles", [(3, None), (3, 7), (None, 8), (64, 31)], ids=str)
def test_hidden_logprobs_match_logits_path(dtype: torch.dtype, vtol: float, gtol: float, uses: str,
                                           tiles: tuple[int | None, int | None]) -> None:
    """Values and both gradients against the float64 naive form, for tiles that split rows and vocabulary unevenly
    (7 columns of a 31-entry vocabulary: the online log-sum-exp over 5 tiles), and for objectives that use the
    log-probs, the entropy or both (an unused output gets no backward work)."""
    gen = torch.Generator().manual_seed(8)
    B, T, H, V = 2, 5, 6, 31
    hidden = torch.randn(B, T, H, dtype=dtype, generator=gen)
    weight = torch.randn(V, H, dtype=dtype, generator=gen)
    ids = torch.randint(0, V, (B, T), generator=gen)
    g_lp = torch.randn(B, T, dtype=torch.float64, generator=gen) * (uses != "entropy")
    g_ent = torch.randn(B, T, dtype=torch.float64, generator=gen) * (uses != "logp")

    h_ref, w_ref = hidden.double().requires_grad_(), weight.double().requires_grad_()
    want_lp, want_ent = _naive(h_ref @ w_ref.T, ids, 0.9)
    gh_want, gw_want = torch.autograd.grad((want_lp * g_lp).sum() + (want_ent * g_ent).sum(), (h_ref, w_ref))

    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    rows, cols = tiles
    if uses == "logp":
        lp = hidden_logprobs(h, w, ids, chunk_size=rows, vocab_chunk_size=cols, temperature=0.9)
        objective = (lp.double() * g_lp).sum()
    else:
        lp, ent = hidden_logprobs_and_entropy(h, w, ids, chunk_size=rows, vocab_chunk_size=cols, temperature=0.9)
        torch.testing.assert_close(ent.double(), want_ent.detach(), rtol=0, atol=vtol * 10)
        objective = (ent.double() * g_ent).sum() + ((lp.double() * g_lp).sum() if uses == "both" else 0.0)
    gh, gw = torch.autograd.grad(objective, (h, w))
    # Logits of size ~|h||w| ~ 10 carry float32 rounding of ~1e-6: scale the tolerance accordingly.
    torch.testing.assert_close(lp.double(), want_lp.detach(), rtol=0, atol=vtol * 10)
    torch.testing.assert_close(gh.double(), gh_want, rtol=0, atol=gtol * 100)
    torch.testing.assert_close(gw.double(), gw_want, rtol=0, atol=gtol * 100)


def test_hidden_entropy_of_a_near_certain_token_keeps_its_relative_precision() -> None:
    """H = log S - A / S (not lse - E_p[x]): a float32 entropy of ~3e-6 behind logits of size 30 stays accurate to
    a few percent, where the difference of two 30-sized numbers (the logits path) leaves rounding noise."""
    hidden = torch.tensor([[[1.0, 0.0]]])
    weight = torch.tensor([[30.0, 0.0], [14.0, 0.0], [13.0, 0.0], [0.0, 1.0]])
    ids = torch.zeros(1, 1, dtype=torch.long)
    _, ent = hidden_logprobs_and_entropy(hidden, weight, ids, vocab_chunk_size=2)
    _, want = _naive(hidden.double() @ weight.double().T, ids)
    assert 1e-6 < want.item() < 1e-5
    torch.testing.assert_close(ent.double(), want, rtol=0.05, atol=0)
    assert abs(token_entropy(hidden @ weight.T).item() - want.item()) > 0.5 * want.item()


def test_errors() -> None:
    logits, ids = _data(1, 2, 5, torch.float32)
    with pytest.raises(ValueError, match="3-D"):
        token_logprobs(logits[0], ids[0])
    with pytest.raises(ValueError, match="ids must have shape"):
        token_logprobs(logits, ids[:, :1])
    with pytest.raises(TypeError, match="int64"):
        token_logprobs(logits, ids.int())
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs(logits, ids, chunk_size=0)
    with pytest.raises(ValueError, match="temperature"):
        token_entropy(logits, temperature=0.0)
    with pytest.raises(ValueError, match="lm_head_weight"):
        hidden_logprobs(torch.zeros(1, 2, 3), torch.zeros(5, 4), ids)
    with pytest.raises(ValueError, match="vocab_chunk_size must be a positive number of vocabulary entries"):
        hidden_logprobs(torch.zeros(1, 2, 4), torch.zeros(5, 4), ids, vocab_chunk_size=0)


def test_empty_batch() -> None:
    x = torch.zeros(0, 3, 7, requires_grad=True)
    lp = token_logprobs(x, torch.zeros(0, 3, dtype=torch.long))
    assert lp.shape == (0, 3)
    lp.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
