"""Gate functions f(r) of smooth-gated policy optimization: the families, the registry, the admissibility check.

The paper's per-token surrogate is ``f(r, A) * A`` (paper.md, "Objective"): its gradient is ``f'(r) * r * A *
grad log pi``, so a gate is judged by its derivative ``f'``. The temperature is picked per element by the sign of
the advantage: ``tau_pos`` where A > 0, ``tau_neg`` otherwise (SAPO). Every family is written with
``z = tau * (x - 1)`` as ``f(x) = c + F(z) / tau`` and ``f'(x) = phi(z)`` with ``phi(0) = 1`` (paper.md, "The four
gate families"), which is what makes the far tails easy to keep finite.

Public API::

    make(name, **params) -> Gate        names() -> list[str]        aliases() -> dict[str, str]
    @register(name, aliases=...)        unregister(name)            defaults(name) -> dict[str, float]
    from_derivative(fn, name=...)       from_function(fn, name=...)
    check(gate, grid=..., tol=...) -> AdmissibilityReport

``Gate.f`` is differentiable and its autograd gradient is the closed-form ``Gate.df`` exactly (a
``torch.autograd.Function`` whose backward calls ``df``): naive autograd of the written formulas overflows in the
far tails (e.g. ``tau^2 (x-1)^2`` for softsign) and would disagree with ``df`` in the last bits.
"""

from __future__ import annotations

import functools
import math
import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

__all__ = [
    "BRANCHES",
    "CONDITIONS",
    "AdmissibilityReport",
    "ConditionResult",
    "Gate",
    "GateSpec",
    "TemperatureGate",
    "Tolerances",
    "aliases",
    "check",
    "default_grid",
    "defaults",
    "from_derivative",
    "from_function",
    "gate_class",
    "make",
    "names",
    "register",
    "unregister",
]

# --------------------------------------------------------------------------------------------------------------
# Gate base class
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Gate]] = {}
_ALIASES: dict[str, str] = {}
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
G = TypeVar("G", bound=type[Gate])


def register(name: str, *, aliases: Sequence[str] = ()) -> Callable[[G], G]:
    """Class decorator adding a ``Gate`` subclass to the registry under ``name`` (and ``aliases``).

    A name (or alias) already taken raises ValueError: gates are the axis users extend, so a silent override
    would change what an existing config means.
    """
    for label in (name, *aliases):
        if not isinstance(label, str) or not _NAME_RE.match(label):
            raise ValueError(f"invalid gate name {label!r}: use letters, digits, '_', '-' or '.', "
                             "starting with a letter")
        if label in _REGISTRY or label in _ALIASES:
            raise ValueError(f"gate name {label!r} is already registered; pick another name or unregister it first")

    def decorate(cls: G) -> G:
        if not (isinstance(cls, type) and issubclass(cls, Gate)):
            raise TypeError(f"@register({name!r}) expects a subclass of softgate.gates.Gate, got {cls!r}")
        cls.name = name
        _REGISTRY[name] = cls
        for alias in aliases:
            _ALIASES[alias] = name
        return cls

    return decorate


def unregister(name: str) -> None:
    """Remove a gate (and its aliases) from the registry; mostly for tests and notebooks."""
    canonical = _resolve(name)
    del _REGISTRY[canonical]
    for alias in [a for a, target in _ALIASES.items() if target == canonical]:
        del _ALIASES[alias]


def names() -> list[str]:
    """Registered gate names (canonical, without aliases), in registration order."""
    return list(_REGISTRY)


def aliases() -> dict[str, str]:
    """Alias -> canonical name."""
    return dict(_ALIASES)


def _resolve(name: str) -> str:
    if name in _REGISTRY:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    known = ", ".join(names())
    alias_text = ", ".join(f"{a} (= {t})" for a, t in _ALIASES.items())
    suffix = f"; aliases: {alias_text}" if alias_text else ""
    raise ValueError(f"unknown gate {name!r}; known gates: {known}{suffix}")


def defaults(name: str) -> dict[str, float]:
    """The parameters a registered gate accepts, with their defaults."""
    return dict(_REGISTRY[_resolve(name)].param_defaults)


def make(name: str, **params: float) -> Gate:
    """Build the gate ``name`` (or an alias) with ``params`` (validated; unknown names list the accepted ones)."""
    return _REGISTRY[_resolve(name)](**params)


def make_accepted(name: str, candidates: dict[str, float], extra: dict[str, float] | None = None) -> Gate:
    """Build ``name`` from the ``candidates`` its family accepts (others are left out: e.g. an engine's clip range
    for a temperature gate), plus ``extra`` passed on as given (an unknown key there is an error)."""
    accepted = defaults(name)
    params = {key: float(value) for key, value in candidates.items() if key in accepted and value is not None}
    params.update({key: float(value) for key, value in (extra or {}).items()})
    return make(name, **params)


@dataclass(frozen=True, eq=False)
class GateSpec:
    """A gate as one value: its canonical registry name and its full parameter set (defaults filled in).

    This is how a gate travels through configs, run.json (``{"name": ..., "params": {...}}``), sweeps, reports and
    the plug-ins; everything that needs the parameters reads them from here, never from a hand-written list, so a
    user-registered gate with a parameter of its own works everywhere.
    """

    name: str
    params: dict[str, float]

    @classmethod
    def of(cls, name: str, **params: float | None) -> GateSpec:
        """Validate through the registry (unknown names and parameters are errors listing the accepted ones);
        ``None`` values mean "the family's default"."""
        gate = make(name, **{k: v for k, v in params.items() if v is not None})
        return cls(gate.name, dict(gate.params))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateSpec:
        """From ``{"name": ..., "params": {...}}`` (run.json) or ``{"name": ..., <param>: ...}`` (YAML)."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ValueError(f"a gate is a mapping with a 'name' and its parameters, got {data!r}")
        params = data.get("params") if isinstance(data.get("params"), dict) else \
            {k: v for k, v in data.items() if k != "name"}
        return cls.of(data["name"], **params)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params)}

    def build(self, **changes: float) -> Gate:
        """The gate object, with some parameters changed (e.g. the EUR controller's temperatures)."""
        return make(self.name, **{**self.params, **changes})

    @property
    def label(self) -> str:
        """Short unique name of the gate, e.g. ``sigmoid-10-12``, ``student-10-12-8``, ``clip-0.2-0.28``: the
        family then every parameter value in the family's order."""
        return "-".join([self.name, *(f"{value:g}" for value in self.params.values())])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GateSpec) and (self.name, self.params) == (other.name, other.params)

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.params.items()))))

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={v:g}" for k, v in self.params.items())
        return f"{self.name}({inner})"


def gate_class(name: str) -> type[Gate]:
    """The class registered under ``name`` (or an alias)."""
    return _REGISTRY[_resolve(name)]


# --------------------------------------------------------------------------------------------------------------
# Temperature families: f(x) = c + F(z) / tau, f'(x) = phi(z), z = tau (x - 1)
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Student-t family: one knob from polynomial to Gaussian tails
# --------------------------------------------------------------------------------------------------------------

_STUDENT_V_CAP = 8.0  # exp(-64) * w <= 1e-24: beyond v = 8 the integrand is below double precision of I
_QUAD_CHUNK = 1 << 14  # elements per quadrature block (bounds the [n, nodes] temporaries to a few MB)
_STUDENT_CHUNK = 1 << 11  # smaller blocks keep the student's [n, nodes] temporaries in cache: ~2.5x faster


def _student_nodes(nu: float) -> int:
    """Gauss-Legendre nodes for the student integral: the fewest giving a max relative error of ~1e-14 (1.2e-14
    at worst) against 30-digit mpmath over z in [1e-6, 1e300], measured for nu in [1e-3, 1e6]. Small nu needs
    more nodes: the poles of w(2 v^2 / nu) come within ~sqrt(pi nu / 2) of the real axis."""
    if nu >= 3:
        return 32
    if nu >= 1:
        return 40
    if nu >= 0.5:
        return 48
    return 80


@functools.lru_cache(maxsize=8)
def _gauss_legendre(n: int) -> tuple[Tensor, Tensor]:
    """Nodes and weights of n-point Gauss-Legendre on [-1, 1] (Golub-Welsch, float64, CPU)."""
    k = torch.arange(1, n, dtype=torch.float64)
    off = k / torch.sqrt(4 * k * k - 1)
    nodes, vecs = torch.linalg.eigh(torch.diag(off, 1) + torch.diag(off, -1))
    return nodes, 2 * vecs[0] ** 2


def _log1p_sq(a: Tensor, nu: float) -> Tensor:
    """log(1 + a^2 / nu) for a >= 0 without overflowing a^2 (inf only at a = inf)."""
    big = a > math.sqrt(nu)
    safe = torch.where(big, a, torch.ones_like(a))
    large = 2 * torch.log(safe) - math.log(nu) + torch.log1p(nu / (safe * safe))
    return torch.where(big, large, torch.log1p(a * a / nu))


def _student_integral(z: Tensor, nu: float) -> Tensor:
    """I(z) = int_0^z (1 + t^2/nu)^(-(nu+1)/2) dt (odd in z), accurate to ~1e-14 relative; float64 inside.

    Why this substitution: t = sqrt(nu) sinh(s), then v^2 = nu log cosh(s), turns the integral into

        I(z) = sqrt(2) int_0^V exp(-v^2) w(2 v^2 / nu) dv,   w(q) = sqrt(q / (1 - e^{-q})),
        V = sqrt((nu / 2) log(1 + z^2 / nu)),

    whose integrand is analytic on the real line (w(0) = 1, w(q) ~ sqrt(q)), Gaussian-decaying for every nu, and
    whose interval is short: V <= 8 matters, whatever z (1e30 or inf) and nu (heavy tails move into w, not into
    the interval). One Gauss-Legendre rule of 32 to 80 nodes (``_student_nodes``) is then exact to rounding
    (checked against mpmath in the tests). It also shows the nu -> inf limit at a glance: w -> 1 and
    I -> sqrt(pi/2) erf(z / sqrt 2), the erf gate. (The Student-t CDF route needs the regularized incomplete
    beta, which torch lacks.)
    """
    z64 = z.to(torch.float64)
    v_max = torch.sqrt(0.5 * nu * _log1p_sq(z64.abs(), nu)).clamp(max=_STUDENT_V_CAP).reshape(-1)
    nodes, weights = (t.to(z64.device) for t in _gauss_legendre(_student_nodes(nu)))
    u_sq, half_w = (0.5 * (nodes + 1.0)) ** 2, 0.5 * weights  # v = V u with u in (0, 1)
    out = torch.empty_like(v_max)
    for start in range(0, v_max.numel(), _STUDENT_CHUNK):
        v_c = v_max[start:start + _STUDENT_CHUNK]
        vv = (v_c * v_c)[:, None] * u_sq  # [n, K] v^2 at the nodes
        q = (vv * (2.0 / nu)).clamp_(min=1e-300)  # q > 0 keeps q / (1 - e^-q) finite; its limit at 0 is 1
        w = torch.expm1(-q).neg_()
        torch.div(q, w, out=w)
        w.sqrt_().mul_(vv.neg_().exp_())  # in place: the [n, K] temporaries dominate the cost
        out[start:start + _STUDENT_CHUNK] = v_c * (w @ half_w)
    # Below |z| ~ 1e-150, z^2 underflows and V = 0; there I(z) = z to double precision.
    tiny = z64.abs() < 1e-100
    integral = math.sqrt(2.0) * out.reshape(z64.shape) * torch.sign(z64)  # NaN in z stays NaN
    return torch.where(tiny, z64, integral).to(z.dtype)


@register("student")
class StudentGate(TemperatureGate):
    """f'(x) = (1 + tau^2 (x-1)^2 / nu)^(-(nu+1)/2): nu = 1 arctan, nu = 2 softsign(tau/sqrt 2), nu -> inf erf.

    f = 1 + I(tau (x-1)) / tau with I the integral of f' (Gauss-Legendre after a substitution, see
    ``_student_integral``; computed in float64 whatever the input dtype, then cast back).
    """

    param_defaults: ClassVar[dict[str, float]] = {"tau_pos": 10.0, "tau_neg": 12.0, "nu": 3.0}

    def _validate(self, params: dict[str, float]) -> None:
        super()._validate(params)
        if params["nu"] <= 0:
            raise ValueError(f"gate {self.name!r}: nu must be > 0 (tail index), got {params['nu']:g}")

    def primitive(self, z: Tensor) -> Tensor:
        return _student_integral(z, self.params["nu"])

    def shape(self, z: Tensor) -> Tensor:
        nu = self.params["nu"]
        return torch.exp(-0.5 * (nu + 1.0) * _log1p_sq(z.abs(), nu))


# --------------------------------------------------------------------------------------------------------------
# Hard clip and identity
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Gates from user callables
# --------------------------------------------------------------------------------------------------------------

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


def _gl_integral(fn: Callable[[Tensor], Tensor], a: Tensor, b: Tensor) -> Tensor:
    """int_a^b fn for each pair (a, b) (1-D float64), 16-node Gauss-Legendre, in blocks."""
    nodes, weights = (t.to(a.device) for t in _gauss_legendre(_USER_NODES))
    out = torch.empty_like(a)
    chunk = _QUAD_CHUNK
    for start in range(0, a.numel(), chunk):
        lo, hi = a[start:start + chunk, None], b[start:start + chunk, None]
        half = 0.5 * (hi - lo)
        vals = torch.as_tensor(fn(lo + half * (nodes + 1.0)), dtype=torch.float64)
        out[start:start + chunk] = half[:, 0] * (vals @ weights)
    return out


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
            pieces = _gl_integral(self._g, knots[:-1], knots[1:])
            cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(pieces, 0)])
            one = int(torch.searchsorted(knots, torch.tensor(1.0, dtype=torch.float64)))
            self._table = (knots, cum - cum[one])  # F(t_k) = int_1^{t_k} f'
        return self._table

    def _f(self, x: Tensor, pos: Tensor) -> Tensor:
        knots, cum = (t.to(x.device) for t in self._cumulative())
        flat = x.reshape(-1).to(torch.float64)
        k = (torch.searchsorted(knots, flat, right=True) - 1).clamp(0, knots.numel() - 1)
        value = 1.0 + cum[k] + _gl_integral(self._g, knots[k], flat)
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
        register(name)(cls)
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


# --------------------------------------------------------------------------------------------------------------
# Admissibility check (paper.md, "Admissible gates")
# --------------------------------------------------------------------------------------------------------------

CONDITIONS: dict[int, str] = {
    1: "f is C^1: f' continuous, f' = d f / dx",
    2: "f'(1) = 1 is the global max of f'",
    3: "f' decreases away from 1 on each side",
    4: "x f'(x) -> 0 as x -> inf",
}
BRANCHES: dict[str, float] = {"A>0": 1.0, "A<0": -1.0}


@dataclass(frozen=True)
class Tolerances:
    """Tolerances of ``check`` (absolute unless said otherwise; f' is O(1) for an admissible gate)."""

    value: float = 1e-9
    """Condition 2: |f'(1) - 1| and the excess of max f' over f'(1)."""
    monotone: float = 1e-9
    """Condition 3: allowed increase of f' between neighbouring points moving away from 1 (times 1 + f')."""
    jump: float = 1e-3
    """Condition 1: a change of f' that survives bisection of the interval down to ~1e-13 is a jump."""
    fd: float = 1e-6
    """Condition 1: |f(b) - f(a) - int_a^b df| <= fd * (b - a) * (1 + max f') (+ rounding of f) per interval."""
    tail_value: float = 1e-8
    """Condition 4: x f'(x) at the last probe point (1e30) at or below this passes outright."""
    tail_slope: float = 1e-3
    """Condition 4: otherwise d log(x f') / d log10(x) over the probe's last 10 decades must be <= -tail_slope
    and x f'(x) non-increasing from 1e10 on."""


@dataclass(frozen=True)
class ConditionResult:
    """One condition on one branch: passed or not, what was measured, and where it failed."""

    condition: int
    branch: str
    passed: bool
    detail: str
    x: float | None = None


@dataclass
class AdmissibilityReport:
    """Result of ``check``: one ``ConditionResult`` per condition (1..4) per branch (A>0, A<0)."""

    gate: str
    results: list[ConditionResult]
    grid: str
    tol: Tolerances = field(default_factory=Tolerances)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[ConditionResult]:
        return [r for r in self.results if not r.passed]

    def failed(self, branch: str | None = None) -> set[int]:
        """Numbers of the failed conditions (on one branch, or on any)."""
        return {r.condition for r in self.failures if branch is None or r.branch == branch}

    def result(self, condition: int, branch: str) -> ConditionResult:
        return next(r for r in self.results if r.condition == condition and r.branch == branch)

    def __str__(self) -> str:
        width = max(len(t) for t in CONDITIONS.values())
        lines = [f"admissibility of {self.gate}: {'PASS' if self.passed else 'FAIL'}",
                 f"grid: {self.grid}",
                 f"  #  {'condition':<{width}}  " + "  ".join(f"{b:<4}" for b in BRANCHES)]
        for number, title in CONDITIONS.items():
            cells = ["pass" if self.result(number, b).passed else "FAIL" for b in BRANCHES]
            lines.append(f"  {number}  {title:<{width}}  " + "  ".join(f"{c:<4}" for c in cells))
        for r in self.failures:
            lines.append(f"  condition {r.condition} fails ({r.branch}): {r.detail}")
        return "\n".join(lines)


def default_grid() -> Tensor:
    """The check's grid on (0, 50], float64, sorted: 4001 log-spaced points in [1e-6, 50]; 1 +- 10^[-8, 0)
    (801 each side, dense near 1); 1 +- [0, 0.5] uniformly (2001 points, spacing 2.5e-4, where trust regions
    end); and x = 1 itself."""
    d = torch.float64
    log_part = torch.logspace(-6, math.log10(50.0), 4001, dtype=d)
    near = torch.logspace(-8, math.log10(0.999), 801, dtype=d)
    uniform = torch.linspace(0, 0.5, 2001, dtype=d)
    grid = torch.cat([log_part, 1 + near, 1 - near, 1 + uniform, 1 - uniform, torch.ones(1, dtype=d)])
    return torch.unique(grid)  # sorted


_GRID_TEXT = ("x in (0, 50]: 4001 log-spaced in [1e-6, 50], 1 +- 10^[-8, 0) and 1 +- [0, 0.5] step 2.5e-4; "
              "far-tail probe x = 1e1..1e30 (per decade) and x = 0")
_PROBE = torch.logspace(1, 30, 30, dtype=torch.float64)


def _bisect_jumps(gate: Gate, a: Tensor, b: Tensor, adv: float, iterations: int = 60) -> tuple[Tensor, Tensor]:
    """Shrink each [a, b] onto the half where f' changes most; returns the final intervals' |delta f'| and a."""
    for _ in range(iterations):
        m = 0.5 * (a + b)
        fa, fm, fb = (gate.df(t, adv) for t in (a, m, b))
        left = (fm - fa).abs() >= (fb - fm).abs()
        a, b = torch.where(left, a, m), torch.where(left, m, b)
    return (gate.df(b, adv) - gate.df(a, adv)).abs(), a


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _check_branch(gate: Gate, branch: str, grid: Tensor, tol: Tolerances) -> list[ConditionResult]:
    adv = BRANCHES[branch]
    x = torch.unique(torch.cat([grid, _PROBE]))  # sorted, includes the probe for conditions 1-3
    with torch.no_grad():
        df = gate.df(x, adv)
        f = gate.f(x, adv)
    results: list[ConditionResult] = []

    # -- 1. C^1: finite, no jump of f', and df is the derivative of f -------------------------------------------
    zero = torch.zeros(1, dtype=torch.float64)
    bad = ~(torch.isfinite(df) & torch.isfinite(f))
    bad0 = ~(torch.isfinite(gate.df(zero, adv)) & torch.isfinite(gate.f(zero, adv)))
    c1: ConditionResult | None = None
    if bad.any() or bad0.any():
        where = 0.0 if bad0.any() else float(x[bad][0])
        c1 = ConditionResult(1, branch, False, f"f or f' is not finite at x={_fmt(where)}", where)
    if c1 is None:
        step = (df[1:] - df[:-1]).abs()
        flagged = step > tol.jump
        if flagged.any():
            size, at = _bisect_jumps(gate, x[:-1][flagged], x[1:][flagged], adv)
            jumps = size > tol.jump
            if jumps.any():
                i = int(torch.argmax(size))
                c1 = ConditionResult(1, branch, False, f"f' jumps by {float(size[i]):.3g} at x={_fmt(float(at[i]))}",
                                     float(at[i]))
    if c1 is None:
        # f(b) - f(a) must equal the integral of df over [a, b] (5-point Gauss-Legendre) on every grid interval:
        # the derivative test without a step size to tune, and indifferent to a kink of f' at a grid point (x = 1).
        # Only intervals inside the grid: the probe's decade-wide steps are too coarse for a 5-point rule.
        inside = x[1:] <= grid[-1]
        lo, hi, f_lo, f_hi = x[:-1][inside], x[1:][inside], f[:-1][inside], f[1:][inside]
        nodes, weights = _gauss_legendre(5)
        half = 0.5 * (hi - lo)
        with torch.no_grad():
            inner = gate.df(lo[:, None] + half[:, None] * (nodes + 1.0), adv)  # [n, 5]
            integral = half * (inner @ weights)
        err = (f_hi - f_lo - integral).abs()
        eps = torch.finfo(torch.float64).eps
        allowed = tol.fd * (hi - lo) * (1 + inner.abs().amax(-1)) + 16 * eps * (f_lo.abs() + f_hi.abs())
        excess = err - allowed
        worst = int(torch.argmax(excess))
        if excess[worst] > 0:
            a_w, b_w = float(lo[worst]), float(hi[worst])
            c1 = ConditionResult(1, branch, False, f"f' is not the derivative of f on [{_fmt(a_w)}, {_fmt(b_w)}]: "
                                 f"mean slope of f {float((f_hi - f_lo)[worst] / (2 * half[worst])):.6g}, mean f' "
                                 f"{float(integral[worst] / (2 * half[worst])):.6g}", a_w)
        else:
            rel = float((err / (hi - lo)).max())
            c1 = ConditionResult(1, branch, True, f"no jump of f'; f(b) - f(a) = int_a^b f' to {rel:.2g} x (b - a)")
    results.append(c1)

    # -- 2. f'(1) = 1 is the global maximum ----------------------------------------------------------------------
    one = torch.ones(1, dtype=torch.float64)
    at_one = float(gate.df(one, adv)[0])
    finite = torch.isfinite(df)
    peak_i = int(torch.argmax(torch.where(finite, df, torch.full_like(df, -math.inf))))
    peak, peak_x = float(df[peak_i]), float(x[peak_i])
    if not abs(at_one - 1) <= tol.value:
        results.append(ConditionResult(2, branch, False, f"f'(1) = {at_one:.12g}, not 1", 1.0))
    elif peak > at_one + tol.value:
        results.append(ConditionResult(2, branch, False, f"max f' = {peak:.6g} at x={_fmt(peak_x)} exceeds f'(1) = 1",
                                       peak_x))
    else:
        results.append(ConditionResult(2, branch, True, f"f'(1) = {at_one:.12g}, max at x={_fmt(peak_x)}"))

    # -- 3. monotone decrease away from 1 ------------------------------------------------------------------------
    right, left = x >= 1, x <= 1
    slack = lambda v: tol.monotone * (1 + v.abs())  # noqa: E731
    d_right = df[right]
    rise_r = d_right[1:] - d_right[:-1] - slack(d_right[:-1])  # moving right must not increase f'
    d_left = df[left]
    rise_l = d_left[:-1] - d_left[1:] - slack(d_left[1:])  # moving left must not increase f'
    bad_r, bad_l = rise_r > 0, rise_l > 0
    if bad_r.any() or bad_l.any():
        if bad_l.any():
            i = int(torch.nonzero(bad_l)[-1])  # nearest to 1
            where = float(x[left][i])
            text = f"f' increases moving left of 1 at x={_fmt(where)}"
        else:
            i = int(torch.nonzero(bad_r)[0])
            where = float(x[right][i + 1])
            text = f"f' increases moving right of 1 at x={_fmt(where)}"
        results.append(ConditionResult(3, branch, False, text, where))
    else:
        results.append(ConditionResult(3, branch, True, "non-increasing on each side of 1"))

    # -- 4. x f'(x) -> 0 at infinity -----------------------------------------------------------------------------
    with torch.no_grad():
        tail = (_PROBE * gate.df(_PROBE, adv)).abs()  # |x f'|: a negative tail does not vanish either
    last = float(tail[-1])
    from10 = tail[_PROBE >= 1e10]
    if not torch.isfinite(tail).all():
        results.append(ConditionResult(4, branch, False, "x f'(x) is not finite on the probe", 1e30))
    elif last <= tol.tail_value:
        results.append(ConditionResult(4, branch, True, f"x f'(x) = {last:.3g} at x=1e30"))
    else:
        slope = (math.log10(last) - math.log10(float(tail[-11]))) / 10.0 if float(tail[-11]) > 0 else math.inf
        non_increasing = bool((from10[1:] <= from10[:-1] * (1 + 1e-12)).all())
        if slope <= -tol.tail_slope and non_increasing:
            results.append(ConditionResult(4, branch, True, f"x f'(x) = {last:.3g} at x=1e30, decaying as "
                                           f"x^{slope:.3g}"))
        else:
            results.append(ConditionResult(4, branch, False, f"x f'(x) = {last:.3g} at x=1e30 does not vanish "
                                           f"(log-log slope {slope:+.3g} over 1e20..1e30)", 1e30))
    return results


def check(gate: Gate, *, grid: Tensor | None = None, tol: Tolerances | None = None) -> AdmissibilityReport:
    """Verify the paper's four admissibility conditions numerically, for both temperature branches.

    1. C^1: f and f' finite on the grid, the far probe and at x = 0; no jump of f' (a change above ``tol.jump``
       between neighbouring points is bisected 60 times: a jump survives, a steep but continuous f' does not);
       and on every grid interval [a, b], f(b) - f(a) equals the 5-point Gauss-Legendre integral of ``df`` to
       ``tol.fd * (b - a) * (1 + max f')`` plus rounding of f.
    2. |f'(1) - 1| <= ``tol.value`` and no point has f' above f'(1) + ``tol.value``.
    3. f' non-increasing moving away from 1 on the grid (``tol.monotone`` relative slack).
    4. On the probe x = 1e1..1e30: |x f'(x)| <= ``tol.tail_value`` at 1e30, or it decays as a power
       (slope <= -``tol.tail_slope`` per decade) and never increases from 1e10 on.

    ``grid`` (1-D, x > 0) replaces ``default_grid()``; the probe is always added.
    """
    tol = tol or Tolerances()
    if grid is None:
        grid_t, text = default_grid(), _GRID_TEXT
    else:
        grid_t = torch.as_tensor(grid, dtype=torch.float64).reshape(-1)
        if grid_t.numel() < 2 or not bool((grid_t > 0).all()) or not bool(torch.isfinite(grid_t).all()):
            raise ValueError("check: grid must hold at least 2 finite points x > 0")
        grid_t = torch.unique(torch.cat([grid_t, torch.ones(1, dtype=torch.float64)]))
        text = f"custom grid of {grid_t.numel()} points in [{_fmt(float(grid_t[0]))}, {_fmt(float(grid_t[-1]))}]; " \
               "far-tail probe x = 1e1..1e30 and x = 0"
    results = [r for branch in BRANCHES for r in _check_branch(gate, branch, grid_t, tol)]
    results.sort(key=lambda r: (r.condition, list(BRANCHES).index(r.branch)))
    return AdmissibilityReport(gate=repr(gate), results=results, grid=text, tol=tol)
