"""softgate.gates.admissibility: the paper's four conditions on the built-in families, on gates that break one
of them, and the report."""

from __future__ import annotations

import pytest
import torch
from gate_refs import F64, t64

from softgate import gates
from softgate.gates import Gate


@pytest.mark.parametrize("name,params", [
    ("sigmoid", {}), ("erf", {}), ("arctan", {}), ("softsign", {}), ("student", {}),
    ("sigmoid", {"tau_pos": 10.0, "tau_neg": 12.0}), ("student", {"nu": 0.5, "tau_pos": 13.0, "tau_neg": 15.0}),
    ("arctan", {"tau_pos": 300.0, "tau_neg": 0.05}),
])
def test_admissible_gates_pass(name: str, params: dict) -> None:
    report = gates.check(gates.make(name, **params))
    assert report.passed, str(report)
    assert len(report.results) == 8 and {(r.condition, r.branch) for r in report.results} == {
        (c, b) for c in (1, 2, 3, 4) for b in ("A>0", "A<0")}


def test_identity_fails_condition_4_only() -> None:
    report = gates.check(gates.make("identity"))
    assert not report.passed
    assert report.failed("A>0") == {4} and report.failed("A<0") == {4}


def test_clip_fails_condition_1_at_the_trust_region_edges() -> None:
    report = gates.check(gates.make("clip", eps_low=0.2, eps_high=0.28))
    assert 1 in report.failed("A>0") and 1 in report.failed("A<0")
    assert report.result(1, "A>0").x == pytest.approx(1.28, abs=1e-9)
    assert report.result(1, "A<0").x == pytest.approx(0.8, abs=1e-9)
    # and, as the maths says, PPO's clip leaves large ratios ungated when A < 0: x f'(x) = x does not vanish
    assert report.failed("A>0") == {1} and report.failed("A<0") == {1, 4}
    assert "condition 1 fails (A>0): f' jumps by 1 at x=1.28" in str(report)


@pytest.mark.parametrize("label,fn,expected", [
    ("peak-off-1", lambda x: torch.exp(-(x - 1.3) ** 2), {2, 3}),
    ("bump", lambda x: torch.exp(-4 * (x - 1) ** 2) + 0.3 * torch.exp(-20 * (x - 3) ** 2), {3}),
    ("heavy-tail", lambda x: (1 + (x - 1).abs()) ** -0.5, {4}),
    ("jump", lambda x: torch.where((x - 1).abs() < 0.5, 1.0, 0.5) * torch.exp(-(x - 1) ** 2), {1}),
])
def test_bad_user_gates_fail_the_right_condition(label: str, fn, expected: set[int]) -> None:
    report = gates.check(gates.from_derivative(fn, name=label))
    assert report.failed("A>0") == expected and report.failed("A<0") == expected, str(report)


def test_report_locates_the_failure() -> None:
    report = gates.check(gates.from_derivative(lambda x: torch.exp(-(x - 1.3) ** 2), name="off"))
    assert report.result(2, "A>0").x == pytest.approx(1.3, abs=1e-3)
    text = str(report)
    assert "FAIL" in text and "condition 2 fails (A>0): max f' = " in text and "at x=1.3" in text
    assert "x in (0, 50]" in text  # the grid is stated


def test_a_kink_in_f_prime_is_still_c1() -> None:
    # f' = exp(-|x - 1|) is continuous (f is C^1) though not differentiable at 1.
    assert gates.check(gates.from_derivative(lambda x: torch.exp(-(x - 1).abs()), name="kink")).passed


def test_wrong_derivative_is_caught_by_condition_1() -> None:
    class Wrong(Gate):
        name = "wrong"

        def _f(self, x, pos):
            return torch.atan(x - 1)

        def _df(self, x, pos):  # the derivative of atan(2 (x-1)) / 2 instead
            return 1 / (1 + 4 * (x - 1) ** 2)

    report = gates.check(Wrong())
    assert report.failed() == {1} and "is not the derivative of f" in report.result(1, "A>0").detail


def test_check_custom_grid_and_validation() -> None:
    report = gates.check(gates.make("erf"), grid=torch.linspace(0.05, 5, 400, dtype=F64))
    assert report.passed and "custom grid" in report.grid
    with pytest.raises(ValueError, match="grid must hold"):
        gates.check(gates.make("erf"), grid=t64([0.0, 1.0, 2.0]))


# ---------------------------------------------------------------------------------------------------------------
# The stricter check: f' sampled densely out to 1e4, x f'(x) judged by its trend out to 1e300
# ---------------------------------------------------------------------------------------------------------------

TEMPERATURE_FAMILIES = [name for name in gates.names() if "tau_pos" in gates.defaults(name)]


@pytest.mark.parametrize("name", TEMPERATURE_FAMILIES)
@pytest.mark.parametrize("taus", [None, (1.0, 1.05), (10.0, 12.0)])
def test_every_temperature_family_passes(name: str, taus: tuple[float, float] | None) -> None:
    params = {} if taus is None else {"tau_pos": taus[0], "tau_neg": taus[1]}
    report = gates.check(gates.make(name, **params))
    assert report.passed, str(report)


def _bump_at_300(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-(x - 1) ** 2) + 2 * torch.exp(-(x - 300) ** 2)


def test_a_bump_far_from_one_fails_and_is_located() -> None:
    # f'(300) = 2 > f'(1) = 1: invisible on (0, 50] plus one point per decade (the old check passed it).
    gate = gates.from_derivative(_bump_at_300, name="bump-300")
    assert gate.df(t64([300.0]), 1.0).item() == pytest.approx(2.0)
    report = gates.check(gate)
    for branch in ("A>0", "A<0"):
        assert report.failed(branch) == {2, 3}, str(report)
        peak = report.result(2, branch)
        assert peak.x == pytest.approx(300.0, abs=1e-6) and "max f' = 2 at x=300" in peak.detail
        rise = report.result(3, branch).x  # bisected to a point on the bump's rising flank, where f' increases
        assert 250 < rise < 300
        assert (gate.df(t64([rise + 1e-3]), 1.0) > gate.df(t64([rise]), 1.0)).item()


def test_a_narrow_rise_between_samples_is_bisected() -> None:
    # f' halves before x = 1000.2 and recovers within ~0.05 after it: between two samples of the far segment
    # (spacing ~0.53 there) f' rises, and bisection finds where it starts to: at ~1000.1, where the sigmoid's
    # relative slope first exceeds the 2 / x at which 1 / (1 + (x - 1)^2) falls.
    def fn(x: torch.Tensor) -> torch.Tensor:
        return (0.5 + 0.5 * torch.sigmoid((x - 1000.2) / 0.01)) / (1 + (x - 1) ** 2)

    gate = gates.from_derivative(fn, name="step-up")
    report = gates.check(gate)
    assert report.failed() == {3}, str(report)
    where = report.result(3, "A>0").x
    assert 1000.0 < where < 1000.2
    assert (gate.df(t64([where + 1e-6]), 1.0) > gate.df(t64([where]), 1.0)).item()
    assert (gate.df(t64([where - 1e-2]), 1.0) > gate.df(t64([where]), 1.0)).item()  # still falling before


def _half_tail(x: torch.Tensor) -> torch.Tensor:
    # f'(x) = (1 + y^-0.01) / (2 y) with y = 1 + |x - 1|: f'(1) = 1, decreasing on both sides, and for x >= 1
    # x f'(x) = (1 + x^-0.01) / 2 -> 1/2 exactly. Its log-log slope was -0.004 over 1e20..1e30 (the old check's
    # window), so the old check passed it.
    y = 1 + (x - 1).abs()
    return (1 + y ** -0.01) / (2 * y)


def test_x_f_prime_levelling_off_at_one_half_fails_condition_4() -> None:
    gate = gates.from_derivative(_half_tail, name="half-tail")
    x = t64([1e100, 1e200, 1e300])
    torch.testing.assert_close(x * gate.df(x, 1.0), 0.5 * (1 + x ** -0.01), rtol=1e-13, atol=0)
    report = gates.check(gate)
    assert report.failed("A>0") == {4} and report.failed("A<0") == {4}, str(report)
    assert "x f'(x) = 0.5 at x=1e300 does not vanish" in report.result(4, "A>0").detail


def test_a_stalling_decay_fails_condition_4() -> None:
    # x f'(x) = (1 + x^-0.004) / 2 for x >= 1: over 1e200..1e300 it still decays as x^-3.7e-4 (faster than
    # tail_slope), but at less than half the rate of 1e100..1e200 (x^-8.2e-4): it levels off, at 1/2.
    def fn(x: torch.Tensor) -> torch.Tensor:
        y = 1 + (x - 1).abs()
        return (1 + y ** -0.004) / (2 * y)

    report = gates.check(gates.from_derivative(fn, name="stall"))
    assert report.failed() == {4} and "its decay stalls" in report.result(4, "A>0").detail, str(report)


def test_student_with_tiny_nu_passes() -> None:
    # x f'(x) ~ x^-nu: at nu = 1e-3 still 1e-3 at x = 1e300, but a power law with a steady rate.
    report = gates.check(gates.make("student", nu=1e-3))
    assert report.passed, str(report)
    assert "decaying as x^-0.001" in report.result(4, "A>0").detail
