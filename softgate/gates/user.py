"""Gates from user callables: ``from_derivative`` (f' given; f by quadrature over a fixed table) and
``from_function`` (f given; f' by autograd). Both are normalized so that f'(1) = 1."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from softgate.gates.base import Gate
from softgate.gates.quadrature import integrate
from softgate.gates.registry import register as register_gate

# f of a user f' is tabulated once on fixed knots, then completed locally: f(x) = F(t_k) + int_{t_k}^x f', with
# t_k the knot at or below x and the local integral by the same 16-node Gauss-Legendre rule. The knots resolve
# structure down to a scale of ~1% of the distance to 1 near 1 (10 per decade of |t - 1| from 1e-8), 0.01 on
# (0, 10], and 10 per decade above 10 up to 1e31; each table interval (and so each local piece) is then
# integrated to rounding. Beyond 1e31 the last local piece is long and accuracy degrades.
_USER_NODES = 16


@functools.lru_cache(maxsize=1)
def _user_knots() -> Tensor:
    d = torch.float64
    near = torch.logspace(-8, -2, 61, dtype=d)
    parts = [1 + near, 1 - near, torch.logspace(-12, -2, 101, dtype=d), torch.arange(1, 1001, dtype=d) / 100,
             torch.logspace(1, 31, 301, dtype=d)]
    return torch.unique(torch.cat(parts))  # sorted, contains 1.0


class _DerivativeGate(Gate):
    """A gate given by a user f' (normalized so f'(1) = 1); f = 1 + int_1^x f'(t) dt numerically."""

    _fn: ClassVar[Callable[[Tensor], Tensor]]
    _norm: ClassVar[float]
    _table: tuple[Tensor, Tensor] | None = None

    def _g(self, t: Tensor) -> Tensor:
        return torch.as_tensor(type(self)._fn(t), dtype=torch.float64) / type(self)._norm

    def _cumulative(self) -> tuple[Tensor, Tensor]:
        if self._table is None:
            knots = _user_knots()
            pieces = integrate(self._g, knots[:-1], knots[1:], _USER_NODES)
            cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(pieces, 0)])
            one = int(torch.searchsorted(knots, torch.tensor(1.0, dtype=torch.float64)))
            self._table = (knots, cum - cum[one])  # F(t_k) = int_1^{t_k} f'
        return self._table

    def _f(self, x: Tensor, pos: Tensor) -> Tensor:
        knots, cum = (t.to(x.device) for t in self._cumulative())
        flat = x.reshape(-1).to(torch.float64)
        k = (torch.searchsorted(knots, flat, right=True) - 1).clamp(0, knots.numel() - 1)
        value = 1.0 + cum[k] + integrate(self._g, knots[k], flat, _USER_NODES)
        return value.reshape(x.shape).to(x.dtype)

    def _df(self, x: Tensor, pos: Tensor) -> Tensor:
        return self._g(x.to(torch.float64)).to(x.dtype)


class _FunctionGate(Gate):
    """A gate given by a user f (scaled so f'(1) = 1); f' by autograd of the user's function."""

    _fn: ClassVar[Callable[[Tensor], Tensor]]
    _norm: ClassVar[float]

    def _f(self, x: Tensor, pos: Tensor) -> Tensor:
        return (torch.as_tensor(type(self)._fn(x.to(torch.float64))) / type(self)._norm).to(x.dtype)

    def _df(self, x: Tensor, pos: Tensor) -> Tensor:
        return (_autograd_derivative(type(self)._fn, x) / type(self)._norm).to(x.dtype)


def _autograd_derivative(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    with torch.enable_grad():
        xg = x.detach().to(torch.float64).requires_grad_(True)
        y = torch.as_tensor(fn(xg))
        if not y.requires_grad:
            return torch.zeros_like(xg)  # a constant f
        (grad,) = torch.autograd.grad(y.sum(), xg)
    return grad


def _user_gate(base: type[Gate], fn: Callable[[Tensor], Tensor], name: str, norm: float,
               register_it: bool) -> Gate:
    if not callable(fn):
        raise TypeError(f"gate {name!r}: expected a callable on tensors, got {fn!r}")
    if not (math.isfinite(norm) and norm > 0):
        raise ValueError(f"gate {name!r}: f'(1) must be finite and > 0 to normalize it to 1, got {norm!r}")
    cls = type(f"UserGate_{name}", (base,), {"name": name, "_fn": staticmethod(fn), "_norm": norm,
                                             "__doc__": f"User gate {name!r} ({base.__doc__})"})
    if register_it:
        register_gate(name)(cls)
    return cls()


def from_derivative(fn: Callable[[Tensor], Tensor], name: str = "custom", *, register: bool = False) -> Gate:
    """A gate from a user callable for f' (elementwise on float64 tensors of any shape, x > 0).

    softgate divides by fn(1) so that f'(1) = 1, and obtains f = 1 + int_1^x f'(t) dt by composite Gauss-Legendre
    quadrature (a table on ~1500 fixed knots, built on first use, plus one local piece; accurate to rounding for
    structure wider than ~0.01 on (0, 10] and up to x = 1e31). With ``register=True`` the gate also becomes
    available as ``make(name)``. The same f' serves both advantage signs.
    """
    norm = float(torch.as_tensor(fn(torch.ones(1, dtype=torch.float64))).reshape(-1)[0])
    return _user_gate(_DerivativeGate, fn, name, norm, register)


def from_function(fn: Callable[[Tensor], Tensor], name: str = "custom", *, register: bool = False) -> Gate:
    """A gate from a user callable for f (elementwise, differentiable with torch ops).

    f' comes from autograd of ``fn``; both are divided by f'(1) so that f'(1) = 1.
    """
    norm = float(_autograd_derivative(fn, torch.ones(1, dtype=torch.float64))[0])
    return _user_gate(_FunctionGate, fn, name, norm, register)
