"""softgate.gates: closed forms against independent references (plain torch autograd, mpmath), far-tail safety,
the student identities, the registry, parameter validation and the admissibility check."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from softgate import gates
from softgate.gates import Gate

mpmath = pytest.importorskip("mpmath")


@pytest.fixture(scope="module", autouse=True)
def _mp_precision():
    with mpmath.workdps(30):  # 30 digits for the references, restored afterwards
        yield

F64 = torch.float64
SMOOTH = ["sigmoid", "erf", "arctan", "softsign", "student"]
ALL = SMOOTH + ["clip", "identity"]


def t64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


# ---------------------------------------------------------------------------------------------------------------
# Independent references: the paper's formulas written out (paper.md, "The four gate families")
# ---------------------------------------------------------------------------------------------------------------


def torch_reference_f(name: str, x: torch.Tensor, tau: float) -> torch.Tensor:
    """The paper's f in plain torch ops (naive: fine at moderate x, used for autograd there)."""
    u = x - 1
    if name == "sigmoid":
        return 4 / tau * torch.sigmoid(tau * u)
    if name == "erf":
        return 1 + math.sqrt(math.pi / 2) / tau * torch.erf(tau * u / math.sqrt(2))
    if name == "arctan":
        return 1 + torch.atan(tau * u) / tau
    if name == "softsign":
        return 1 + u / torch.sqrt(1 + tau**2 * u**2)
    raise KeyError(name)


def mp_df(name: str, x, tau, nu=3.0):
    """f'(x) in 30-digit arithmetic."""
    z = mpmath.mpf(tau) * (mpmath.mpf(x) - 1)
    if name == "sigmoid":  # 4 s (1 - s) without the cancellation in 1 - s
        e = mpmath.exp(-z)
        return 4 * e / (1 + e) ** 2
    if name == "erf":
        return mpmath.exp(-z * z / 2)
    if name == "arctan":
        return 1 / (1 + z * z)
    if name == "softsign":
        return (1 + z * z) ** mpmath.mpf(-1.5)
    if name == "student":
        nu = mpmath.mpf(nu)
        return (1 + z * z / nu) ** (-(nu + 1) / 2)
    raise KeyError(name)


def mp_student_integral(z, nu):
    """int_0^z (1 + t^2/nu)^(-(nu+1)/2) dt by adaptive mpmath quadrature, split per decade."""
    z, nu = mpmath.mpf(z), mpmath.mpf(nu)
    a = abs(z)
    points = [mpmath.mpf(0)] + [mpmath.mpf(10) ** k for k in range(-9, 31) if mpmath.mpf(10) ** k < a] + [a]
    value = mpmath.quad(lambda t: (1 + t * t / nu) ** (-(nu + 1) / 2), points)
    return value if z >= 0 else -value


def mp_f(name: str, x, tau, nu=3.0):
    """f(x) with the same additive constants as softgate (f(1) = 1, sigmoid: 2 / tau), in 30 digits."""
    tau = mpmath.mpf(tau)
    u = mpmath.mpf(x) - 1
    z = tau * u
    if name == "sigmoid":
        return 4 / tau / (1 + mpmath.exp(-z))
    if name == "erf":
        return 1 + mpmath.sqrt(mpmath.pi / 2) / tau * mpmath.erf(z / mpmath.sqrt(2))
    if name == "arctan":
        return 1 + mpmath.atan(z) / tau
    if name == "softsign":
        return 1 + u / mpmath.sqrt(1 + z * z)
    if name == "student":
        return 1 + mp_student_integral(z, nu) / tau
    raise KeyError(name)


TAIL_X = [0.0, 1e-12, 1e-6, 0.3, 0.9, 0.999999, 1.0, 1.000001, 1.1, 2.0, 7.0, 50.0, 1e3, 1e6, 1e12, 1e30]


def assert_close_to_mp(got: torch.Tensor, expected, rtol: float, what: str) -> None:
    for g, e, x in zip(got.tolist(), expected, TAIL_X):
        e = float(e)
        if e < 1e-290:  # the exact value underflows double precision: the gate must give (almost) 0
            assert 0 <= g < 1e-280, f"{what} at x={x}: {g} (exact {e})"
        else:
            assert abs(g - e) <= rtol * abs(e), f"{what} at x={x}: {g} vs exact {e} (rel {abs(g - e) / e:.2e})"


# ---------------------------------------------------------------------------------------------------------------
# Closed forms
# ---------------------------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("nu", [0.05, 1.5, 7.5, 1e4])
def test_student_quadrature_matches_mpmath(nu: float) -> None:
    gate = gates.make("student", tau_pos=1.0, tau_neg=1.0, nu=nu)
    xs = [1 - 0.999, 1 - 1e-9, 1 + 1e-4, 1.5, 4.0, 1e2, 1e5, 1e15, 1e30]
    got = gate.f(t64(xs), 1.0)
    for g, x in zip(got.tolist(), xs):
        expected = float(1 + mp_student_integral(x - 1, nu))
        assert abs(g - expected) <= 1e-13 * abs(expected), f"nu={nu} x={x}: {g} vs {expected}"


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
# student: nu = 1 is arctan, nu = 2 is softsign with tau / sqrt 2, nu -> inf tends to erf
# ---------------------------------------------------------------------------------------------------------------

X_ID = torch.cat([t64([0.0, 1e-9, 1e3, 1e9, 1e30]), torch.linspace(0.01, 6.0, 600, dtype=F64)])


@pytest.mark.parametrize("tau", [0.7, 1.0, 12.0])
def test_student_nu1_is_arctan(tau: float) -> None:
    st_gate = gates.make("student", tau_pos=tau, tau_neg=tau, nu=1.0)
    at_gate = gates.make("arctan", tau_pos=tau, tau_neg=tau)
    torch.testing.assert_close(st_gate.df(X_ID, 1.0), at_gate.df(X_ID, 1.0), rtol=1e-13, atol=0)
    torch.testing.assert_close(st_gate.f(X_ID, 1.0), at_gate.f(X_ID, 1.0), rtol=1e-14, atol=0)


@pytest.mark.parametrize("tau", [0.7, 1.0, 12.0])
def test_student_nu2_is_softsign_with_tau_over_sqrt2(tau: float) -> None:
    # (1 + tau^2 u^2 / 2)^(-3/2) = (1 + (tau/sqrt 2)^2 u^2)^(-3/2), and the integral from 1,
    # u / sqrt(1 + tau^2 u^2 / 2), is softsign's f - 1 at tau / sqrt 2: the additive constant is 0.
    st_gate = gates.make("student", tau_pos=tau, tau_neg=tau, nu=2.0)
    ss_gate = gates.make("softsign", tau_pos=tau / math.sqrt(2), tau_neg=tau / math.sqrt(2))
    torch.testing.assert_close(st_gate.df(X_ID, -1.0), ss_gate.df(X_ID, -1.0), rtol=1e-13, atol=0)
    torch.testing.assert_close(st_gate.f(X_ID, -1.0), ss_gate.f(X_ID, -1.0), rtol=1e-14, atol=0)


def test_student_tends_to_erf_as_nu_grows() -> None:
    erf_gate = gates.make("erf", tau_pos=2.0, tau_neg=2.0)
    errors_df, errors_f = [], []
    for nu in (1e2, 1e4, 1e6):
        st_gate = gates.make("student", tau_pos=2.0, tau_neg=2.0, nu=nu)
        errors_df.append(float((st_gate.df(X_ID, 1.0) - erf_gate.df(X_ID, 1.0)).abs().max()))
        errors_f.append(float((st_gate.f(X_ID, 1.0) - erf_gate.f(X_ID, 1.0)).abs().max()))
    # The difference is O(1/nu): each factor 100 in nu divides it by ~100.
    for errors in (errors_df, errors_f):
        assert errors[0] > 50 * errors[1] > 2500 * errors[2]
        assert errors[2] < 1e-5


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


# ---------------------------------------------------------------------------------------------------------------
# Registry and parameters
# ---------------------------------------------------------------------------------------------------------------


def test_registry_names_and_alias() -> None:
    assert set(ALL) <= set(gates.names())
    assert gates.aliases()["algebraic"] == "softsign"
    gate = gates.make("algebraic", tau_pos=2.0)
    assert type(gate) is type(gates.make("softsign")) and gate.name == "softsign"
    assert gate.params == {"tau_pos": 2.0, "tau_neg": 12.0}
    assert gates.make("sigmoid").params == {"tau_pos": 10.0, "tau_neg": 12.0}  # the paper's best
    assert gates.make("clip").params == {"eps_low": 0.2, "eps_high": 0.2}
    assert gates.defaults("student")["nu"] > 0


def test_unknown_gate_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown gate 'sigmoidd'") as info:
        gates.make("sigmoidd")
    for name in ALL + ["algebraic"]:
        assert name in str(info.value)


@pytest.fixture
def scratch_registry():
    added: list[str] = []
    yield added
    for name in added:
        if name in gates.names():
            gates.unregister(name)


def test_register_user_gate_and_duplicates(scratch_registry) -> None:
    @gates.register("my-tanh2", aliases=("mt2",))
    class Tanh2(gates.TemperatureGate):
        """f' = sech^2(z)."""

        def primitive(self, z):
            return torch.tanh(z)

        def shape(self, z):
            return 1 / torch.cosh(z) ** 2

    scratch_registry.append("my-tanh2")
    assert "my-tanh2" in gates.names() and gates.make("mt2", tau_pos=3.0).name == "my-tanh2"
    assert gates.check(gates.make("my-tanh2")).passed
    for taken in ("my-tanh2", "mt2", "sigmoid", "algebraic"):
        with pytest.raises(ValueError, match="already registered"):
            gates.register(taken)
    with pytest.raises(TypeError, match="subclass of softgate.gates.Gate"):
        gates.register("not-a-gate")(object)
    with pytest.raises(ValueError, match="invalid gate name"):
        gates.register("has space")
    gates.unregister("mt2")  # by alias: removes the gate and its alias
    scratch_registry.clear()
    assert "my-tanh2" not in gates.names() and "mt2" not in gates.aliases()


@pytest.mark.parametrize("name,params,match", [
    ("sigmoid", {"tau_pos": 0.0}, "tau_pos must be > 0, got 0"),
    ("erf", {"tau_neg": -1.0}, "tau_neg must be > 0, got -1"),
    ("arctan", {"tau_pos": float("nan")}, "tau_pos must be finite"),
    ("softsign", {"tau_neg": float("inf")}, "tau_neg must be finite"),
    ("clip", {"eps_low": -0.1}, "eps_low must be >= 0, got -0.1"),
    ("clip", {"eps_high": float("inf")}, "eps_high must be finite"),
    ("student", {"nu": 0.0}, "nu must be > 0"),
    ("student", {"nu": -2.0}, "nu must be > 0"),
    ("sigmoid", {"temperature": 1.0}, "unknown parameter 'temperature' for gate 'sigmoid'; accepted parameters: "
                                      "tau_pos, tau_neg"),
    ("clip", {"tau_pos": 1.0}, "accepted parameters: eps_low, eps_high"),
    ("identity", {"eps_low": 0.1}, "accepted parameters: none"),
    ("sigmoid", {"tau_pos": "5"}, "must be a number"),
    ("sigmoid", {"tau_pos": True}, "must be a number"),
])
def test_parameter_validation(name: str, params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        gates.make(name, **params)


def test_with_params_and_equality() -> None:
    gate = gates.make("student", nu=5.0)
    other = gate.with_params(tau_pos=10.0)
    assert other.params == {"tau_pos": 10.0, "tau_neg": 12.0, "nu": 5.0} and gate.params["tau_pos"] == 10.0
    assert other == gates.make("student", tau_pos=10.0, nu=5.0) and other == gate
    other = gate.with_params(tau_pos=3.0)
    assert other != gate and repr(other) == "student(tau_pos=3, tau_neg=12, nu=5)"
    assert other.temperatures == (3.0, 12.0) and gates.make("clip").temperatures is None


# ---------------------------------------------------------------------------------------------------------------
# Gates from user callables
# ---------------------------------------------------------------------------------------------------------------


def test_from_derivative_normalizes_and_integrates() -> None:
    # 7 sech^2(x - 1) normalized is sigmoid's f' at tau = 2; f is integrated numerically.
    user = gates.from_derivative(lambda x: 7 / torch.cosh(x - 1) ** 2, name="sech2")
    ref = gates.make("sigmoid", tau_pos=2.0, tau_neg=2.0)
    x = t64([1e-9, 0.2, 0.999, 1.0, 1.0001, 1.7, 3.0, 42.0, 1e4, 1e30])
    one = t64([1.0])
    assert user.df(one, 1.0).item() == pytest.approx(1.0, abs=1e-15)
    torch.testing.assert_close(user.df(x, 1.0), ref.df(x, 1.0), rtol=1e-14, atol=1e-300)
    torch.testing.assert_close(user.f(x, -1.0) - user.f(one, -1.0), ref.f(x, 1.0) - ref.f(one, 1.0),
                               rtol=1e-13, atol=1e-14)
    assert user.name == "sech2" and user.params == {}
    assert gates.check(user).passed


def test_from_function_uses_autograd_and_normalizes() -> None:
    user = gates.from_function(lambda x: 5 * torch.atan(3 * (x - 1)), name="atan3")
    ref = gates.make("arctan", tau_pos=3.0, tau_neg=3.0)
    x = torch.linspace(0.01, 9.0, 300, dtype=F64)
    torch.testing.assert_close(user.df(x, 1.0), ref.df(x, 1.0), rtol=1e-14, atol=1e-16)
    # f up to the additive constant (the paper's f(1) = 1 vs the user's f(1) = 0)
    torch.testing.assert_close(user.f(x, 1.0) + 1, ref.f(x, 1.0), rtol=1e-14, atol=1e-15)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(user.f(xg, 1.0).sum(), xg)
    assert torch.equal(grad, user.df(x, 1.0))


def test_user_gate_errors_and_registration(scratch_registry) -> None:
    with pytest.raises(ValueError, match="f'\\(1\\) must be finite and > 0"):
        gates.from_derivative(lambda x: (x - 1) ** 2, name="zero-at-one")
    with pytest.raises(ValueError, match="f'\\(1\\) must be finite and > 0"):
        gates.from_function(lambda x: -x, name="decreasing")
    gate = gates.from_derivative(lambda x: torch.exp(-(x - 1) ** 2), name="gauss-user", register=True)
    scratch_registry.append("gauss-user")
    made = gates.make("gauss-user")
    assert made.name == "gauss-user" and torch.equal(made.df(t64([1.5]), 1.0), gate.df(t64([1.5]), 1.0))
    with pytest.raises(ValueError, match="already registered"):
        gates.from_derivative(lambda x: torch.exp(-(x - 1) ** 2), name="gauss-user", register=True)


# ---------------------------------------------------------------------------------------------------------------
# Admissibility (paper.md, "Admissible gates")
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,params", [
    ("sigmoid", {}), ("erf", {}), ("arctan", {}), ("softsign", {}), ("student", {}),
    ("sigmoid", {"tau_pos": 10.0, "tau_neg": 12.0}), ("student", {"nu": 0.5, "tau_pos": 13.0, "tau_neg": 15.0}),
    ("arctan", {"tau_pos": 300.0, "tau_neg": 0.05}),
])
def test_admissible_gates_pass(name: str, params: dict) -> None:
    report = gates.check(gates.make(name, **params))
    assert report.passed, str(report)
    assert len(report.results) == 8 and {(r.condition, r.branch) for r in report.results} == {
        (c, b) for c in (1, 2, 3, 4) for b in ("A>0", "A<0")}


def test_identity_fails_condition_4_only() -> None:
    report = gates.check(gates.make("identity"))
    assert not report.passed
    assert report.failed("A>0") == {4} and report.failed("A<0") == {4}


def test_clip_fails_condition_1_at_the_trust_region_edges() -> None:
    report = gates.check(gates.make("clip", eps_low=0.2, eps_high=0.28))
    assert 1 in report.failed("A>0") and 1 in report.failed("A<0")
    assert report.result(1, "A>0").x == pytest.approx(1.28, abs=1e-9)
    assert report.result(1, "A<0").x == pytest.approx(0.8, abs=1e-9)
    # and, as the maths says, PPO's clip leaves large ratios ungated when A < 0: x f'(x) = x does not vanish
    assert report.failed("A>0") == {1} and report.failed("A<0") == {1, 4}
    assert "condition 1 fails (A>0): f' jumps by 1 at x=1.28" in str(report)


@pytest.mark.parametrize("label,fn,expected", [
    ("peak-off-1", lambda x: torch.exp(-(x - 1.3) ** 2), {2, 3}),
    ("bump", lambda x: torch.exp(-4 * (x - 1) ** 2) + 0.3 * torch.exp(-20 * (x - 3) ** 2), {3}),
    ("heavy-tail", lambda x: (1 + (x - 1).abs()) ** -0.5, {4}),
    ("jump", lambda x: torch.where((x - 1).abs() < 0.5, 1.0, 0.5) * torch.exp(-(x - 1) ** 2), {1}),
])
def test_bad_user_gates_fail_the_right_condition(label: str, fn, expected: set[int]) -> None:
    report = gates.check(gates.from_derivative(fn, name=label))
    assert report.failed("A>0") == expected and report.failed("A<0") == expected, str(report)


def test_report_locates_the_failure() -> None:
    report = gates.check(gates.from_derivative(lambda x: torch.exp(-(x - 1.3) ** 2), name="off"))
    assert report.result(2, "A>0").x == pytest.approx(1.3, abs=1e-3)
    text = str(report)
    assert "FAIL" in text and "condition 2 fails (A>0): max f' = " in text and "at x=1.3" in text
    assert "x in (0, 50]" in text  # the grid is stated


def test_a_kink_in_f_prime_is_still_c1() -> None:
    # f' = exp(-|x - 1|) is continuous (f is C^1) though not differentiable at 1.
    assert gates.check(gates.from_derivative(lambda x: torch.exp(-(x - 1).abs()), name="kink")).passed


def test_wrong_derivative_is_caught_by_condition_1() -> None:
    class Wrong(Gate):
        name = "wrong"

        def _f(self, x, pos):
            return torch.atan(x - 1)

        def _df(self, x, pos):  # the derivative of atan(2 (x-1)) / 2 instead
            return 1 / (1 + 4 * (x - 1) ** 2)

    report = gates.check(Wrong())
    assert report.failed() == {1} and "is not the derivative of f" in report.result(1, "A>0").detail


def test_check_custom_grid_and_validation() -> None:
    report = gates.check(gates.make("erf"), grid=torch.linspace(0.05, 5, 400, dtype=F64))
    assert report.passed and "custom grid" in report.grid
    with pytest.raises(ValueError, match="grid must hold"):
        gates.check(gates.make("erf"), grid=t64([0.0, 1.0, 2.0]))
