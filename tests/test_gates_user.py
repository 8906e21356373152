"""softgate.gates.user: gates from a user's f' (quadrature) or f (autograd), normalized so that f'(1) = 1."""

from __future__ import annotations

import pytest
import torch
from gate_refs import F64, scratch_registry, t64  # noqa: F401  (scratch_registry is a fixture)

from softgate import gates


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


def test_user_gate_errors_and_registration(scratch_registry) -> None:  # noqa: F811
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

