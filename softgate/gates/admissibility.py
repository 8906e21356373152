"""The admissibility check: the paper's four conditions on a gate (paper.md, "Admissible gates"), verified
numerically on both temperature branches, one function per condition.

1. f is C^1;  2. f'(1) = 1 is the global maximum of f';  3. f' decreases away from 1 on each side;
4. x f'(x) -> 0 as x -> inf.

f' is sampled on three sets: the grid on (0, 50] (``default_grid()``, where trust regions live), a dense far
segment on [50, 1e4] (``far_grid()``: bumps of f' far from 1 are still found) and a probe of one point per decade
from 1e1 to 1e300 (the tail). A violation found between two samples is then localized by bisection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from softgate.gates.base import Gate
from softgate.gates.quadrature import gauss_legendre

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
    """Condition 4: |x f'(x)| at the last probe point (1e300) at or below this counts as 0."""
    tail_slope: float = 1e-4
    """Condition 4: otherwise x f' must decay at least as x^-tail_slope over the probe's last 100 decades."""
    tail_stall: float = 0.5
    """Condition 4: ... and that decay rate must be at least ``tail_stall`` times the rate over the 100 decades
    before: a power law keeps its rate, a curve levelling off at a limit L > 0 (L + C x^-q) loses it."""


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


def far_grid() -> Tensor:
    """The dense far segment: 10001 log-spaced points on [50, 1e4] (relative spacing 5.3e-4: 0.16 at x = 300,
    5.3 at 1e4), where f' is checked for conditions 1-3 (f' only: f is integrated on the grid)."""
    return torch.logspace(math.log10(50.0), 4, 10001, dtype=torch.float64)


_PROBE = torch.logspace(1, 300, 300, dtype=torch.float64)  # one point per decade, 1e1 .. 1e300
_WINDOW = 100  # decades per window of the condition-4 decay rates: 1e100..1e200 and 1e200..1e300
_GRID_TEXT = ("x in (0, 50]: 4001 log-spaced in [1e-6, 50], 1 +- 10^[-8, 0) and 1 +- [0, 0.5] step 2.5e-4; "
              "f' on [50, 1e4]: 10001 log-spaced; far-tail probe x = 1e1..1e300 (per decade) and x = 0")


@dataclass(frozen=True)
class _Samples:
    """One branch of one gate evaluated once for all four conditions.

    Shapes: x, df: [n] (grid + far segment + probe, sorted); xf, f: [m] (grid + probe, sorted); grid_max: the
    right end of the grid (where f is integrated for condition 1).
    """

    gate: Gate
    branch: str
    adv: float
    x: Tensor
    df: Tensor
    xf: Tensor
    f: Tensor
    grid_max: float

    def df_at(self, x: Tensor | float) -> Tensor:
        return self.gate.df(torch.as_tensor(x, dtype=torch.float64), self.adv)

    def result(self, condition: int, passed: bool, detail: str, x: float | None = None) -> ConditionResult:
        return ConditionResult(condition, self.branch, passed, detail, x)


def _sample(gate: Gate, branch: str, grid: Tensor) -> _Samples:
    adv = BRANCHES[branch]
    x = torch.unique(torch.cat([grid, far_grid(), _PROBE]))
    xf = torch.unique(torch.cat([grid, _PROBE]))
    with torch.no_grad():
        return _Samples(gate, branch, adv, x, gate.df(x, adv), xf, gate.f(xf, adv), float(grid[-1]))


def _fmt(x: float) -> str:
    return f"{x:.6g}"


# -- 1. C^1: finite, no jump of f', and df is the derivative of f --------------------------------------------------


def _bisect_jumps(s: _Samples, a: Tensor, b: Tensor, iterations: int = 60) -> tuple[Tensor, Tensor]:
    """Shrink each [a, b] onto the half where f' changes most; returns the final intervals' |delta f'| and a.
    60 halvings leave 1e-18 of the interval: a jump survives, a steep but continuous f' does not."""
    for _ in range(iterations):
        m = 0.5 * (a + b)
        fa, fm, fb = (s.df_at(t) for t in (a, m, b))
        left = (fm - fa).abs() >= (fb - fm).abs()
        a, b = torch.where(left, a, m), torch.where(left, m, b)
    return (s.df_at(b) - s.df_at(a)).abs(), a


def _c1_finite(s: _Samples) -> ConditionResult | None:
    zero = torch.zeros(1, dtype=torch.float64)
    if not (torch.isfinite(s.df_at(zero)).all() and torch.isfinite(s.gate.f(zero, s.adv)).all()):
        return s.result(1, False, "f or f' is not finite at x=0", 0.0)
    for x, values in ((s.x, s.df), (s.xf, s.f)):
        bad = ~torch.isfinite(values)
        if bad.any():
            where = float(x[bad][0])
            return s.result(1, False, f"f or f' is not finite at x={_fmt(where)}", where)
    return None


def _c1_jump(s: _Samples, tol: Tolerances) -> ConditionResult | None:
    flagged = (s.df[1:] - s.df[:-1]).abs() > tol.jump
    if not flagged.any():
        return None
    size, at = _bisect_jumps(s, s.x[:-1][flagged], s.x[1:][flagged])
    if not (size > tol.jump).any():
        return None
    i = int(torch.argmax(size))
    return s.result(1, False, f"f' jumps by {float(size[i]):.3g} at x={_fmt(float(at[i]))}", float(at[i]))


def _c1_integral(s: _Samples, tol: Tolerances) -> ConditionResult:
    """f(b) - f(a) must equal the integral of df over [a, b] (5-point Gauss-Legendre) on every grid interval: the
    derivative test without a step size to tune, and indifferent to a kink of f' at a grid point (x = 1). Only
    intervals inside the grid: the probe's decade-wide steps are too coarse for a 5-point rule."""
    inside = s.xf[1:] <= s.grid_max
    lo, hi, f_lo, f_hi = s.xf[:-1][inside], s.xf[1:][inside], s.f[:-1][inside], s.f[1:][inside]
    nodes, weights = gauss_legendre(5)
    half = 0.5 * (hi - lo)
    with torch.no_grad():
        inner = s.df_at(lo[:, None] + half[:, None] * (nodes + 1.0))  # [n, 5]
        integral = half * (inner @ weights)
    err = (f_hi - f_lo - integral).abs()
    eps = torch.finfo(torch.float64).eps
    allowed = tol.fd * (hi - lo) * (1 + inner.abs().amax(-1)) + 16 * eps * (f_lo.abs() + f_hi.abs())
    excess = err - allowed
    worst = int(torch.argmax(excess))
    if excess[worst] > 0:
        a_w, b_w = float(lo[worst]), float(hi[worst])
        return s.result(1, False, f"f' is not the derivative of f on [{_fmt(a_w)}, {_fmt(b_w)}]: mean slope of f "
                        f"{float((f_hi - f_lo)[worst] / (2 * half[worst])):.6g}, mean f' "
                        f"{float(integral[worst] / (2 * half[worst])):.6g}", a_w)
    rel = float((err / (hi - lo)).max())
    return s.result(1, True, f"no jump of f'; f(b) - f(a) = int_a^b f' to {rel:.2g} x (b - a)")


def _condition_1(s: _Samples, tol: Tolerances) -> ConditionResult:
    return _c1_finite(s) or _c1_jump(s, tol) or _c1_integral(s, tol)


# -- 2. f'(1) = 1 is the global maximum -------------------------------------------------------------------------


def _zoom_max(s: _Samples, lo: float, hi: float, rounds: int = 12, points: int = 33) -> tuple[float, float]:
    """Where f' peaks inside [lo, hi]: sample ``points`` points, keep the neighbours of the best, repeat (each
    round shrinks the bracket 16-fold). Returns (x, f'(x))."""
    best_x, best = lo, -math.inf
    for _ in range(rounds):
        xs = torch.linspace(lo, hi, points, dtype=torch.float64)
        values = torch.nan_to_num(s.df_at(xs), nan=-math.inf)
        i = int(torch.argmax(values))
        if float(values[i]) > best:
            best_x, best = float(xs[i]), float(values[i])
        lo, hi = float(xs[max(i - 1, 0)]), float(xs[min(i + 1, points - 1)])
    return best_x, best


def _condition_2(s: _Samples, tol: Tolerances) -> ConditionResult:
    at_one = float(s.df_at(torch.ones(1, dtype=torch.float64))[0])
    if not abs(at_one - 1) <= tol.value:
        return s.result(2, False, f"f'(1) = {at_one:.12g}, not 1", 1.0)
    values = torch.where(torch.isfinite(s.df), s.df, torch.full_like(s.df, -math.inf))
    i = int(torch.argmax(values))
    peak, peak_x = float(values[i]), float(s.x[i])
    if peak <= at_one + tol.value:
        return s.result(2, True, f"f'(1) = {at_one:.12g}, max at x={_fmt(peak_x)}")
    # The sample is the best point of the grid; the true peak lies between its neighbours.
    peak_x, peak = _zoom_max(s, float(s.x[max(i - 1, 0)]), float(s.x[min(i + 1, len(s.x) - 1)]))
    return s.result(2, False, f"max f' = {peak:.6g} at x={_fmt(peak_x)} exceeds f'(1) = 1", peak_x)


# -- 3. f' decreases away from 1 --------------------------------------------------------------------------------


def _first_rise(s: _Samples, outward: Tensor, tol: Tolerances) -> tuple[float, float] | None:
    """The first pair of neighbours, moving away from 1 along ``outward`` (indices into s.x, starting at 1),
    where f' rises by more than ``tol.monotone * (1 + f')``; returns (near x, far x) or None."""
    d = s.df[outward]
    rise = d[1:] - d[:-1] - tol.monotone * (1 + d[:-1].abs())
    bad = torch.nonzero(rise > 0)
    if bad.numel() == 0:
        return None
    i = int(bad[0])
    return float(s.x[outward][i]), float(s.x[outward][i + 1])


def _bisect_rise(s: _Samples, near: float, far: float, iterations: int = 60) -> float:
    """Narrow [near, far] (f'(far) > f'(near)) onto a point where f' rises moving away from 1: keep the half
    whose far end is above its near end (one of them is)."""
    f_near = float(s.df_at(near))
    for _ in range(iterations):
        mid = 0.5 * (near + far)
        f_mid = float(s.df_at(mid))
        if f_mid > f_near:
            far = mid
        else:
            near, f_near = mid, f_mid
    return near


def _condition_3(s: _Samples, tol: Tolerances) -> ConditionResult:
    index = torch.arange(len(s.x))
    sides = (("left", index[s.x <= 1].flip(0)), ("right", index[s.x >= 1]))
    for side, outward in sides:
        pair = _first_rise(s, outward, tol)
        if pair is not None:
            where = _bisect_rise(s, *pair)
            return s.result(3, False, f"f' increases moving {side} of 1 at x={_fmt(where)} (f' = "
                            f"{float(s.df_at(pair[0])):.6g} at x={_fmt(pair[0])}, {float(s.df_at(pair[1])):.6g} at "
                            f"x={_fmt(pair[1])})", where)
    return s.result(3, True, "non-increasing on each side of 1")


# -- 4. x f'(x) -> 0 at infinity --------------------------------------------------------------------------------


def _condition_4(s: _Samples, tol: Tolerances) -> ConditionResult:
    """x f' keeps decreasing over the far decades (from 1e10 on, until it is below ``tail_value``) and ends at or
    below ``tail_value`` at 1e300; or, if it is still larger there, it decays as a power that does not stall."""
    with torch.no_grad():
        tail = (_PROBE * s.df_at(_PROBE)).abs()  # |x f'|: a negative tail does not vanish either
    last = float(tail[-1])
    fails = f"x f'(x) = {last:.3g} at x=1e300 does not vanish"
    if not torch.isfinite(tail).all():
        return s.result(4, False, "x f'(x) is not finite on the probe", float(_PROBE[~torch.isfinite(tail)][0]))
    far = _PROBE >= 1e10
    t, x = tail[far], _PROBE[far]
    rises = (t[1:] > t[:-1] * (1 + 1e-12)) & (t[1:] > tol.tail_value)
    if rises.any():
        i = int(torch.nonzero(rises)[0])
        return s.result(4, False, f"{fails}: it increases from {float(t[i]):.3g} at x={_fmt(float(x[i]))} to "
                        f"{float(t[i + 1]):.3g} at x={_fmt(float(x[i + 1]))}", float(x[i + 1]))
    if last <= tol.tail_value:
        return s.result(4, True, f"x f'(x) decreasing from x=1e10 on, {last:.3g} at x=1e300")
    # Still above tail_value at 1e300: the decay has to be a power law that keeps its rate. Rates are log-log
    # slopes (d log10(x f') / d log10 x) over the windows 1e100..1e200 and 1e200..1e300.
    t100, t200 = float(tail[-1 - 2 * _WINDOW]), float(tail[-1 - _WINDOW])
    rate_prev, rate = math.log10(t200 / t100) / _WINDOW, math.log10(last / t200) / _WINDOW
    if rate > -tol.tail_slope:
        return s.result(4, False, f"{fails}: it decays as x^{rate:.4g} over 1e200..1e300, slower than "
                        f"x^-{tol.tail_slope:g}", 1e300)
    if rate > tol.tail_stall * rate_prev:
        return s.result(4, False, f"{fails}: its decay stalls (x^{rate_prev:.3g} over 1e100..1e200, x^{rate:.3g} "
                        "over 1e200..1e300), as when it levels off at a limit > 0", 1e300)
    return s.result(4, True, f"x f'(x) = {last:.3g} at x=1e300, decaying as x^{rate:.3g}")


_CONDITIONS = (_condition_1, _condition_2, _condition_3, _condition_4)


def check(gate: Gate, *, grid: Tensor | None = None, tol: Tolerances | None = None) -> AdmissibilityReport:
    """Verify the paper's four admissibility conditions numerically, for both temperature branches.

    1. C^1: f' finite on all samples, f on the grid and the probe, both at x = 0; no jump of f' (a change above
       ``tol.jump`` between neighbouring samples is bisected 60 times: a jump survives, a steep but continuous f'
       does not); and on every grid interval [a, b], f(b) - f(a) equals the 5-point Gauss-Legendre integral of ``df`` to
       ``tol.fd * (b - a) * (1 + max f')`` plus rounding of f.
    2. |f'(1) - 1| <= ``tol.value`` and no sample has f' above f'(1) + ``tol.value`` (the peak is then located
       between the samples).
    3. f' non-increasing moving away from 1 over all samples (``tol.monotone`` relative slack); a rise is then
       localized by bisection.
    4. On the probe x = 1e1..1e300: |x f'(x)| non-increasing from 1e10 on (until below ``tol.tail_value``) and
       at most ``tol.tail_value`` at 1e300; or a power decay at least as fast as x^-``tol.tail_slope`` over the
       last 100 decades that keeps ``tol.tail_stall`` of its rate over the 100 before.

    ``grid`` (1-D, x > 0) replaces ``default_grid()``; the far segment ``far_grid()`` and the probe are always
    added.
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
               "f' on [50, 1e4]: 10001 log-spaced; far-tail probe x = 1e1..1e300 and x = 0"
    results = []
    for branch in BRANCHES:
        samples = _sample(gate, branch, grid_t)
        results.extend(condition(samples, tol) for condition in _CONDITIONS)
    results.sort(key=lambda r: (r.condition, list(BRANCHES).index(r.branch)))
    return AdmissibilityReport(gate=repr(gate), results=results, grid=text, tol=tol)
