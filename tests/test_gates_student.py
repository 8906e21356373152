"""softgate.gates.student: the quadrature against 30-digit mpmath, and the family's identities (nu = 1 is arctan,
nu = 2 is softsign at tau / sqrt 2, nu -> inf tends to erf)."""

from __future__ import annotations

import math

import pytest
import torch
from gate_refs import F64, mp_student_integral, mpmath, t64

from softgate import gates


@pytest.fixture(scope="module", autouse=True)
def _mp_precision():
    with mpmath.workdps(30):  # 30 digits for the references, restored afterwards
        yield


@pytest.mark.parametrize("nu", [0.05, 1.5, 7.5, 1e4])
def test_student_quadrature_matches_mpmath(nu: float) -> None:
    gate = gates.make("student", tau_pos=1.0, tau_neg=1.0, nu=nu)
    xs = [1 - 0.999, 1 - 1e-9, 1 + 1e-4, 1.5, 4.0, 1e2, 1e5, 1e15, 1e30]
    got = gate.f(t64(xs), 1.0)
    for g, x in zip(got.tolist(), xs):
        expected = float(1 + mp_student_integral(x - 1, nu))
        assert abs(g - expected) <= 1e-13 * abs(expected), f"nu={nu} x={x}: {g} vs {expected}"


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

