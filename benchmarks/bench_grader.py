"""Grader throughput and timeout rate on a mix of easy, symbolic and adversarial answers.

    python benchmarks/bench_grader.py [--timeout 5] [--workers 1] [--hangs 6] [--seed 0]

Prints, per category, items graded per second and how the items were decided, then the whole mix. Categories:

- ``trainer batch``: 128 synthetic-task completions (integer answers) through ``grade_answers``, the call the
  trainer makes every step (fast path only, no pool);
- ``numeric``: decimals, thousands separators, fractions, units (fast path);
- ``symbolic``: equivalent and non-equivalent LaTeX pairs that need math-verify (pool; cache disabled so every
  item is a real round trip);
- ``refused``: megabyte answers, NUL bytes, 1000-deep nested fractions (refused before parsing);
- ``hanging``: towers of exponents and 50-deep fractions that hang sympy (each costs one timeout).
"""

from __future__ import annotations

import argparse
import random
import time

from softgate.grading import Grader, GraderStats
from softgate.rewards import grade_answers


def numeric_items(rng: random.Random, n: int) -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
        v = rng.randint(-5000, 5000)
        pred = rng.choice([f"{v:,}", f"{v}.0", f"${v}", f"{v} apples", f"\\boxed{{{v}}}", str(v + rng.choice([0, 1]))])
        out.append((pred, str(v)))
    return out


def symbolic_items(rng: random.Random, n: int) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        a, b, k = rng.randint(2, 30), rng.randint(2, 30), rng.randint(2, 9)
        m = rng.choice([2, 3, 5, 6, 7])
        kind = i % 4
        if kind == 0:
            out.append((f"{k}\\sqrt{{{m}}}", f"\\sqrt{{{k * k * m}}}"))
        elif kind == 1:
            out.append((f"(x+{a})^2", f"x^2+{2 * a}x+{a * a + rng.choice([0, 1])}"))
        elif kind == 2:
            out.append((f"\\frac{{\\pi}}{{{a}}}", f"\\frac{{{b}\\pi}}{{{a * b}}}"))
        else:
            out.append((f"({a}, \\frac{{{b}}}{{{k}}})", f"\\left({a},\\frac{{{b * 2}}}{{{k * 2}}}\\right)"))
    return out


def refused_items() -> list[tuple[str, str]]:
    nested = "\\frac{" * 1000 + "1" + "}{2}" * 1000
    return [("7" * 1_000_000, "7"), ("1\x002", "12"), (nested, "1"), ("x" * 5000, "x")] * 5


def hanging_items(n: int) -> list[tuple[str, str]]:
    pool = ["10^{10^{10^{10}}}", "9^{9^{9}}", "\\frac{" * 50 + "1" + "}{2}" * 50, "2^{2^{2^{2^{2^{2}}}}}"]
    return [(pool[i % len(pool)], str(i)) for i in range(n)]


def run(grader: Grader, name: str, items: list[tuple[str, str]]) -> GraderStats:
    """Grade ``items`` in one call, print the rate and how they were decided; return that call's counters."""
    t0 = time.perf_counter()
    st = grader.grade_many([p for p, _ in items], [r for _, r in items]).stats
    dt = time.perf_counter() - t0
    print(
        f"{name:<14} {len(items):>6} items {dt:8.3f} s {len(items) / dt:>11.1f} items/s   "
        f"fast {st.fast_path:>5}  pool {st.symbolic:>4}  refused {st.too_long + st.control_chars:>3}  "
        f"timeouts {st.timeouts:>3}  errors {st.errors:>2}  unparsed {st.unparsed:>2}"
    )
    return st


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per math-verify item (default 5)")
    parser.add_argument("--workers", type=int, default=1, help="grader worker processes (default 1)")
    parser.add_argument("--hangs", type=int, default=6, help="hanging items in the mix (default 6)")
    parser.add_argument("--symbolic", type=int, default=200, help="symbolic items (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    grader = Grader(timeout=args.timeout, workers=args.workers, cache_size=0)
    # Trainer path: 128 completions per step, answer + extraction, 50 repetitions.
    completions = [f"<think>{i} + 1</think><answer>{i + 1}</answer>" for i in range(128)]
    references = [str(i + 1 if i % 2 else i) for i in range(128)]
    t0 = time.perf_counter()
    trainer = GraderStats()
    for _ in range(50):
        trainer += grade_answers(completions, references, grader=grader).stats
    dt = time.perf_counter() - t0
    print(f"{'trainer batch':<14} {128 * 50:>6} items {dt:8.3f} s {128 * 50 / dt:>11.1f} items/s   "
          f"({1e6 * dt / (128 * 50):.1f} us per completion; pool started: {trainer.worker_starts > 0})")

    t_start = time.perf_counter()
    starts = grader.grade_many(["\\sqrt{4}"], ["2\\sqrt{1}"]).stats.worker_starts  # outside the timed categories
    print(f"{'pool start-up':<14} {time.perf_counter() - t_start:8.3f} s (one worker importing sympy + math-verify)")

    mix = {
        "numeric": numeric_items(rng, 5000),
        "symbolic": symbolic_items(rng, args.symbolic),
        "refused": refused_items(),
        "hanging": hanging_items(args.hangs),
    }
    st = GraderStats()
    for name, items in mix.items():
        st += run(grader, name, items)
    everything = [x for items in mix.values() for x in items]
    rng.shuffle(everything)
    st += run(grader, "shuffled mix", everything)
    print(f"timeout rate over the mix: {st.timeouts / max(1, st.graded):.4f} "
          f"({st.timeouts} timeouts, {st.errors} errors, {starts + st.worker_starts} worker starts, "
          f"timeout {args.timeout:g} s, {args.workers} worker(s))")
    grader.close()


if __name__ == "__main__":
    main()
