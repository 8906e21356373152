"""softgate.gates.registry: names, aliases, registration of user families, parameter validation, GateSpec."""

from __future__ import annotations

import pytest
import torch
from gate_refs import ALL, scratch_registry  # noqa: F401  (scratch_registry is a fixture)

from softgate import gates


def test_registry_names_and_alias() -> None:
    assert set(ALL) <= set(gates.names())
    assert gates.aliases()["algebraic"] == "softsign"
    gate = gates.make("algebraic", tau_pos=2.0)
    assert type(gate) is type(gates.make("softsign")) and gate.name == "softsign"
    assert gate.params == {"tau_pos": 2.0, "tau_neg": 12.0}
    assert gates.make("sigmoid").params == {"tau_pos": 10.0, "tau_neg": 12.0}  # the paper's best
    assert gates.make("clip").params == {"eps_low": 0.2, "eps_high": 0.2}
    assert gates.defaults("student")["nu"] > 0


def test_unknown_gate_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown gate 'sigmoidd'") as info:
        gates.make("sigmoidd")
    for name in ALL + ["algebraic"]:
        assert name in str(info.value)



def test_register_user_gate_and_duplicates(scratch_registry) -> None:  # noqa: F811
    @gates.register("my-tanh2", aliases=("mt2",))
    class Tanh2(gates.TemperatureGate):
        """f' = sech^2(z)."""

        def primitive(self, z):
            return torch.tanh(z)

        def shape(self, z):
            return 1 / torch.cosh(z) ** 2

    scratch_registry.append("my-tanh2")
    assert "my-tanh2" in gates.names() and gates.make("mt2", tau_pos=3.0).name == "my-tanh2"
    assert gates.check(gates.make("my-tanh2")).passed
    for taken in ("my-tanh2", "mt2", "sigmoid", "algebraic"):
        with pytest.raises(ValueError, match="already registered"):
            gates.register(taken)
    with pytest.raises(TypeError, match="subclass of softgate.gates.Gate"):
        gates.register("not-a-gate")(object)
    with pytest.raises(ValueError, match="invalid gate name"):
        gates.register("has space")
    gates.unregister("mt2")  # by alias: removes the gate and its alias
    scratch_registry.clear()
    assert "my-tanh2" not in gates.names() and "mt2" not in gates.aliases()


@pytest.mark.parametrize("name,params,match", [
    ("sigmoid", {"tau_pos": 0.0}, "tau_pos must be > 0, got 0"),
    ("erf", {"tau_neg": -1.0}, "tau_neg must be > 0, got -1"),
    ("arctan", {"tau_pos": float("nan")}, "tau_pos must be finite"),
    ("softsign", {"tau_neg": float("inf")}, "tau_neg must be finite"),
    ("clip", {"eps_low": -0.1}, "eps_low must be >= 0, got -0.1"),
    ("clip", {"eps_high": float("inf")}, "eps_high must be finite"),
    ("student", {"nu": 0.0}, "nu must be > 0"),
    ("student", {"nu": -2.0}, "nu must be > 0"),
    ("sigmoid", {"temperature": 1.0}, "unknown parameter 'temperature' for gate 'sigmoid'; accepted parameters: "
                                      "tau_pos, tau_neg"),
    ("clip", {"tau_pos": 1.0}, "accepted parameters: eps_low, eps_high"),
    ("identity", {"eps_low": 0.1}, "accepted parameters: none"),
    ("sigmoid", {"tau_pos": "5"}, "must be a number"),
    ("sigmoid", {"tau_pos": True}, "must be a number"),
])
def test_parameter_validation(name: str, params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        gates.make(name, **params)


def test_with_params_and_equality() -> None:
    gate = gates.make("student", nu=5.0)
    other = gate.with_params(tau_pos=10.0)
    assert other.params == {"tau_pos": 10.0, "tau_neg": 12.0, "nu": 5.0} and gate.params["tau_pos"] == 10.0
    assert other == gates.make("student", tau_pos=10.0, nu=5.0) and other == gate
    other = gate.with_params(tau_pos=3.0)
    assert other != gate and repr(other) == "student(tau_pos=3, tau_neg=12, nu=5)"
    assert other.temperatures == (3.0, 12.0) and gates.make("clip").temperatures is None



# ---------------------------------------------------------------------------------------------------------------
# GateSpec: the gate as one value
# ---------------------------------------------------------------------------------------------------------------


def test_spec_fills_defaults_and_labels_every_parameter() -> None:
    spec = gates.GateSpec.of("student", nu=8.0)
    assert spec.params == {"tau_pos": 10.0, "tau_neg": 12.0, "nu": 8.0} and spec.label == "student-10-12-8"
    assert gates.GateSpec.of("sigmoid").label == "sigmoid-10-12"
    assert gates.GateSpec.of("clip", eps_low=0.2, eps_high=0.28).label == "clip-0.2-0.28"
    assert gates.GateSpec.of("identity").label == "identity"
    # nu = 1 and nu = 8 are two gates, with two labels (the report keeps them apart)
    one, eight = gates.GateSpec.of("student", nu=1.0), gates.GateSpec.of("student", nu=8.0)
    assert one != eight and one.label != eight.label and len({one, eight}) == 2
    # None means "the family's default"; an alias resolves to the canonical name
    assert gates.GateSpec.of("algebraic", tau_pos=None) == gates.GateSpec.of("softsign")
    assert str(spec) == "student(tau_pos=10, tau_neg=12, nu=8)" and gates.make("student", nu=8.0).spec == spec


@pytest.mark.parametrize("name", ALL)
def test_spec_round_trips_through_both_dict_forms(name: str) -> None:
    spec = gates.make(name).spec
    assert gates.GateSpec.from_dict(spec.to_dict()) == spec  # run.json: {"name", "params"}
    assert gates.GateSpec.from_dict({"name": name, **spec.params}) == spec  # YAML: flat
    assert spec.build() == gates.make(name)
    if "tau_pos" in spec.params:
        assert spec.build(tau_pos=3.0).params["tau_pos"] == 3.0


@pytest.mark.parametrize("data,match", [
    ({"params": {}}, "a gate is a mapping with a 'name'"),
    ("sigmoid", "a gate is a mapping with a 'name'"),
    ({"name": "sigmoid", "nu": 3.0}, "unknown parameter 'nu' for gate 'sigmoid'"),
    ({"name": "nope"}, "unknown gate 'nope'"),
])
def test_spec_errors(data, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        gates.GateSpec.from_dict(data)


def test_user_gate_with_its_own_parameter_builds_from_a_flat_config(scratch_registry) -> None:  # noqa: F811
    @gates.register("powtail")
    class PowTail(gates.Gate):
        """f' = (1 + |x - 1|)^-k, f = 1 + sign(u) ((1 + |u|)^(1-k) - 1) / (1 - k); admissible for k > 1."""

        param_defaults = {"k": 2.0}

        def _validate(self, params: dict[str, float]) -> None:
            if params["k"] <= 1:
                raise ValueError(f"gate {self.name!r}: k must be > 1, got {params['k']:g}")

        def _f(self, x, pos):
            u, k = x - 1, self.params["k"]
            return 1 + torch.sign(u) * ((1 + u.abs()) ** (1 - k) - 1) / (1 - k)

        def _df(self, x, pos):
            return (1 + (x - 1).abs()) ** -self.params["k"]

    scratch_registry.append("powtail")
    spec = gates.GateSpec.from_dict({"name": "powtail", "k": 3.5})  # as `gate: {name: powtail, k: 3.5}` in YAML
    assert spec.params == {"k": 3.5} and spec.label == "powtail-3.5"
    assert gates.GateSpec.from_dict(spec.to_dict()) == spec
    gate = spec.build()
    assert isinstance(gate, PowTail) and gates.check(gate).passed
    with pytest.raises(ValueError, match="k must be > 1, got 0.5"):
        gates.GateSpec.from_dict({"name": "powtail", "k": 0.5})
    # The plug-ins' helper: host fields the family does not take are left out, the user's own parameters kept.
    built = gates.make_accepted("powtail", {"tau_pos": 1.0, "eps_low": 0.2}, {"k": 4.0})
    assert built.params == {"k": 4.0}


def test_make_accepted_keeps_what_the_family_takes() -> None:
    host = {"tau_pos": 1.0, "tau_neg": None, "eps_low": 0.1, "eps_high": 0.3}
    assert gates.make_accepted("erf", host).params == {"tau_pos": 1.0, "tau_neg": 12.0}  # None: the default
    assert gates.make_accepted("clip", host).params == {"eps_low": 0.1, "eps_high": 0.3}
    assert gates.make_accepted("identity", host).params == {}
    assert gates.make_accepted("student", host, {"nu": 5.0, "tau_pos": 2.0}).params == {
        "tau_pos": 2.0, "tau_neg": 12.0, "nu": 5.0}  # the explicit extra wins
    with pytest.raises(ValueError, match="unknown parameter 'nu' for gate 'erf'"):
        gates.make_accepted("erf", host, {"nu": 5.0})
