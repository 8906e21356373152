"""The gate registry (name -> ``Gate`` subclass, with aliases) and ``GateSpec``, the gate as one value.

Gates are the axis users extend, so they get a registry; registering a name that is taken is an error (a silent
override would change what an existing config means). Everything that needs a gate's parameters (config, run.json,
report, sweeps, plug-ins, ``softgate gates``) reads them from here: ``defaults(name)`` is the one home of each
default, ``GateSpec`` the one value that carries a gate around.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from softgate.gates.base import Gate

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


def make_accepted(name: str, candidates: Mapping[str, float | None],
                  extra: Mapping[str, float] | None = None) -> Gate:
    """Build ``name`` from the ``candidates`` its family accepts, plus ``extra`` passed on as given.

    This is how the plug-ins build a gate from a host framework's config: ``candidates`` are the host's fields that
    may be gate parameters (e.g. verl's ``tau_pos`` and clip range); keys the family does not take, and ``None``
    values, are left out, so the registry's defaults fill them. ``extra`` (the user's explicit gate parameters)
    wins over ``candidates``, and a key the family does not know there is an error listing the accepted ones.
    """
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

