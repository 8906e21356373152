"""Shared by the gate tests: the paper's formulas as independent references (plain torch, 30-digit mpmath) and a
registry fixture that cleans up the names a test registers."""

from __future__ import annotations

import math

import pytest
import torch

from softgate import gates

mpmath = pytest.importorskip("mpmath")

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


@pytest.fixture
def scratch_registry():
    """Names a test appends here are unregistered afterwards."""
    added: list[str] = []
    yield added
    for name in added:
        if name in gates.names():
            gates.unregister(name)
