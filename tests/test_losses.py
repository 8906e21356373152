"""Policy losses: gradients against their closed forms (float64), levels, safety, micro-batching, stats, CISPO."""

from __future__ import annotations

import math

import pytest
import torch

from softgate.aggregate import AGG_MODES, normalizer, token_weights
from softgate.diagnostics import LossTerms, eur, group_ids, loss_stats
from softgate.gates import make
from softgate.losses import LEVELS, LossOptions, cispo_loss, policy_loss, policy_loss_terms, safe_log_ratio

F64 = torch.float64
NAN, INF = float("nan"), float("inf")
GATE_NAMES = ["sigmoid", "erf", "arctan", "softsign", "clip", "identity", "student"]
SMOOTH = ["sigmoid", "erf", "arctan", "softsign", "student"]


def _gate(name: str):  # type: ignore[no-untyped-def]
    """Each family with non-default, asymmetric parameters, so the sign-of-A temperature choice matters."""
    if name == "clip":
        return make("clip", eps_low=0.2, eps_high=0.28)
    if name == "identity":
        return make("identity")
    return make(name, tau_pos=2.0, tau_neg=3.0)


def _batch(B: int = 6, T: int = 7, seed: int = 0, spread: float = 0.6):  # type: ignore[no-untyped-def]
    """float64 batch: moderate log-ratios, ragged mask with one all-masked row, mixed-sign advantages."""
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, dtype=F64, generator=gen) * 4 - 0.01
    old = logp + spread * torch.randn(B, T, dtype=F64, generator=gen)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    mask[2] = False  # an all-masked row
    adv = torch.randn(B, dtype=F64, generator=gen)
    adv[0] = 0.0  # A == 0 exactly: tau_neg branch, zero gradient
    return logp, old, adv, mask


def _grad(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, x)
    return g


# ---------------------------------------------------------------------------------------------------------------
# Gradient identity: d loss / d logp = -f'(r) * r * A * w  (paper, "Objective")
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("name", GATE_NAMES)
def test_token_level_gradient_is_minus_df_times_r_times_a_times_weight(name: str, agg: str) -> None:
    gate = _gate(name)
    logp, old, adv, mask = _batch()
    x = logp.clone().requires_grad_()
    loss, stats = policy_loss(x, old, adv, mask, gate, agg=agg)  # type: ignore[arg-type]
    r = torch.exp(logp - old)
    A = adv[:, None].expand_as(r)
    w = token_weights(mask, agg, dtype=F64)  # type: ignore[arg-type]
    want_grad = torch.where(mask, -gate.df(r, A) * r * A * w, 0.0)
    want_loss = -(torch.where(mask, gate.f(r, A) * A, 0.0) * w).sum()
    assert loss.dtype == F64
    torch.testing.assert_close(_grad(loss, x), want_grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(loss.detach(), want_loss, rtol=1e-12, atol=1e-14)
    assert stats["loss"].item() == loss.item() and stats["pg_loss"].item() == loss.item()


def test_sigmoid_gradient_matches_the_papers_sech2_formula_written_out() -> None:
    # Independent of softgate.gates.df: f'(r) = sech^2(tau (r - 1) / 2), tau = 2 for A > 0 and 3 otherwise.
    logp, old, adv, mask = _batch(seed=3)
    x = logp.clone().requires_grad_()
    loss, _ = policy_loss(x, old, adv, mask, _gate("sigmoid"), agg="token-mean")
    r = torch.exp(logp - old)
    tau = torch.where(adv > 0, 2.0, 3.0)[:, None]
    sech2 = 1.0 / torch.cosh(tau * (r - 1) / 2) ** 2
    n = mask.sum()
    want = torch.where(mask, -sech2 * r * adv[:, None] / n, 0.0)
    torch.testing.assert_close(_grad(loss, x), want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", GATE_NAMES)
def test_on_policy_every_gate_is_the_plain_policy_gradient(name: str) -> None:
    # r = 1 exactly and f'(1) = 1: the gradient is -A * w whatever the gate (paper, "SAPO facts").
    logp, _, adv, mask = _batch(seed=4)
    x = logp.clone().requires_grad_()
    loss, stats = policy_loss(x, logp, adv, mask, _gate(name))
    w = token_weights(mask, "seq-mean-token-mean", dtype=F64)
    torch.testing.assert_close(_grad(loss, x), -adv[:, None] * w, rtol=1e-12, atol=1e-15)
    assert stats["eur"].item() == pytest.approx(1.0, abs=1e-12)
    assert stats["ratio_min"].item() == stats["ratio_max"].item() == 1.0
    assert stats["approx_kl"].item() == 0.0


def test_per_token_advantages() -> None:
    logp, old, _, mask = _batch(seed=5)
    adv_BT = torch.randn(logp.shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    adv_BT[~mask] = NAN  # garbage where masked
    gate = _gate("erf")
    x = logp.clone().requires_grad_()
    loss, _ = policy_loss(x, old, adv_BT, mask, gate, agg="token-mean")
    r = torch.exp(logp - old)
    A = torch.where(mask, adv_BT, 0.0)
    want = torch.where(mask, -gate.df(r, A) * r * A / mask.sum(), 0.0)
    torch.testing.assert_close(_grad(loss, x), want, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------------------------------------------
# Sequence levels (GSPO, GSPO-token)
# ---------------------------------------------------------------------------------------------------------------


def _seq_ratio(logp: torch.Tensor, old: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    lengths = mask.sum(1).clamp_min(1)
    return torch.exp(torch.where(mask, logp - old, 0.0).sum(1) / lengths)  # [B]


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("name", ["sigmoid", "arctan", "clip"])
def test_sequence_level_closed_form(name: str, agg: str) -> None:
    # J = sum_i W_i f(s_i) A_i with W_i = sum_t w_{i,t}; d s_i / d logp_{i,t} = s_i / |o_i|.
    gate = _gate(name)
    logp, old, adv, mask = _batch(seed=6, spread=0.3)
    x = logp.clone().requires_grad_()
    loss, stats = policy_loss(x, old, adv, mask, gate, level="sequence", agg=agg)  # type: ignore[arg-type]
    s = _seq_ratio(logp, old, mask)
    w = token_weights(mask, agg, dtype=F64)  # type: ignore[arg-type]
    W = w.sum(1)
    lengths = mask.sum(1).clamp_min(1)
    want_loss = -(W * gate.f(s, adv) * adv).sum()
    want_grad = torch.where(mask, (-gate.df(s, adv) * s * adv * W / lengths)[:, None], 0.0)
    torch.testing.assert_close(loss.detach(), want_loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(_grad(loss, x), want_grad, rtol=1e-10, atol=1e-14)
    valid_rows = mask.any(1)
    assert stats["ratio_min"].item() == pytest.approx(s[valid_rows].min().item(), rel=1e-14)


@pytest.mark.parametrize("agg", AGG_MODES)
def test_sequence_token_level_closed_form(agg: str) -> None:
    # Value s_i at every token, gradient of token t = -f'(s_i) * s_i * A_{i,t} * w_{i,t}.
    gate = _gate("softsign")
    logp, old, _, mask = _batch(seed=7, spread=0.3)
    adv_BT = torch.randn(logp.shape, dtype=F64, generator=torch.Generator().manual_seed(2))
    x = logp.clone().requires_grad_()
    loss, _ = policy_loss(x, old, adv_BT, mask, gate, level="sequence-token", agg=agg)  # type: ignore[arg-type]
    s = _seq_ratio(logp, old, mask)[:, None].expand_as(logp)
    w = token_weights(mask, agg, dtype=F64)  # type: ignore[arg-type]
    A = torch.where(mask, adv_BT, 0.0)
    torch.testing.assert_close(loss.detach(), -(w * gate.f(s, A) * A).sum(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(_grad(loss, x), torch.where(mask, -gate.df(s, A) * s * A * w, 0.0),
                               rtol=1e-10, atol=1e-14)


def test_gspo_token_equals_gspo_for_sequence_advantages_under_seq_mean() -> None:
    # GSPO paper: with A_{i,t} = A_i, GSPO-token and GSPO have the same value and gradient.
    logp, old, adv, mask = _batch(seed=8, spread=0.3)
    gate = _gate("sigmoid")
    x1, x2 = logp.clone().requires_grad_(), logp.clone().requires_grad_()
    l1, _ = policy_loss(x1, old, adv, mask, gate, level="sequence")
    l2, _ = policy_loss(x2, old, adv, mask, gate, level="sequence-token")
    torch.testing.assert_close(l1, l2, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(_grad(l1, x1), _grad(l2, x2), rtol=1e-12, atol=1e-15)


def test_sequence_level_rejects_per_token_advantages() -> None:
    logp, old, _, mask = _batch()
    with pytest.raises(ValueError, match="level='sequence'.*shape \\[B\\]"):
        policy_loss(logp, old, torch.zeros(logp.shape, dtype=F64), mask, _gate("sigmoid"), level="sequence")


# ---------------------------------------------------------------------------------------------------------------
# Numerical safety
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", GATE_NAMES)
def test_adversarial_ratios_and_garbage_at_masked_positions(name: str, level: str) -> None:
    B, T = 4, 6
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]]).bool()
    old = torch.full((B, T), -2.0)
    logp = old.clone()
    logp[0, :3] = torch.tensor([-2.0 + 1e4, -2.0 - 1e4, -2.0])  # log-ratio +1e4, -1e4, 0
    logp[1] = torch.tensor([-1.0, -3.0, -2.5, -1.5, -2.0, -2.2])
    logp[3, :2] = torch.tensor([-2.0 + 25.0, -2.0 - 25.0])  # just beyond the bound
    logp[~mask] = torch.tensor([NAN, INF, -INF]).repeat(20)[: int((~mask).sum())]
    old[0, 3], old[2, 0], old[3, 5] = NAN, INF, -INF
    adv = torch.tensor([1.5, -0.7, NAN, -2.0])  # NaN advantage on the all-masked row
    for dtype in (torch.float32, torch.bfloat16):
        x = logp.to(dtype).requires_grad_()
        loss, stats = policy_loss(x, old.to(dtype), adv, mask, _gate(name), level=level)  # type: ignore[arg-type]
        g = _grad(loss, x)
        assert torch.isfinite(loss), (name, level, dtype)
        assert torch.isfinite(g).all(), (name, level, dtype)
        assert (g[~mask] == 0).all()
        assert stats["clamped"].item() == 4  # +-1e4 and +-25 exceed the default bound 20
        for key, value in stats.items():
            assert value.dim() == 0 and not value.requires_grad, key
            assert torch.isfinite(value), key


def test_safe_log_ratio_zeroes_masked_positions_before_exp() -> None:
    logp = torch.tensor([[NAN, -1.0, INF, -INF], [-2.0, -30.0, NAN, 0.5]], dtype=F64)
    old = torch.tensor([[-1.0, -1.5, -1.0, NAN], [INF, -1.0, -1.0, 0.0]], dtype=F64)
    mask = torch.tensor([[False, True, False, False], [False, True, False, True]])
    x = logp.clone().requires_grad_()
    log_ratio, clamped = safe_log_ratio(x, old, mask, bound=20.0)
    # Exactly 0 (ratio 1) where masked, whatever was stored there; the valid -29 is clamped to -20.
    torch.testing.assert_close(log_ratio.detach(), torch.tensor([[0.0, 0.5, 0.0, 0.0], [0.0, -20.0, 0.0, 0.5]],
                                                                dtype=F64), rtol=0, atol=0)
    assert clamped.item() == 1
    (g,) = torch.autograd.grad(log_ratio.exp().sum(), x)
    torch.testing.assert_close(g, torch.tensor([[0.0, math.exp(0.5), 0.0, 0.0], [0.0, 0.0, 0.0, math.exp(0.5)]],
                                               dtype=F64), rtol=1e-15, atol=0)


def test_clamped_tokens_get_no_gradient_and_the_bound_is_configurable() -> None:
    logp = torch.tensor([[0.0, 0.0, 0.0]], dtype=F64)
    old = torch.tensor([[-5.0, 0.5, 3.0]], dtype=F64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    x = logp.clone().requires_grad_()
    loss, stats = policy_loss(x, old, torch.tensor([1.0], dtype=F64), mask, _gate("identity"),
                              log_ratio_bound=2.0, agg="token-mean")
    # Log-ratios 5, -0.5, -3 -> the first and last clamp to +-2 and get zero gradient.
    assert stats["clamped"].item() == 2
    g = _grad(loss, x)
    assert g[0, 0].item() == 0.0 and g[0, 2].item() == 0.0
    assert g[0, 1].item() == pytest.approx(-math.exp(-0.5) / 3, rel=1e-14)
    assert stats["ratio_max"].item() == pytest.approx(math.exp(2.0), rel=1e-14)
    with pytest.raises(ValueError, match="log_ratio_bound"):
        policy_loss(x, old, torch.tensor([1.0], dtype=F64), mask, _gate("identity"), log_ratio_bound=0.0)


def test_log_ratio_is_computed_in_float32_for_bf16_inputs() -> None:
    logp, old, adv, mask = _batch(seed=9)
    lp16, old16 = logp.to(torch.bfloat16), old.to(torch.bfloat16)
    loss16, _ = policy_loss(lp16, old16, adv, mask, _gate("sigmoid"))
    loss32, _ = policy_loss(lp16.float(), old16.float(), adv.float(), mask, _gate("sigmoid"))
    assert loss16.dtype == torch.float32
    assert loss16.item() == loss32.item()


@pytest.mark.parametrize("agg", AGG_MODES)
def test_all_masked_and_empty_batches(agg: str) -> None:
    gate = _gate("sigmoid")
    for shape in [(3, 4), (0, 4), (2, 0)]:
        x = torch.randn(shape, dtype=F64).requires_grad_()
        mask = torch.zeros(shape, dtype=torch.bool)
        adv = torch.ones(shape[0], dtype=F64)
        loss, stats = policy_loss(x, x.detach() + 1.0, adv, mask, gate, agg=agg, group_size=1)  # type: ignore[arg-type]
        assert loss.item() == 0.0
        assert (_grad(loss, x) == 0).all()
        assert stats["tokens"].item() == 0 and stats["clamped"].item() == 0
        for key in ("eur", "ratio_mean", "ratio_p50", "ratio_min", "soft_clip_frac", "approx_kl"):
            assert math.isnan(stats[key].item()), key  # undefined, reported as such


# ---------------------------------------------------------------------------------------------------------------
# Gradient accumulation
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("agg", AGG_MODES)
def test_micro_batches_sum_to_the_whole_batch(agg: str, level: str) -> None:
    logp, old, adv, mask = _batch(B=8, T=9, seed=10)
    gate = _gate("arctan")
    ref = logp + 0.1
    ent = torch.rand(logp.shape, dtype=F64)
    kwargs = dict(level=level, agg=agg, norm_len=12, ref_logp=ref, kl_coef=0.05, entropy=ent, entropy_coef=0.01)
    x = logp.clone().requires_grad_()
    whole, _ = policy_loss(x, old, adv, mask, gate, **kwargs)  # type: ignore[arg-type]
    g_whole = _grad(whole, x)
    z = normalizer(mask, agg, norm_len=12)  # type: ignore[arg-type]
    total = torch.zeros((), dtype=F64)
    for a, b in [(0, 3), (3, 4), (4, 8)]:
        part, _ = policy_loss(x[a:b], old[a:b], adv[a:b], mask[a:b], gate, normalizer=z,
                              **{**kwargs, "ref_logp": ref[a:b], "entropy": ent[a:b]})  # type: ignore[arg-type]
        total = total + part
    torch.testing.assert_close(total, whole, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(_grad(total, x), g_whole, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------------


def test_stats_match_their_definitions() -> None:
    gate = _gate("erf")
    logp, old, adv, mask = _batch(B=6, T=7, seed=11, spread=1.0)
    _, stats = policy_loss(logp, old, adv, mask, gate, group_size=3)
    r = torch.exp(logp - old)
    A = adv[:, None].expand_as(r)
    df = gate.df(r, A)
    assert stats["eur"].item() == pytest.approx(eur(df, mask, group_ids(6, 3)).item(), rel=1e-14)
    assert stats["soft_clip_frac"].item() == pytest.approx((df[mask] < 0.5).double().mean().item(), rel=1e-14)
    assert stats["hard_clip_frac"].item() == (df[mask] == 0).double().mean().item()
    rv = r[mask]
    assert stats["ratio_mean"].item() == pytest.approx(rv.mean().item(), rel=1e-14)
    assert stats["ratio_min"].item() == rv.min().item() and stats["ratio_max"].item() == rv.max().item()
    q = torch.quantile(rv, torch.tensor([0.05, 0.5, 0.95], dtype=F64))
    assert [stats[k].item() for k in ("ratio_p05", "ratio_p50", "ratio_p95")] == pytest.approx(q.tolist(), rel=1e-14)
    lr = (logp - old)[mask]
    assert stats["approx_kl"].item() == pytest.approx((lr.exp() - 1 - lr).mean().item(), rel=1e-12)
    assert stats["tokens"].item() == mask.sum().item()
    # Without groups, every sequence is its own group.
    _, per_seq = policy_loss(logp, old, adv, mask, gate)
    assert per_seq["eur"].item() == pytest.approx(eur(df, mask, torch.arange(6)).item(), rel=1e-14)
    _, explicit = policy_loss(logp, old, adv, mask, gate, group_ids=torch.tensor([5, 5, 5, 9, 9, 9]))
    assert explicit["eur"].item() == pytest.approx(stats["eur"].item(), rel=1e-14)
    with pytest.raises(ValueError, match="either group_ids or group_size"):
        policy_loss(logp, old, adv, mask, gate, group_size=3, group_ids=torch.zeros(6, dtype=torch.long))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("agg", AGG_MODES)
def test_terms_of_micro_batches_give_the_whole_batch_stats(agg: str, level: str) -> None:
    """policy_loss_terms per micro-batch, joined with LossTerms.cat and reduced once by loss_stats, gives the
    statistics of one policy_loss call on the whole batch (EUR over groups split across micro-batches too)."""
    logp, old, adv, mask = _batch(B=8, T=9, seed=19, spread=0.8)
    gate, ref, ent = _gate("erf"), logp + 0.2, torch.rand(logp.shape, dtype=F64)
    options = LossOptions(level=level, agg=agg, norm_len=12, kl_coef=0.05, entropy_coef=0.01)  # type: ignore[arg-type]
    _, whole = policy_loss(logp, old, adv, mask, gate, level=level, agg=agg, norm_len=12,  # type: ignore[arg-type]
                           ref_logp=ref, kl_coef=0.05, entropy=ent, entropy_coef=0.01, group_size=4)
    z = normalizer(mask, agg, norm_len=12)  # type: ignore[arg-type]
    parts = [policy_loss_terms(logp[a:b], old[a:b], adv[a:b], mask[a:b], gate, options, normalizer=z,
                               ref_logp=ref[a:b], entropy=ent[a:b])[1] for a, b in [(0, 3), (3, 4), (4, 8)]]
    joined = loss_stats(LossTerms.cat(parts), group_size=4)
    assert set(joined) == set(whole) >= {"eur", "kl_ref", "kl_loss", "entropy", "entropy_loss", "loss"}
    for key, value in whole.items():
        torch.testing.assert_close(joined[key], value, rtol=1e-12, atol=1e-15, msg=key)
    with pytest.raises(ValueError, match="at least one part"):
        LossTerms.cat([])


def test_clip_gate_hard_clip_fraction_counts_tokens_outside_the_trust_region() -> None:
    logp, old, adv, mask = _batch(B=6, T=7, seed=12, spread=0.5)
    _, stats = policy_loss(logp, old, adv, mask, _gate("clip"), group_size=6)
    r = torch.exp(logp - old)
    A = adv[:, None].expand_as(r)
    # PPO's min(rA, clip(r)A): no gradient when A > 0 and r > 1 + eps_high, or A <= 0 and r < 1 - eps_low.
    clipped = ((A > 0) & (r > 1.28)) | ((A <= 0) & (r < 0.8))
    frac = clipped[mask].double().mean().item()
    assert 0.05 < frac < 0.95  # the test data exercises both outcomes
    assert stats["hard_clip_frac"].item() == pytest.approx(frac, rel=1e-14)
    # One group: the paper's "EUR = 1 - clip fraction" for GRPO.
    assert stats["eur"].item() == pytest.approx(1 - frac, rel=1e-14)


@pytest.mark.parametrize("name", SMOOTH)
def test_smooth_gates_report_no_hard_clipping_at_moderate_ratios(name: str) -> None:
    logp, old, adv, mask = _batch(seed=13)
    _, stats = policy_loss(logp, old, adv, mask, _gate(name))
    assert stats["hard_clip_frac"].item() == 0.0
    assert 0.0 < stats["eur"].item() < 1.0


def test_stats_keys() -> None:
    logp, old, adv, mask = _batch()
    _, stats = policy_loss(logp, old, adv, mask, _gate("sigmoid"))
    assert set(stats) == {"eur", "soft_clip_frac", "hard_clip_frac", "ratio_mean", "ratio_min", "ratio_max",
                          "ratio_p05", "ratio_p50", "ratio_p95", "approx_kl", "clamped", "tokens", "loss", "pg_loss"}
    _, stats = policy_loss(logp, old, adv, mask, _gate("sigmoid"), ref_logp=logp, entropy=torch.ones_like(logp))
    assert {"kl_ref", "entropy"} <= set(stats) and "kl_loss" not in stats and "entropy_loss" not in stats


# ---------------------------------------------------------------------------------------------------------------
# KL penalty and entropy bonus
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "estimator, dk_dlogp",
    [
        # u = ref - logp.  k1 = -u -> d/dlogp = 1;  k2 = u^2 / 2 -> -u;  k3 = e^u - 1 - u -> 1 - e^u.
        ("k1", lambda u: torch.ones_like(u)),
        ("k2", lambda u: -u),
        ("k3", lambda u: 1 - torch.exp(u)),
    ],
)
def test_kl_penalty_gradient_closed_form(estimator: str, dk_dlogp) -> None:  # type: ignore[no-untyped-def]
    gate = _gate("sigmoid")
    logp, old, adv, mask = _batch(seed=14)
    ref = logp + 0.4 * torch.randn(logp.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    ref[~mask] = NAN
    x = logp.clone().requires_grad_()
    base, _ = policy_loss(x, old, adv, mask, gate, agg="token-mean")
    g_base = _grad(base, x)
    x = logp.clone().requires_grad_()
    loss, stats = policy_loss(x, old, adv, mask, gate, agg="token-mean", ref_logp=ref, kl_coef=0.3,
                              kl_estimator=estimator)  # type: ignore[arg-type]
    u = torch.where(mask, ref - logp, 0.0)
    w = token_weights(mask, "token-mean", dtype=F64)
    torch.testing.assert_close(_grad(loss, x), g_base + torch.where(mask, 0.3 * w * dk_dlogp(u), 0.0),
                               rtol=1e-10, atol=1e-14)
    k = {"k1": -u, "k2": u**2 / 2, "k3": torch.exp(u) - 1 - u}[estimator]
    assert stats["kl_ref"].item() == pytest.approx(k[mask].mean().item(), rel=1e-12)
    assert stats["kl_loss"].item() == pytest.approx(0.3 * k[mask].mean().item(), rel=1e-12)
    assert stats["loss"].item() == pytest.approx(stats["pg_loss"].item() + stats["kl_loss"].item(), rel=1e-14)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_expected_gradient_as_a_loss_term(estimator: str) -> None:
    """On-policy (y ~ pi_theta, the sampling not differentiated), the expected gradient of the KL term is, exactly:
    k1 -> 0; k2 -> grad KL(pi || ref); k3 -> grad KL(ref || pi) (docs/losses.md). The expectation is the exact
    sum over a 7-token vocabulary of pi(y) times the gradient of the loss the library builds for a batch holding
    the single token y (adv = 0, so only the KL term moves); the two KLs are computed in closed form."""
    gen = torch.Generator().manual_seed(21)
    theta = torch.randn(7, dtype=F64, generator=gen).requires_grad_()  # pi_theta = softmax(theta)
    ref = torch.log_softmax(torch.randn(7, dtype=F64, generator=gen) * 2, 0)
    logp = torch.log_softmax(theta, 0)
    pi = logp.exp().detach()
    mask = torch.ones(1, 1, dtype=torch.bool)
    expected_loss = sum(
        pi[y] * policy_loss(logp[y].view(1, 1), logp[y].detach().view(1, 1), torch.zeros(1, dtype=F64), mask,
                            _gate("sigmoid"), ref_logp=ref[y].view(1, 1), kl_coef=1.0,
                            kl_estimator=estimator)[0]  # type: ignore[arg-type]
        for y in range(7))
    got = _grad(expected_loss, theta)
    logp = torch.log_softmax(theta, 0)  # a fresh graph for each gradient
    reverse = _grad((logp.exp() * (logp - ref)).sum(), theta)  # KL(pi || ref)
    logp = torch.log_softmax(theta, 0)
    forward = _grad((ref.exp() * (ref - logp)).sum(), theta)  # KL(ref || pi)
    want = {"k1": torch.zeros(7, dtype=F64), "k2": reverse, "k3": forward}[estimator]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert (reverse - forward).abs().max() > 0.1  # the two KLs' gradients differ here: the test tells them apart


def test_k1_as_a_loss_term_warns_once() -> None:
    import warnings

    import softgate.losses

    softgate.losses._warn_k1_loss_term.cache_clear()
    logp, old, adv, mask = _batch(seed=16)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        policy_loss(logp, old, adv, mask, _gate("erf"), ref_logp=old, kl_estimator="k1")  # kl_coef = 0: no warning
        for _ in range(3):
            policy_loss(logp, old, adv, mask, _gate("erf"), ref_logp=old, kl_coef=0.1, kl_estimator="k1")
        policy_loss(logp, old, adv, mask, _gate("erf"), ref_logp=old, kl_coef=0.1, kl_estimator="k3")
    messages = [str(w.message) for w in seen]
    assert len(messages) == 1 and "zero expected gradient" in messages[0]


def test_entropy_bonus_gradient_and_value() -> None:
    logp, old, adv, mask = _batch(seed=15)
    ent = torch.rand(logp.shape, dtype=F64).requires_grad_()
    loss, stats = policy_loss(logp, old, adv, mask, _gate("erf"), entropy=ent, entropy_coef=0.02)
    w = token_weights(mask, "seq-mean-token-mean", dtype=F64)
    torch.testing.assert_close(_grad(loss, ent), -0.02 * w, rtol=1e-14, atol=1e-16)
    assert stats["entropy"].item() == pytest.approx(ent[mask].mean().item(), rel=1e-14)
    assert stats["entropy_loss"].item() == pytest.approx(-0.02 * (w * ent).sum().item(), rel=1e-14)


def test_input_errors_name_the_field() -> None:
    logp, old, adv, mask = _batch()
    gate = _gate("sigmoid")
    with pytest.raises(TypeError, match="mask must be a bool"):
        policy_loss(logp, old, adv, mask.float(), gate)
    with pytest.raises(ValueError, match="old_logp has shape"):
        policy_loss(logp, old[:, :3], adv, mask, gate)
    with pytest.raises(ValueError, match="advantages must have shape"):
        policy_loss(logp, old, adv[:2], mask, gate)
    with pytest.raises(ValueError, match="unknown ratio level 'seq'.*token, sequence, sequence-token"):
        policy_loss(logp, old, adv, mask, gate, level="seq")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown aggregation mode"):
        policy_loss(logp, old, adv, mask, gate, agg="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kl_coef=0.1 needs ref_logp"):
        policy_loss(logp, old, adv, mask, gate, kl_coef=0.1)
    with pytest.raises(ValueError, match="entropy_coef=0.1 needs entropy"):
        policy_loss(logp, old, adv, mask, gate, entropy_coef=0.1)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        policy_loss(logp, old, adv, mask, gate, ref_logp=logp, kl_estimator="k9")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# CISPO
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("agg", AGG_MODES)
def test_cispo_gradient_is_the_detached_clipped_weight_times_a(agg: str) -> None:
    logp, old, adv, mask = _batch(seed=16, spread=0.5)
    x = logp.clone().requires_grad_()
    loss, stats = cispo_loss(x, old, adv, mask, eps_low=0.2, eps_high=0.28, agg=agg)  # type: ignore[arg-type]
    r = torch.exp(logp - old)
    weight = r.clamp(0.8, 1.28)
    w = token_weights(mask, agg, dtype=F64)  # type: ignore[arg-type]
    torch.testing.assert_close(_grad(loss, x), torch.where(mask, -weight * adv[:, None] * w, 0.0),
                               rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(loss.detach(), -(torch.where(mask, weight * adv[:, None] * logp, 0.0) * w).sum(),
                               rtol=1e-12, atol=1e-15)
    clipped = ((r < 0.8) | (r > 1.28))[mask].double().mean().item()
    assert 0 < clipped < 1
    assert stats["is_clip_frac"].item() == pytest.approx(clipped, rel=1e-14)
    assert stats["hard_clip_frac"].item() == 0.0  # CISPO never drops a token's gradient
    df_eff = weight / r
    assert stats["eur"].item() == pytest.approx(eur(df_eff, mask, torch.arange(6)).item(), rel=1e-12)


def test_cispo_sequence_weight_and_safety() -> None:
    logp, old, adv, mask = _batch(seed=17, spread=0.3)
    logp[~mask] = NAN
    x = logp.clone().requires_grad_()
    loss, _ = cispo_loss(x, old, adv, mask, level="sequence", agg="token-mean")
    s = _seq_ratio(torch.nan_to_num(logp), old, mask)
    weight = s.clamp(0.0, 1.28)[:, None]
    g = _grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    torch.testing.assert_close(g, torch.where(mask, -weight * adv[:, None] / mask.sum(), 0.0),
                               rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="eps_low"):
        cispo_loss(logp, old, adv, mask, eps_low=1.5)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", ["sigmoid", "erf", "arctan", "softsign", "student", "identity"])
def test_gradient_matches_central_finite_differences_of_the_loss_value(name: str, level: str) -> None:
    # Independent of Gate.df: only loss *values* (through Gate.f) enter the finite differences.
    gate = _gate(name)
    logp, old, _, mask = _batch(B=3, T=4, seed=18, spread=0.5)
    adv = torch.tensor([1.3, -0.8, 0.5], dtype=F64)  # rows 0 and 1 hold the valid tokens probed below
    x = logp.clone().requires_grad_()
    loss, _ = policy_loss(x, old, adv, mask, gate, level=level)  # type: ignore[arg-type]
    g = _grad(loss, x)
    assert (g[0, :].abs() > 1e-3).all()
    h = 1e-6
    for i, t in [(1, 0), (1, 2), (0, 1), (2, 3)]:
        bumped = [logp.clone(), logp.clone()]
        bumped[0][i, t] += h
        bumped[1][i, t] -= h
        plus, minus = (
            policy_loss(b, old, adv, mask, gate, level=level)[0].item()  # type: ignore[arg-type]
            for b in bumped
        )
        assert g[i, t].item() == pytest.approx((plus - minus) / (2 * h), abs=1e-8), (i, t)
