"""The smooth temperature families of the paper: sigmoid (SAPO), erf, arctan, softsign.

Every family is written with ``z = tau * (x - 1)`` as ``f(x) = c + F(z) / tau`` and ``f'(x) = phi(z)`` with
``phi(0) = 1`` (paper.md, "The four gate families"), which is what makes the far tails easy to keep finite. The
temperature is picked per element by the sign of the advantage: ``tau_pos`` where A > 0, ``tau_neg`` otherwise.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from softgate.gates.base import Gate
from softgate.gates.registry import register


class TemperatureGate(Gate):
    """Base of the smooth families: temperature ``tau_pos`` for A > 0, ``tau_neg`` otherwise.

    Default temperatures (10, 12) are the paper's best; SAPO's own (1, 1.05) are one argument away. This is
    their one home: the config, the CLI and the plug-ins read them from here.

    ``_f`` / ``_df`` take ``x`` and ``pos`` broadcastable rather than broadcast (``broadcast_inputs = False``): the
    temperature is built at the shape of ``pos`` ([B, 1] for per-sequence advantages, as the losses pass them) and
    ``z = tau * (x - 1)`` is the first tensor of the output shape. Subclasses overriding ``_f`` / ``_df`` must keep
    that (or set ``broadcast_inputs = True``).
    """

    param_defaults: ClassVar[dict[str, float]] = {"tau_pos": 10.0, "tau_neg": 12.0}
    # f(1); additive constants do not change gradients (paper.md: "the paper picks them so that f(1) = 1 or to
    # match SAPO").
    offset: ClassVar[float] = 1.0
    broadcast_inputs: ClassVar[bool] = False

    def _validate(self, params: dict[str, float]) -> None:
        for key in ("tau_pos", "tau_neg"):
            if params[key] <= 0:
                raise ValueError(f"gate {self.name!r}: {key} must be > 0, got {params[key]:g}")

    def _tau(self, x: Tensor, pos: Tensor) -> Tensor:
        """tau_pos where ``pos``, tau_neg elsewhere, in x's dtype, at the shape of ``pos`` (not the output's).

        Shapes:
            x: ``S1`` (only its dtype and device are used); pos: ``S2`` bool -> ``S2``.
        """
        # Filled on the device (no host-to-device copy per call); in x's dtype, so bfloat16 ratios get a bfloat16
        # tau as before. At pos's shape: a [B, 1] pos costs B elements, not a full [B, T] fill per call.
        tau = torch.full(pos.shape, self.params["tau_neg"], dtype=x.dtype, device=x.device)
        return tau.masked_fill_(pos, self.params["tau_pos"])

    def _f(self, x: Tensor, pos: Tensor) -> Tensor:
        tau = self._tau(x, pos)
        value = self.primitive(tau * (x - 1)) / tau
        # offset 0 (sigmoid) skips a full-size pass; 0 + v == v except for the sign of a zero.
        return value + self.offset if self.offset else value

    def _df(self, x: Tensor, pos: Tensor) -> Tensor:
        return self.shape(self._tau(x, pos) * (x - 1))

    def primitive(self, z: Tensor) -> Tensor:
        """F(z) with F' = phi; finite for every z including +-inf."""
        raise NotImplementedError

    def shape(self, z: Tensor) -> Tensor:
        """phi(z) = f'(1 + z / tau), with phi(0) = 1; in [0, 1], finite for every z including +-inf."""
        raise NotImplementedError


@register("sigmoid")
class SigmoidGate(TemperatureGate):
    """SAPO: f = (4/tau) sigmoid(tau (x-1)), f' = 4 s (1-s) = sech^2(tau (x-1) / 2); exponential tail."""

    offset: ClassVar[float] = 0.0  # SAPO's own constant: f(1) = 2 / tau

    def primitive(self, z: Tensor) -> Tensor:
        return 4.0 * torch.sigmoid(z)

    def shape(self, z: Tensor) -> Tensor:
        # s (1 - s) written as sigmoid(z) sigmoid(-z): 1 - s would round to 0 long before e^{-|z|} underflows.
        return 4.0 * torch.sigmoid(z) * torch.sigmoid(-z)


@register("erf")
class ErfGate(TemperatureGate):
    """f = 1 + sqrt(pi/2)/tau erf(tau (x-1) / sqrt 2), f' = exp(-tau^2 (x-1)^2 / 2); Gaussian tail."""

    def primitive(self, z: Tensor) -> Tensor:
        return math.sqrt(math.pi / 2) * torch.erf(z * (1 / math.sqrt(2)))

    def shape(self, z: Tensor) -> Tensor:
        return torch.exp(-0.5 * z * z)  # z*z = inf only where the exact value underflows anyway


@register("arctan")
class ArctanGate(TemperatureGate):
    """f = 1 + arctan(tau (x-1)) / tau, f' = 1 / (1 + tau^2 (x-1)^2); polynomial tail ~u^-2."""

    def primitive(self, z: Tensor) -> Tensor:
        # atan2(z, 1) is atan(z) (both within 1 ulp of it; they differ in the last bit for a few % of inputs)
        # and about 1.7x faster than torch.atan on CPU (float32 and float64, torch 2.13): atan dominates this gate.
        return torch.atan2(z, torch.ones((), dtype=z.dtype, device=z.device))

    def shape(self, z: Tensor) -> Tensor:
        return 1.0 / (1.0 + z * z)


def _softsign_bound(dtype: torch.dtype) -> float:
    """A |z| beyond which z / sqrt(1 + z^2) rounds to +-1 in ``dtype`` and below which z^2 cannot overflow:
    sqrt(max) / 4 (float32: 4.6e18, float64: 3.4e153, float16: 64), where 1 - z / sqrt(1 + z^2) ~ 1 / (2 z^2)
    is far below the dtype's half-ulp of 1."""
    return math.sqrt(torch.finfo(dtype).max) / 4


@register("softsign", aliases=("algebraic",))
class SoftsignGate(TemperatureGate):
    """f = 1 + (x-1) / sqrt(1 + tau^2 (x-1)^2), f' = (1 + tau^2 (x-1)^2)^(-3/2); polynomial tail ~u^-3."""

    def primitive(self, z: Tensor) -> Tensor:
        # z / sqrt(1 + z^2), with z clamped first so that z^2 stays finite: beyond the bound the exact value
        # rounds to +-1 anyway, and z = +-inf gives +-1 instead of inf * 0 = NaN. (clamp keeps NaN as NaN.)
        bound = _softsign_bound(z.dtype)
        z = z.clamp(-bound, bound)
        return z * torch.rsqrt(1.0 + z * z)

    def shape(self, z: Tensor) -> Tensor:
        # Unguarded on purpose: z^2 = inf only where the exact (1 + z^2)^(-3/2) <= max^(-3/2) underflows (float16:
        # to its smallest subnormal), and rsqrt(inf) = 0 is that value; no inf * 0 can occur in the forward.
        r = torch.rsqrt(1.0 + z * z)
        return r * r * r
