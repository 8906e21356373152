"""Normalization, the numeric fast path, and the math-verify process pool (timeouts, crashes, threads)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import threading
import time
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softgate.grading import Grader, as_number, ascii_digits, fast_grade, matching_brace, normalize_answer, screen

# -- normalization (no pool) --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  42. ", "42"),
        ("$\\boxed{\\dfrac{1}{2}}$", "\\frac{1}{2}"),
        ("\\(\\text{(C)}\\)", "(C)"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "( 3, \\frac{\\pi}{2} )"),
        ("90^\\circ", "90"),
        ("50\\%", "50%"),
        ("1{,}000", "1,000"),
        ("\\$\\,12", "\\$ 12"),
        ("\\boxed{x}+\\boxed{y}", "\\boxed{x}+\\boxed{y}"),  # not one wrapper: left alone
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_ascii_digits_maps_decimal_digits_only() -> None:
    assert ascii_digits("١٢٣") == "123"  # Arabic-Indic
    assert ascii_digits("४२") == "42"  # Devanagari
    assert ascii_digits("１２．５") == "12.5"  # fullwidth digits and full stop
    assert ascii_digits("−7") == "-7"  # U+2212 minus sign
    assert ascii_digits("x²") == "x²"  # a superscript is an exponent, not a digit
    assert ascii_digits("½") == "½"


@pytest.mark.parametrize(
    "text, value",
    [
        ("42", Fraction(42)),
        ("-0.50", Fraction(-1, 2)),
        (".5", Fraction(1, 2)),
        ("1,234,567", Fraction(1234567)),
        ("3/4", Fraction(3, 4)),
        ("\\frac{-3}{4}", Fraction(-3, 4)),
        ("-\\frac{3}{4}", Fraction(-3, 4)),
        ("\\frac34", Fraction(3, 4)),
        ("2.5e3", Fraction(2500)),
        ("25%", Fraction(25)),
        ("\\$18", Fraction(18)),
        ("-$5", Fraction(-5)),
        ("€3.50", Fraction(7, 2)),
        ("12 cm", Fraction(12)),
        ("12cm", Fraction(12)),
        ("3 square feet", Fraction(3)),
        ("7 \\text{ apples}", Fraction(7)),
        ("x = 9", Fraction(9)),
        ("1,2", None),  # a pair, not a thousands separator
        ("5 pi", None),  # pi is maths, not a unit
        ("2x", None),
        ("1/0", None),
        ("1e1000", None),  # exponent longer than 3 digits: not converted
        ("9" * 500, None),  # longer than MAX_NUMBER_CHARS
        ("", None),
    ],
)
def test_as_number(text: str, value: Fraction | None) -> None:
    assert as_number(text) == value


@pytest.mark.parametrize(
    "pred, ref, verdict",
    [
        ("18", "18", True),
        ("18.00", "18", True),
        ("$18", "18", True),
        ("1,234", "1234", True),
        ("\\boxed{\\frac{1}{2}}", "0.5", True),
        ("٣", "3", True),
        ("１２", "12", True),
        ("17", "18", False),
        ("seventeen", "18", False),  # no digit at all: wrong without asking math-verify
        ("2+16", "18", None),  # needs algebra: undecided
        ("0.1", "10%", None),  # percent conventions differ: undecided
        ("\\sqrt{8}", "2\\sqrt{2}", None),
        ("(1, 2)", "(1,2)", None),
    ],
)
def test_fast_grade(pred: str, ref: str, verdict: bool | None) -> None:
    assert fast_grade(pred, ref) is verdict


def test_screen_and_matching_brace() -> None:
    assert screen("1" * 1001) == "too_long"
    assert screen("1\x002") == "control_chars"
    assert screen("x\ty\n") is None
    assert matching_brace("\\frac{a}{b}", 5) == 7
    assert matching_brace("{a\\}b}", 0) == 5  # escaped brace skipped
    assert matching_brace("{{a}", 0) == -1


@pytest.mark.timeout(60)
def test_fast_grade_on_hostile_input_near_the_length_cap() -> None:
    # Unbalanced braces, runs of unit-like words and spaces: regex work must stay linear (no backtracking blow-up).
    for text in ["{" * 500 + "1" + "}" * 499, "1 " + "ab " * 330, "$" * 999, "\\frac{" * 140, "1," * 499 + "1"]:
        assert fast_grade(text, "1") in (False, None)


# -- the pool -----------------------------------------------------------------------------------------------------

# Inputs that hang sympy (measured: each ran > 15 s in-process before being killed).
HANGS = ["10^{10^{10^{10}}}", "9^{9^{9}}", "\\frac{" * 50 + "1" + "}{2}" * 50]


@pytest.fixture(scope="module")
def grader():
    # One pool for the module (start-up imports sympy). 2 s per item: generous for real items on a shared CPU.
    g = Grader(timeout=2.0, workers=1)
    yield g
    g.close()


def test_integer_answers_never_start_the_pool() -> None:
    g = Grader(timeout=1.0)
    preds = [str(i) for i in range(128)] + ["abc", None, "12 apples", "1\x00"]
    refs = [str(i if i % 2 else i + 1) for i in range(128)] + ["5", "5", "12", "1"]
    out = g.grade_many(preds, refs, symbolic=True)
    assert out[:128] == [bool(i % 2) for i in range(128)] and out[128:] == [False, False, True, False]
    assert g.stats.worker_starts == 0 and g.stats.symbolic == 0
    assert (g.stats.fast_path, g.stats.no_answer, g.stats.control_chars) == (130, 1, 1)
    assert g.grade_many(["2+3"], ["5"], symbolic=False) == [False] and g.stats.not_numeric == 1
    assert g.stats.worker_starts == 0


@pytest.mark.timeout(180)
def test_symbolic_equivalence(grader: Grader) -> None:
    preds = ["\\sqrt{8}", "(x+1)^2", "\\frac{\\sqrt3}{2}", "\\left( 3, \\frac{\\pi}{2} \\right)", "2+16", "x^2+1"]
    refs = ["2\\sqrt{2}", "x^2+2x+1", "\\frac{\\sqrt{3}}{2}", "(3, \\frac{\\pi}{2})", "18", "(x+1)^2"]
    assert grader.grade_many(preds, refs) == [True, True, True, True, True, False]
    assert grader.stats.symbolic >= 5


def test_cache_and_duplicates(grader: Grader) -> None:
    before = grader.stats.symbolic
    assert grader.grade_many(["3\\sqrt{3}"] * 4, ["\\sqrt{27}"] * 4) == [True] * 4
    assert grader.stats.symbolic == before + 1  # one pool round trip for four equal pairs
    hits = grader.stats.cache_hits
    assert grader.grade("3\\sqrt{3}", "\\sqrt{27}") is True
    assert grader.stats.cache_hits == hits + 1


@pytest.mark.timeout(180)
def test_hanging_inputs_time_out_score_zero_and_the_pool_recovers(grader: Grader, monkeypatch) -> None:
    monkeypatch.setattr(grader, "timeout", 1.0)  # these items hang for good; no need to wait 2 s for each
    timeouts = grader.stats.timeouts
    out = grader.grade_many(HANGS + ["\\sqrt{4}"], ["5", "3", "1", "2"])
    assert out == [False, False, False, True]
    assert grader.stats.timeouts == timeouts + 3
    assert grader.grade("\\frac{6}{4}", "1.5") is True  # the pool still answers after the kills


@pytest.mark.timeout(180)
def test_adversarial_strings(grader: Grader) -> None:
    nested = "\\frac{" * 1000 + "1" + "}{2}" * 1000
    cases = {
        "9**9**9": "5",
        "10^10^10^10": "7",
        nested: "1",
        "1" * 1_000_000: "1",
        "1\x00" + "2": "12",
        "\\" * 900: "1",
        "}" * 900: "1",
    }
    before = grader.stats.as_dict()
    out = grader.grade_many(list(cases), list(cases.values()))
    assert out == [False] * len(cases)
    after = grader.stats.as_dict()
    assert after["too_long"] - before["too_long"] == 2  # the nested fraction and the megabyte string
    assert after["control_chars"] - before["control_chars"] == 1


@pytest.mark.timeout(180)
def test_grading_from_a_non_main_thread(grader: Grader) -> None:
    results: list = []
    errors: list = []

    def work() -> None:
        try:
            results.append(grader.grade_many(["\\sqrt{12}", HANGS[0]], ["2\\sqrt{3}", "1"]))
        except BaseException as err:  # noqa: BLE001 - surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and results == [[True, False], [True, False]]


@pytest.mark.timeout(180)
def test_dead_worker_is_replaced(grader: Grader) -> None:
    assert grader.grade("\\sqrt{16}", "4") is True  # not a plain number: goes to the pool
    pid = grader._workers[0].proc.pid
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.1)
    assert grader.grade("\\sqrt{25}", "5") is True
    assert grader._workers[0].proc.pid != pid


@pytest.mark.timeout(180)
def test_workers_outlive_the_thread_that_started_them() -> None:
    # Linux's parent-death signal follows the forking thread; workers are forked from a long-lived thread instead.
    with Grader(timeout=5.0) as g:
        t = threading.Thread(target=g.grade, args=("\\sqrt{9}", "3"))
        t.start()
        t.join()
        time.sleep(0.2)
        assert g._workers[0].proc.poll() is None
        assert g.grade("\\sqrt{36}", "6") is True and g.stats.worker_starts == 1


@pytest.mark.timeout(60)
def test_workers_that_cannot_start_raise_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    false = shutil.which("false")
    if false is None:
        pytest.skip("no `false` executable")
    monkeypatch.setattr(sys, "executable", false)
    g = Grader(timeout=1.0)
    with pytest.raises(RuntimeError, match="grader workers fail to start"):
        g.grade("\\sqrt{4}", "2")
    assert g.stats.worker_starts >= 3 and g._workers == []


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="timeout must be > 0"):
        Grader(timeout=0)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        Grader(workers=0)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        Grader().grade_many(["1", "2"], ["1"])


@pytest.mark.timeout(120)
def test_fast_path_never_raises_on_random_hostile_strings() -> None:
    rng = random.Random(0)
    alphabet = " a1,.{}\\$^%x=/-e\t\x00٣−"
    for _ in range(1500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 1000)))
        assert screen(text) in (None, "control_chars")
        assert fast_grade(text, "1") in (True, False, None)
        assert fast_grade(text, "\\frac{1}{2}") in (True, False, None)


@given(st.integers(min_value=-(10**30), max_value=10**30))
def test_integers_and_their_spellings_agree(v: int) -> None:
    assert fast_grade(f"{v:,}", str(v)) is True
    assert fast_grade(f"\\boxed{{{v}}}", f"{v}.0") is True
    assert fast_grade(str(v + 1), str(v)) is False
