"""The hard gates: PPO/GRPO's clip (DAPO's clip-higher with eps_high > eps_low) and the identity (no gate)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from softgate.gates.base import Gate
from softgate.gates.registry import register


@register("clip")
class ClipGate(Gate):
    """PPO/GRPO hard clip, eps_high > eps_low being DAPO's clip-higher: f A = min(r A, clip(r, 1-eps_l, 1+eps_h) A).

    For A > 0 this is f = min(r, 1 + eps_high); for A <= 0, f = max(r, 1 - eps_low). f' = 1 inside the trust
    region on the side that matters for the sign of A, 0 outside (the "hard gate" of paper.md). f' is taken as 1
    on the boundary itself, like ``torch.clamp``.
    """

    param_defaults: ClassVar[dict[str, float]] = {"eps_low": 0.2, "eps_high": 0.2}

    def _validate(self, params: dict[str, float]) -> None:
        for key in ("eps_low", "eps_high"):
            if params[key] < 0:
                raise ValueError(f"gate {self.name!r}: {key} must be >= 0, got {params[key]:g}")

    # Python-scalar bounds, as in PPO's torch.clamp(r, 1 - eps_low, 1 + eps_high): same rounding in float32.
    def _f(self, x: Tensor, pos: Tensor) -> Tensor:
        low, high = 1.0 - self.params["eps_low"], 1.0 + self.params["eps_high"]
        return torch.where(pos, x.clamp(max=high), x.clamp(min=low))

    def _df(self, x: Tensor, pos: Tensor) -> Tensor:
        low, high = 1.0 - self.params["eps_low"], 1.0 + self.params["eps_high"]
        return torch.where(pos, x <= high, x >= low).to(x.dtype)


@register("identity")
class IdentityGate(Gate):
    """No gate: f = r, f' = 1 (plain importance-weighted policy gradient)."""

    def _f(self, x: Tensor, pos: Tensor) -> Tensor:
        return x.clone()

    def _df(self, x: Tensor, pos: Tensor) -> Tensor:
        return torch.ones_like(x)
