"""softgate.gates.families and .clip: closed forms against independent references (plain torch autograd, 30-digit
mpmath), autograd of f equal to df, far-tail safety in every dtype, the temperature per advantage sign, PPO's clip,
and properties of the smooth families."""

from __future__ import annotations

import math

import pytest
import torch
from gate_refs import (
    ALL,
    F64,
    SMOOTH,
    TAIL_X,
    assert_close_to_mp,
    mp_df,
    mp_f,
    mpmath,
    t64,
    torch_reference_f,
)
from hypothesis import given
from hypothesis import strategies as st

from softgate import gates


@pytest.fixture(scope="module", autouse=True)
def _mp_precision():
    with mpmath.workdps(30):  # 30 digits for the references, restored afterwards
        yield


@pytest.mark.parametrize("name", ["sigmoid", "erf", "arctan", "softsign"])
@pytest.mark.parametrize("tau", [0.5, 1.0, 10.0])
def test_df_equals_autograd_of_reference_formula(name: str, tau: float) -> None:
    # Autograd of the plain formula (not of softgate's f) against the closed-form df, on moderate x.
    x = torch.linspace(1e-3, 4.0, 1201, dtype=F64).requires_grad_(True)
    (grad,) = torch.autograd.grad(torch_reference_f(name, x, tau).sum(), x)
    gate = gates.make(name, tau_pos=tau, tau_neg=tau)
    torch.testing.assert_close(gate.df(x.detach(), 1.0), grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(gate.f(x.detach(), 1.0), torch_reference_f(name, x.detach(), tau), rtol=1e-14,
                               atol=1e-15)


@pytest.mark.parametrize("name", SMOOTH)
@pytest.mark.parametrize("tau", [1.0, 10.0])
def test_df_and_f_match_30_digit_reference_into_far_tails(name: str, tau: float) -> None:
    gate = gates.make(name, tau_pos=tau, tau_neg=tau)
    x = t64(TAIL_X)
    assert_close_to_mp(gate.df(x, 1.0), [mp_df(name, v, tau) for v in TAIL_X], 1e-12, f"{name} df")
    # f is O(1): relative 1e-13 (the student f is a quadrature: this is its accuracy test)
    assert_close_to_mp(gate.f(x, 1.0), [mp_f(name, v, tau) for v in TAIL_X], 1e-13, f"{name} f")


@pytest.mark.parametrize("name", ALL)
def test_autograd_of_f_is_df_exactly(name: str) -> None:
    gate = gates.make(name)
    x = torch.cat([t64([0.0, 1e-30, 1e-6, 1.0, 1e6, 1e12, 1e30]), torch.linspace(0.01, 5, 500, dtype=F64)])
    for sign in (1.0, -1.0):
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(gate.f(xg, torch.full_like(x, sign)).sum(), xg)
        assert torch.equal(grad, gate.df(x, sign))


def test_second_derivative_through_the_backward() -> None:
    gate = gates.make("sigmoid", tau_pos=3.0, tau_neg=3.0)
    x = torch.linspace(0.2, 2.0, 50, dtype=F64).requires_grad_(True)
    (g1,) = torch.autograd.grad(gate.f(x, 1.0).sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), x)
    # f'' of (4/tau) sigmoid(tau u) is 4 tau s (1 - s) (1 - 2 s)
    s = torch.sigmoid(3.0 * (x.detach() - 1))
    torch.testing.assert_close(g2, 12.0 * s * (1 - s) * (1 - 2 * s), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_df_at_one_is_one(name: str, sign: float) -> None:
    for params in ({}, {"tau_pos": 7.0, "tau_neg": 0.3} if name in SMOOTH else {}):
        gate = gates.make(name, **params)
        assert gate.df(t64([1.0]), sign).item() == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_finite_everywhere_including_huge_tau(name: str, dtype: torch.dtype) -> None:
    x = torch.tensor([0.0, 1e-30, 1e-6, 0.5, 1.0, 2.0, 1e6, 1e15, 1e30], dtype=dtype)
    taus = [1e-3, 1.0, 1e6, 1e30] if name in SMOOTH else [None]
    for tau in taus:
        gate = gates.make(name, **({"tau_pos": tau, "tau_neg": tau} if tau else {}))
        for sign in (1.0, -1.0):
            xg = x.clone().requires_grad_(True)
            f = gate.f(xg, sign)
            (grad,) = torch.autograd.grad(f.sum(), xg)
            df = gate.df(x, sign)
            assert f.dtype == dtype and df.dtype == dtype and grad.dtype == dtype
            assert torch.isfinite(f).all() and torch.isfinite(df).all() and torch.isfinite(grad).all(), (
                f"{name} tau={tau} A={sign}: f={f}, df={df}")


@pytest.mark.parametrize("name", SMOOTH)
def test_float32_agrees_with_float64(name: str) -> None:
    gate = gates.make(name, tau_pos=10.0, tau_neg=12.0)
    x64 = torch.cat([torch.linspace(0.0, 3.0, 301, dtype=F64), t64([10.0, 1e6, 1e30])])
    adv = torch.where(torch.arange(x64.numel()) % 2 == 0, 1.0, -1.0).to(F64)
    x32 = x64.float()
    # compare at the float32-rounded ratios, so that only the arithmetic differs
    ref_f, ref_df = gate.f(x32.double(), adv), gate.df(x32.double(), adv)
    torch.testing.assert_close(gate.f(x32, adv.float()).double(), ref_f, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(gate.df(x32, adv.float()).double(), ref_df, rtol=1e-5, atol=1e-7)


def test_temperature_is_picked_by_advantage_sign() -> None:
    gate = gates.make("sigmoid", tau_pos=2.0, tau_neg=7.0)
    pos, neg = gates.make("sigmoid", tau_pos=2.0, tau_neg=2.0), gates.make("sigmoid", tau_pos=7.0, tau_neg=7.0)
    x = t64([0.7, 1.3, 0.9, 1.6, 1.2])
    adv = t64([0.5, -1.0, 0.0, 3.0, -0.0])  # A = 0 takes tau_neg
    expected_df = torch.stack([pos.df(x, 1.0)[0], neg.df(x, 1.0)[1], neg.df(x, 1.0)[2], pos.df(x, 1.0)[3],
                               neg.df(x, 1.0)[4]])
    assert torch.equal(gate.df(x, adv), expected_df)
    assert gate.f(x, adv)[1].item() == neg.f(x, 1.0)[1].item()
    assert gate.df(x, adv)[0].item() != neg.df(x, 1.0)[0].item()


def test_broadcasting_and_gradient_shape() -> None:
    gate = gates.make("erf", tau_pos=3.0, tau_neg=5.0)
    ratio = (1 + 0.3 * torch.randn(4, 1, dtype=F64)).requires_grad_(True)  # [B, 1]
    adv = torch.randn(4, 6, dtype=F64)  # [B, T]
    out = gate.f(ratio, adv)
    assert out.shape == (4, 6)
    (grad,) = torch.autograd.grad(out.sum(), ratio)
    assert grad.shape == (4, 1)
    torch.testing.assert_close(grad, gate.df(ratio.detach(), adv).sum(1, keepdim=True), rtol=1e-15, atol=0)
    assert gate.df(torch.ones(3, 5), torch.ones(5)).shape == (3, 5)


def test_f_value_under_no_grad_equals_differentiable_path() -> None:
    gate = gates.make("student", nu=2.5)
    x = torch.linspace(0.1, 3, 40, dtype=F64)
    assert torch.equal(gate.f(x, 1.0), gate.f(x.clone().requires_grad_(True), 1.0).detach())


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_per_row_advantages_equal_the_expanded_per_token_ones(name: str, dtype: torch.dtype) -> None:
    # The losses pass per-sequence advantages as [B, 1]; the temperature families then keep tau at [B, 1]
    # instead of filling a [B, T] tensor. Same numbers bit for bit as the expanded [B, T] advantages, and each
    # row as a gate with that row's temperature alone.
    gen = torch.Generator().manual_seed(3)
    x = torch.exp(0.5 * torch.randn(5, 7, generator=gen, dtype=F64)).to(dtype)
    x[0, :3] = torch.tensor([0.0, 1.0, 1e30], dtype=dtype)
    adv_B1 = t64([[0.7], [-1.2], [0.0], [2.0], [-0.0]]).to(dtype)  # A = +-0 takes tau_neg
    adv_BT = adv_B1.expand(5, 7).contiguous()
    params = {"tau_pos": 2.0, "tau_neg": 7.0} if name in SMOOTH else {}
    gate = gates.make(name, **params)
    f, df = gate.f(x, adv_B1), gate.df(x, adv_B1)
    assert f.shape == df.shape == (5, 7) and f.dtype == df.dtype == dtype
    assert torch.equal(f, gate.f(x, adv_BT)) and torch.equal(df, gate.df(x, adv_BT))
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gate.f(xg, adv_B1).sum(), xg)
    assert torch.equal(grad, df)
    if name in SMOOTH:
        for row, a in enumerate(adv_B1[:, 0].tolist()):
            tau = 2.0 if a > 0 else 7.0
            alone = gates.make(name, **{**params, "tau_pos": tau, "tau_neg": tau})
            # evaluated on the whole x, then the row taken: torch's vectorized and scalar tail loops may differ
            # in the last bit, so equal bits need equal positions
            assert torch.equal(f[row], alone.f(x, 1.0)[row]) and torch.equal(df[row], alone.df(x, 1.0)[row])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_softsign_where_z_squared_overflows(dtype: torch.dtype) -> None:
    # |z| = tau |x - 1| beyond sqrt(max) (z^2 = inf) and z = inf: F(z) = z / sqrt(1 + z^2) is +-1 to rounding,
    # so f = 1 + 1/tau exactly, and f' = |z|^-3 underflows to 0; a NaN ratio stays NaN.
    tau = 4.0
    big = math.sqrt(torch.finfo(dtype).max)
    x = torch.tensor([big / tau * 0.5, big / tau * 2, torch.finfo(dtype).max, float("inf"), float("nan")],
                     dtype=dtype)
    gate = gates.make("softsign", tau_pos=tau, tau_neg=tau)
    f, df = gate.f(x, 1.0), gate.df(x, -1.0)
    assert torch.equal(f[:4], torch.full((4,), 1 + 1 / tau, dtype=dtype)), f
    assert torch.equal(df[1:4], torch.zeros(3, dtype=dtype)) and 0 <= df[0].item() < 1e-40
    assert f[4].isnan() and df[4].isnan()
    # F itself on both sides (z < 0 needs x < 0 or a huge tau through f): odd, +-1 beyond the overflow point
    z = torch.tensor([0.5 * big, 2 * big, float("inf")], dtype=dtype)
    assert torch.equal(gate.primitive(z), torch.ones(3, dtype=dtype))
    assert torch.equal(gate.primitive(-z), -torch.ones(3, dtype=dtype))


@pytest.mark.parametrize("name", SMOOTH)
def test_nan_ratio_stays_nan(name: str) -> None:
    # No guard (a clamp, a where) may turn an invalid ratio into a plausible gate value.
    gate = gates.make(name)
    x = t64([float("nan"), 1.5])
    for fn in (gate.f, gate.df):
        out = fn(x, t64([1.0, -1.0]))
        assert out[0].isnan() and out[1].isfinite()


@pytest.mark.parametrize("name", ["erf", "arctan", "softsign"])
def test_second_derivative_of_each_family(name: str) -> None:
    # autograd through the backward (df written with plain ops) against f'' by hand, u = x - 1:
    # erf -tau^2 u e^{-tau^2 u^2 / 2}; arctan -2 tau^2 u / (1 + tau^2 u^2)^2; softsign -3 tau^2 u (1 + tau^2 u^2)^-5/2
    tau = 3.0
    gate = gates.make(name, tau_pos=tau, tau_neg=tau)
    x = torch.linspace(0.2, 2.0, 50, dtype=F64).requires_grad_(True)
    (g1,) = torch.autograd.grad(gate.f(x, 1.0).sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), x)
    u = x.detach() - 1
    q = 1 + tau**2 * u**2
    expected = {"erf": -tau**2 * u * torch.exp(-0.5 * tau**2 * u**2), "arctan": -2 * tau**2 * u / q**2,
                "softsign": -3 * tau**2 * u * q**-2.5}[name]
    torch.testing.assert_close(g2, expected, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------------------------
# clip and identity
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps_low,eps_high", [(0.2, 0.2), (0.2, 0.28), (0.0, 0.5)])
def test_clip_matches_ppo_min_clip(eps_low: float, eps_high: float, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    ratio = torch.exp(0.6 * torch.randn(2000, generator=gen, dtype=dtype))
    adv = torch.randn(2000, generator=gen, dtype=dtype)
    gate = gates.make("clip", eps_low=eps_low, eps_high=eps_high)
    r1 = ratio.clone().requires_grad_(True)
    ppo = torch.minimum(r1 * adv, torch.clamp(r1, 1 - eps_low, 1 + eps_high) * adv)
    (ppo_grad,) = torch.autograd.grad(ppo.sum(), r1)
    r2 = ratio.clone().requires_grad_(True)
    ours = gate.f(r2, adv) * adv
    (our_grad,) = torch.autograd.grad(ours.sum(), r2)
    torch.testing.assert_close(ours.detach(), ppo.detach(), rtol=0, atol=0)
    torch.testing.assert_close(our_grad, ppo_grad, rtol=0, atol=0)  # no ties at random ratios
    inside_rel = torch.where(adv > 0, ratio <= 1 + eps_high, ratio >= 1 - eps_low)
    assert torch.equal(gate.df(ratio, adv), inside_rel.to(dtype))


def test_identity() -> None:
    gate = gates.make("identity")
    x = t64([0.0, 0.5, 3.0, 1e30])
    assert torch.equal(gate.f(x, -1.0), x) and torch.equal(gate.df(x, 1.0), torch.ones_like(x))
    assert gate.params == {}


# ---------------------------------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------------------------------

taus = st.floats(min_value=0.01, max_value=100.0)
offsets = st.floats(min_value=0.0, max_value=0.999)


@given(name=st.sampled_from(SMOOTH), tau=taus, x=st.floats(min_value=0.0, max_value=1e6),
       sign=st.sampled_from([1.0, -1.0]))
def test_property_gate_weight_in_unit_interval(name: str, tau: float, x: float, sign: float) -> None:
    value = gates.make(name, tau_pos=tau, tau_neg=tau).df(t64([x]), sign).item()
    assert 0.0 <= value <= 1.0


@given(name=st.sampled_from(SMOOTH), tau=taus, u=offsets)
def test_property_symmetric_around_one(name: str, tau: float, u: float) -> None:
    # All five smooth families have an even f' and an odd f - f(1) in u = x - 1.
    gate = gates.make(name, tau_pos=tau, tau_neg=tau)
    x = t64([1 + u, 1 - u, 1.0])
    df, f = gate.df(x, 1.0), gate.f(x, 1.0)
    assert df[0].item() == pytest.approx(df[1].item(), rel=1e-12, abs=1e-300)
    rounding = 1e-14 * (1 + abs(f[2].item()))  # f(1 +- u) - f(1) cancels: sigmoid's f(1) = 2/tau can be large
    assert (f[0] - f[2]).item() == pytest.approx(-(f[1] - f[2]).item(), rel=1e-9, abs=rounding)


@given(name=st.sampled_from(SMOOTH), tau=taus, u1=offsets, u2=offsets)
def test_property_decreasing_away_from_one(name: str, tau: float, u1: float, u2: float) -> None:
    near, far = sorted((u1, u2))
    gate = gates.make(name, tau_pos=tau, tau_neg=tau)
    df = gate.df(t64([1 + near, 1 + far, 1 - near, 1 - far]), -1.0)
    assert df[0] >= df[1] and df[2] >= df[3]


@given(name=st.sampled_from(SMOOTH), tau=taus, u=st.floats(min_value=-0.999, max_value=5.0))
def test_property_temperature_rescales_the_axis(name: str, tau: float, u: float) -> None:
    # f'_tau(1 + u) = f'_1(1 + tau u): tau only stretches the x axis around 1.
    gate = gates.make(name, tau_pos=tau, tau_neg=tau)
    unit = gates.make(name, tau_pos=1.0, tau_neg=1.0)
    assert gate.df(t64([1 + u]), 1.0).item() == pytest.approx(unit.df(t64([1 + tau * u]), 1.0).item(),
                                                              rel=1e-9, abs=1e-300)


