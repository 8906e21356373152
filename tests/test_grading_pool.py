"""The grader and its math-verify worker pool: per-call counters, timeouts, crashes, threads, memory caps, and
several graders with their own settings side by side."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from softgate.config import GraderConfig
from softgate.grading import Grader, GraderStats

# Inputs that hang sympy (measured: each ran > 15 s in-process before being killed).
HANGS = ["10^{10^{10^{10}}}", "9^{9^{9}}", "\\frac{" * 50 + "1" + "}{2}" * 50]


@pytest.fixture(scope="module")
def grader():
    # One pool for the module (start-up imports sympy). 2 s per item: generous for real items on a shared CPU.
    g = Grader(timeout=2.0, workers=1)
    yield g
    g.close()


def _pids(g: Grader) -> list[int]:
    return [w.proc.pid for w in g._pool.workers]


# -- no pool ------------------------------------------------------------------------------------------------------


def test_integer_answers_never_start_the_pool() -> None:
    g = Grader(timeout=1.0)
    preds = [str(i) for i in range(128)] + ["abc", None, "12 apples", "1\x00"]
    refs = [str(i if i % 2 else i + 1) for i in range(128)] + ["5", "5", "12", "1"]
    out = g.grade_many(preds, refs, symbolic=True)
    assert out.verdicts[:128] == [bool(i % 2) for i in range(128)] and out.verdicts[128:] == [False, False, True, False]
    st = out.stats
    assert st.worker_starts == 0 and st.symbolic == 0
    assert (st.graded, st.correct, st.fast_path, st.no_answer, st.control_chars) == (132, 65, 130, 1, 1)
    off = g.grade_many(["2+3"], ["5"], symbolic=False)
    assert off.verdicts == [False] and off.stats.not_numeric == 1 and off.stats.graded == 1
    assert g._pool.starts == 0


def test_a_grader_with_symbolic_off_never_uses_the_pool() -> None:
    g = Grader.from_config(GraderConfig(symbolic=False))
    out = g.grade_many(["\\sqrt{8}", "3"], ["2\\sqrt{2}", "3"], symbolic=True)  # the grader's setting wins
    assert out.verdicts == [False, True] and out.stats.not_numeric == 1 and g._pool.starts == 0


def test_from_config_carries_every_key() -> None:
    cfg = GraderConfig(timeout_s=7.5, workers=3, memory_mb=0, symbolic=False, max_answer_chars=20)
    g = Grader.from_config(cfg)
    assert (g.timeout, g._pool.size, g._pool.memory_mb, g.symbolic, g.max_answer_chars) == (7.5, 3, 0, False, 20)
    assert g.grade_many(["1" * 21], ["1"]).stats.too_long == 1


@pytest.mark.parametrize("override, message", [
    # Errors name where the value came from (--set KEY=VALUE), then the key.
    ("grader.timeout_s=0", r"^--set grader\.timeout_s=0: grader\.timeout_s: must be > 0, got 0"),
    ("grader.workers=0", r"^--set grader\.workers=0: grader\.workers: must be > 0"),
    ("grader.memory_mb=-1", r"^--set grader\.memory_mb=-1: grader\.memory_mb: must be >= 0 \(0 = no cap\)"),
    ("grader.max_answer_chars=0", r"^--set grader\.max_answer_chars=0: grader\.max_answer_chars: must be > 0"),
    ("grader.symbolic=maybe", r"grader\.symbolic"),
    ("grader.timeout=3", r"unknown key 'grader\.timeout'.*timeout_s"),
])
def test_config_keys_are_validated_naming_the_key(override: str, message: str) -> None:
    from softgate.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)  # one line
    cfg = load_config(None, ["grader.timeout_s=2.5", "grader.symbolic=false"]).grader
    assert (cfg.timeout_s, cfg.symbolic) == (2.5, False)


def test_stats_add_field_by_field() -> None:
    total = GraderStats(graded=2, timeouts=1, pool_seconds=0.5) + GraderStats(graded=3, errors=2, pool_seconds=1.0)
    assert total == GraderStats(graded=5, timeouts=1, errors=2, pool_seconds=1.5)


def test_retired_environment_variables_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from softgate.grading import grader as grader_module

    monkeypatch.setenv("SOFTGATE_GRADER_TIMEOUT", "30")
    grader_module._warn_retired_env.cache_clear()
    with pytest.warns(FutureWarning, match="SOFTGATE_GRADER_TIMEOUT is no longer read.*grader.timeout_s"):
        g = Grader()
    assert g.timeout == 5.0  # not 30: settings come from arguments only
    grader_module._warn_retired_env.cache_clear()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="timeout must be > 0"):
        Grader(timeout=0)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        Grader(workers=0)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        Grader().grade_many(["1", "2"], ["1"])


# -- the pool -----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_symbolic_equivalence(grader: Grader) -> None:
    preds = ["\\sqrt{8}", "(x+1)^2", "\\frac{\\sqrt3}{2}", "\\left( 3, \\frac{\\pi}{2} \\right)", "2+16", "x^2+1"]
    refs = ["2\\sqrt{2}", "x^2+2x+1", "\\frac{\\sqrt{3}}{2}", "(3, \\frac{\\pi}{2})", "18", "(x+1)^2"]
    out = grader.grade_many(preds, refs)
    assert out.verdicts == [True, True, True, True, True, False]
    assert out.stats.symbolic == 6 and out.stats.correct == 5


def test_stats_come_back_per_call_and_the_cache_is_shared(grader: Grader) -> None:
    first = grader.grade_many(["3\\sqrt{3}"] * 4, ["\\sqrt{27}"] * 4)
    assert first.verdicts == [True] * 4
    assert first.stats.symbolic == 1 and first.stats.cache_hits == 3  # one pool round trip for four equal pairs
    second = grader.grade_many(["3\\sqrt{3}", "7"], ["\\sqrt{27}", "7"])
    # Only this call's items: nothing of the first call (or of earlier tests on this grader) leaks in.
    assert second.stats == GraderStats(graded=2, correct=2, fast_path=1, cache_hits=1)


@pytest.mark.timeout(180)
def test_hanging_inputs_time_out_score_zero_and_the_pool_recovers(grader: Grader, monkeypatch) -> None:
    monkeypatch.setattr(grader, "timeout", 1.0)  # these items hang for good; no need to wait 2 s for each
    out = grader.grade_many(HANGS + ["\\sqrt{4}"], ["5", "3", "1", "2"])
    assert out.verdicts == [False, False, False, True]
    assert out.stats.timeouts == 3 and out.stats.worker_starts >= 3  # each kill brings a replacement
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
    out = grader.grade_many(list(cases), list(cases.values()))
    assert out.verdicts == [False] * len(cases)
    assert out.stats.too_long == 2  # the nested fraction and the megabyte string
    assert out.stats.control_chars == 1


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
    assert not errors and [r.verdicts for r in results] == [[True, False], [True, False]]
    # Each caller gets its own figures: the first timed out on the hang, the second was served from the cache.
    assert sorted((r.stats.timeouts, r.stats.cache_hits) for r in results) == [(0, 2), (1, 0)]


@pytest.mark.timeout(180)
def test_dead_worker_is_replaced(grader: Grader) -> None:
    assert grader.grade("\\sqrt{16}", "4") is True  # not a plain number: goes to the pool
    pid = _pids(grader)[0]
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.1)
    assert grader.grade("\\sqrt{25}", "5") is True
    assert _pids(grader)[0] != pid


@pytest.mark.timeout(180)
def test_two_graders_with_different_timeouts_coexist() -> None:
    # Impossible with one process-wide grader: each has its own pool and its own deadline.
    with Grader(timeout=1.0) as short, Grader(timeout=4.0) as long:
        assert short.grade("\\sqrt{4}", "2") and long.grade("\\sqrt{9}", "3")  # both pools warm
        assert set(_pids(short)).isdisjoint(_pids(long))
        elapsed = {}
        for name, g in (("short", short), ("long", long)):
            t0 = time.monotonic()
            out = g.grade_many([HANGS[1]], ["1"])
            elapsed[name] = time.monotonic() - t0
            assert out.verdicts == [False] and out.stats.timeouts == 1
        assert elapsed["long"] >= 4.0 and elapsed["short"] < elapsed["long"] - 1.5
        assert short.grade("\\sqrt{36}", "6") and long.grade("\\sqrt{49}", "7")  # both still serve


@pytest.mark.timeout(180)
def test_workers_outlive_the_thread_that_started_them() -> None:
    # Linux's parent-death signal follows the forking thread; workers are forked from a long-lived thread instead.
    with Grader(timeout=5.0) as g:
        t = threading.Thread(target=g.grade, args=("\\sqrt{9}", "3"))
        t.start()
        t.join()
        time.sleep(0.2)
        assert g._pool.workers[0].proc.poll() is None
        out = g.grade_many(["\\sqrt{36}"], ["6"])
        assert out.verdicts == [True] and out.stats.worker_starts == 0 and g._pool.starts == 1


@pytest.mark.timeout(180)
def test_a_collected_grader_stops_its_workers() -> None:
    g = Grader(timeout=5.0)
    assert g.grade("\\sqrt{4}", "2")
    proc = g._pool.workers[0].proc
    del g
    gc.collect()
    assert proc.wait(timeout=10) is not None


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="Linux only")
@pytest.mark.timeout(180)
def test_memory_cap_is_set_on_the_workers() -> None:
    def address_space_limit(pid: int) -> str:
        line = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if "address space" in x)
        return line.split()[3]  # "Max address space  <soft>  <hard>  bytes"

    with Grader(timeout=5.0, memory_mb=300) as capped, Grader(timeout=5.0, memory_mb=0) as free:
        assert capped.grade("\\sqrt{4}", "2") and free.grade("\\sqrt{4}", "2")
        pid = _pids(capped)[0]
        vm_kb = next(int(x.split()[1]) for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                     if x.startswith("VmSize:"))
        limit = int(address_space_limit(pid))
        assert 300 * 2**20 < limit <= vm_kb * 1024 + 300 * 2**20  # start-up size + 300 MB
        assert address_space_limit(_pids(free)[0]) == "unlimited"


@pytest.mark.timeout(60)
def test_workers_that_cannot_start_raise_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    false = shutil.which("false")
    if false is None:
        pytest.skip("no `false` executable")
    monkeypatch.setattr(sys, "executable", false)
    g = Grader(timeout=1.0)
    with pytest.raises(RuntimeError, match="grader workers fail to start"):
        g.grade("\\sqrt{4}", "2")
    assert g._pool.starts >= 3 and g._pool.workers == []


def test_no_warning_without_retired_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from softgate.grading import grader as grader_module

    for var in ("SOFTGATE_GRADER_TIMEOUT", "SOFTGATE_GRADER_WORKERS"):
        monkeypatch.delenv(var, raising=False)
    grader_module._warn_retired_env.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Grader()
