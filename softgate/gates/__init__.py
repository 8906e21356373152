"""Gate functions f(r) of smooth-gated policy optimization: the families, the registry, the admissibility check.

The paper's per-token surrogate is ``f(r, A) * A`` (paper.md, "Objective"), so a gate is judged by its derivative
f'. Public API::

    make(name, **params) -> Gate        names() -> list[str]        aliases() -> dict[str, str]
    @register(name, aliases=...)        unregister(name)            defaults(name) -> dict[str, float]
    GateSpec.of(name, **params)         gate_class(name)            make_accepted(name, candidates, extra)
    from_derivative(fn, name=...)       from_function(fn, name=...)
    check(gate, grid=..., tol=...) -> AdmissibilityReport

Layout: ``base`` (the ``Gate`` class and its autograd Function), ``registry`` (names, defaults, ``GateSpec``),
``families`` (sigmoid, erf, arctan, softsign), ``student``, ``clip`` (clip, identity), ``user`` (gates from
callables), ``admissibility`` (``check``), ``quadrature`` (Gauss-Legendre). Importing the package registers the
built-in families in this order.
"""

# ruff: noqa: I001  (the import order is the registration order, which names() and the docs show)
from softgate.gates.base import Gate
from softgate.gates.registry import (
    GateSpec,
    aliases,
    defaults,
    gate_class,
    make,
    make_accepted,
    names,
    register,
    unregister,
)
from softgate.gates.families import TemperatureGate
from softgate.gates import student as _student  # noqa: F401  registers "student"
from softgate.gates import clip as _clip  # noqa: F401  registers "clip" and "identity"
from softgate.gates.user import from_derivative, from_function
from softgate.gates.admissibility import (
    BRANCHES,
    CONDITIONS,
    AdmissibilityReport,
    ConditionResult,
    Tolerances,
    check,
    default_grid,
    far_grid,
)

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
    "far_grid",
    "from_derivative",
    "from_function",
    "gate_class",
    "make",
    "make_accepted",
    "names",
    "register",
    "unregister",
]
