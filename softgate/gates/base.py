"""The ``Gate`` base class: a gate f with its closed-form derivative f', and the autograd Function tying them.

The paper's per-token surrogate is ``f(r, A) * A`` (paper.md, "Objective"): its gradient is ``f'(r) * r * A *
grad log pi``, so a gate is judged by its derivative ``f'``. The advantage enters only through its sign: a family
may pick a parameter per sign (the temperatures ``tau_pos`` where A > 0, ``tau_neg`` otherwise, as in SAPO).

``Gate.f`` is differentiable and its autograd gradient is the closed-form ``Gate.df`` exactly (a
``torch.autograd.Function`` whose backward calls ``df``): naive autograd of the written formulas overflows in the
far tails (e.g. ``tau^2 (x-1)^2`` for softsign) and would disagree with ``df`` in the last bits.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

if TYPE_CHECKING:
    from softgate.gates.registry import GateSpec


class Gate:
    """A gate f with its closed-form derivative; subclasses implement ``_f`` and ``_df`` on broadcast tensors.

    Attributes:
        name: the registry name of the family.
        params: the full parameter set (defaults merged with the given values), all floats.

    Subclasses set ``param_defaults`` (the accepted parameters and their defaults) and may override
    ``_validate`` for per-family constraints. ``_f(x, pos)`` / ``_df(x, pos)`` receive the ratio ``x`` and the
    bool ``pos = A > 0`` already broadcast to the output shape, unless the class sets ``broadcast_inputs = False``
    (then they get them as given, broadcastable, and must return the broadcast shape themselves).
    """

    name: ClassVar[str] = ""
    param_defaults: ClassVar[dict[str, float]] = {}
    # False for families whose formulas broadcast on their own: per-row quantities (the temperature of [B, 1]
    # advantages) then stay [B, 1] instead of being materialized at [B, T] on every call.
    broadcast_inputs: ClassVar[bool] = True

    def __init__(self, **params: float) -> None:
        accepted = self.param_defaults
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            listed = ", ".join(accepted) if accepted else "none"
            raise ValueError(f"unknown parameter {', '.join(map(repr, unknown))} for gate {self.name!r}; "
                             f"accepted parameters: {listed}")
        merged: dict[str, float] = {}
        for key, default in accepted.items():
            value = params.get(key, default)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"gate {self.name!r}: parameter {key} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"gate {self.name!r}: parameter {key} must be finite, got {value!r}")
            merged[key] = float(value)
        self._validate(merged)
        self.params: dict[str, float] = merged

    # -- to be provided by subclasses --------------------------------------------------------------------------
    def _validate(self, params: dict[str, float]) -> None:
        """Raise ValueError naming the parameter and value when ``params`` is not allowed."""

    def _f(self, x: Tensor, pos: Tensor) -> Tensor:
        raise NotImplementedError

    def _df(self, x: Tensor, pos: Tensor) -> Tensor:
        raise NotImplementedError

    # -- public ------------------------------------------------------------------------------------------------
    def f(self, ratio: Tensor, advantages: Tensor | float) -> Tensor:
        """The gate value f(r); differentiable in ``ratio`` with gradient exactly ``df``.

        Shapes:
            ratio: any shape ``S1``; advantages: any shape ``S2`` broadcastable with ``S1`` (only its sign is used).
            returns: ``broadcast(S1, S2)``, in the dtype of ``ratio`` (float32 / float64 / bfloat16 ...).
        """
        x, pos = _prepare(ratio, advantages)
        if torch.is_grad_enabled() and x.requires_grad:
            return _GateFunction.apply(x, pos, self)
        return self._eval_f(x, pos)

    def df(self, ratio: Tensor, advantages: Tensor | float) -> Tensor:
        """The closed-form derivative f'(r) (the per-token gate weight of the paper).

        Shapes:
            ratio: ``S1``; advantages: ``S2`` broadcastable with ``S1``; returns ``broadcast(S1, S2)`` in the dtype
            of ``ratio``. Plain torch ops: autograd through it differentiates the formula itself.
        """
        x, pos = _prepare(ratio, advantages)
        return self._eval_df(x, pos)

    def _eval_f(self, x: Tensor, pos: Tensor) -> Tensor:
        """``_f`` on the prepared (broadcastable) inputs, broadcast first if the class asks for it."""
        if self.broadcast_inputs:
            x, pos = torch.broadcast_tensors(x, pos)
        return self._f(x, pos)

    def _eval_df(self, x: Tensor, pos: Tensor) -> Tensor:
        """``_df`` on the prepared (broadcastable) inputs, broadcast first if the class asks for it."""
        if self.broadcast_inputs:
            x, pos = torch.broadcast_tensors(x, pos)
        return self._df(x, pos)

    @property
    def spec(self) -> GateSpec:
        """This gate as one value (name + full parameters)."""
        # Imported here: the registry imports this module.
        from softgate.gates.registry import GateSpec

        return GateSpec(self.name, dict(self.params))

    def with_params(self, **changes: float) -> Gate:
        """A new gate of the same family with some parameters changed (validated again)."""
        return type(self)(**{**self.params, **changes})

    @property
    def temperatures(self) -> tuple[float, float] | None:
        """``(tau_pos, tau_neg)`` for temperature families, None otherwise."""
        if "tau_pos" in self.params and "tau_neg" in self.params:
            return self.params["tau_pos"], self.params["tau_neg"]
        return None

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v:g}" for k, v in self.params.items())
        return f"{self.name}({inner})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.params == other.params  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.params.items()))))


def _prepare(ratio: Tensor, advantages: Tensor | float) -> tuple[Tensor, Tensor]:
    x = torch.as_tensor(ratio)
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    adv = torch.as_tensor(advantages, device=x.device)
    # Only the sign of A enters f: tau_pos where A > 0, tau_neg otherwise (A = 0 included, as in SAPO).
    return x, adv > 0


class _GateFunction(torch.autograd.Function):
    """f in the forward, ``grad * df`` in the backward: autograd of f is the closed form, bit for bit."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, pos: Tensor, gate: Gate) -> Tensor:  # type: ignore[override]
        ctx.gate = gate
        ctx.save_for_backward(x, pos)
        return gate._eval_f(x, pos)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        x, pos = ctx.saved_tensors
        # Written with ordinary ops, so a second derivative (create_graph=True) is autograd of df.
        grad_x = (grad * ctx.gate._eval_df(x, pos)).sum_to_size(x.shape)
        return grad_x, None, None

