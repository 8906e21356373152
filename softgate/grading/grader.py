"""The grader: screens and fast-grades ``(prediction, reference)`` pairs in-process, sends the rest to
math-verify in its own worker pool, and returns the verdicts with the counters of that one call.

Grading one pair, :meth:`Grader.grade_many`:

1. no prediction (nothing could be extracted) -> wrong (``no_answer``);
2. longer than ``max_answer_chars`` or holding control characters (NUL etc.) -> wrong without parsing
   (``too_long`` / ``control_chars``);
3. :func:`~softgate.grading.answers.fast_grade` (exact, normalized, numeric) decides when it can (``fast_path``);
4. otherwise, when both the grader and the call allow symbolic grading, math-verify decides in the pool
   (``symbolic``; timeouts, errors and unparsable sides score 0 and are counted); else the item scores 0
   (``not_numeric``).

A grader holds no counters between calls: each call's :class:`GraderStats` come back with its verdicts, so two
graders (or two callers of one grader) never mix their figures. Configured from arguments, or from the
``grader.*`` section of the run config with :meth:`Grader.from_config`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from softgate.grading.answers import MAX_ANSWER_CHARS, fast_grade, normalize_answer, screen
from softgate.grading.pool import STARTUP_TIMEOUT_S, Outcome, WorkerPool

if TYPE_CHECKING:
    from softgate.config import GraderConfig

DEFAULT_TIMEOUT_S = 5.0  # per math-verify call (parse both sides + verify)
DEFAULT_MEMORY_MB = 1024  # address space a worker may add on top of what it has after start-up (Linux)
DEFAULT_CACHE_SIZE = 4096  # symbolic verdicts remembered (a rollout group often repeats an answer)
# Environment variables that configured a process-wide grader before the grader.* config keys existed.
_RETIRED_ENV = {"SOFTGATE_GRADER_TIMEOUT": "grader.timeout_s", "SOFTGATE_GRADER_WORKERS": "grader.workers"}


@dataclass
class GraderStats:
    """How the items of one grading call were decided. Add two with ``+`` (e.g. over the tasks of a batch)."""

    graded: int = 0  # pairs graded
    correct: int = 0  # of which judged correct
    no_answer: int = 0  # nothing to grade (no extractable answer)
    too_long: int = 0  # refused: longer than max_answer_chars
    control_chars: int = 0  # refused: NUL or other control characters
    fast_path: int = 0  # decided by exact / normalized / numeric comparison, without the pool
    not_numeric: int = 0  # symbolic grading off and the fast path could not decide: scored 0
    cache_hits: int = 0  # symbolic verdicts served from the cache (or a pair repeated within the call)
    symbolic: int = 0  # sent to math-verify in the pool
    unparsed: int = 0  # math-verify found no expression on one side
    errors: int = 0  # parser/verifier exception, MemoryError or a worker that died on the item
    timeouts: int = 0  # worker killed after `timeout` seconds
    worker_starts: int = 0  # processes started during the call (first ones, replacements and spares)
    pool_seconds: float = 0.0  # wall time spent waiting on the pool

    def __add__(self, other: GraderStats) -> GraderStats:
        return GraderStats(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                              for f in dataclasses.fields(self)})

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Grades:
    """The result of one :meth:`Grader.grade_many` call: one verdict per pair, and how they were reached."""

    verdicts: list[bool]
    stats: GraderStats


class Grader:
    """Grades ``(prediction, reference)`` answer pairs: fast path in-process, math-verify in worker processes.

    The pool starts on the first item that needs math-verify (integer-answer tasks never start it) and lives until
    :meth:`close`, until the grader is garbage-collected, or until interpreter exit. Safe to call from any thread;
    calls are serialized by a lock (a batch waiting on the pool holds it). Several graders may coexist, each with
    its own settings and processes.

    Args:
        timeout: seconds per math-verify item; a worker past it is killed and the item scores 0.
        workers: worker processes (items of one ``grade_many`` call run in parallel across them).
        symbolic: False never uses math-verify (undecided items score 0), whatever the caller asks.
        max_answer_chars: longer predictions score 0 unparsed.
        memory_mb: extra address space each worker may allocate (Linux ``RLIMIT_AS``); 0 = no limit.
        cache_size: symbolic verdicts remembered; 0 disables the cache.
        startup_timeout: seconds a new worker may take to import math-verify.
    """

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT_S,
        workers: int = 1,
        *,
        symbolic: bool = True,
        max_answer_chars: int = MAX_ANSWER_CHARS,
        memory_mb: int = DEFAULT_MEMORY_MB,
        cache_size: int = DEFAULT_CACHE_SIZE,
        startup_timeout: float = STARTUP_TIMEOUT_S,
    ):
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        _warn_retired_env()
        self.timeout = float(timeout)
        self.symbolic = bool(symbolic)
        self.max_answer_chars = int(max_answer_chars)
        self.cache_size = int(cache_size)
        self._pool = WorkerPool(int(workers), memory_mb=int(memory_mb), startup_timeout=float(startup_timeout))
        self._cache: dict[tuple[str, str], bool] = {}
        self._lock = threading.RLock()
        # Stops the workers when the grader is collected or at interpreter exit (holds the pool, not the grader).
        self._finalizer = weakref.finalize(self, self._pool.close)

    @classmethod
    def from_config(cls, cfg: GraderConfig) -> Grader:
        """The grader the ``grader.*`` config keys describe (see ``softgate.config.GraderConfig``)."""
        return cls(timeout=cfg.timeout_s, workers=cfg.workers, symbolic=cfg.symbolic,
                   max_answer_chars=cfg.max_answer_chars, memory_mb=cfg.memory_mb)

    # -- public ----------------------------------------------------------------------------------------------
    def grade(self, prediction: str | None, reference: str, *, symbolic: bool = True) -> bool:
        """Whether ``prediction`` is the same answer as ``reference``."""
        return self.grade_many([prediction], [reference], symbolic=symbolic).verdicts[0]

    def grade_many(
        self, predictions: Sequence[str | None], references: Sequence[str], *, symbolic: bool = True
    ) -> Grades:
        """Verdicts for many pairs and the counters of this call; items that need math-verify run in parallel
        across the workers, each distinct pair once. ``symbolic=False`` keeps this call on the fast path."""
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        st = GraderStats(graded=len(predictions))
        verdicts = [False] * len(predictions)
        with self._lock:
            todo = self._triage(predictions, references, symbolic and self.symbolic, verdicts, st)
            if todo:
                self._run_pool(todo, verdicts, st)
        st.correct = sum(verdicts)
        return Grades(verdicts, st)

    def close(self) -> None:
        """Stop the workers (idempotent; a later call that needs math-verify starts new ones)."""
        with self._lock:
            self._pool.close()

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------------------
    def _triage(self, predictions: Sequence[str | None], references: Sequence[str], symbolic: bool,
                verdicts: list[bool], st: GraderStats) -> dict[tuple[str, str], list[int]]:
        """Decide what can be decided without the pool (into ``verdicts``); return the distinct normalized pairs
        left for math-verify, each with the positions it answers."""
        todo: dict[tuple[str, str], list[int]] = {}
        for i, (pred, ref) in enumerate(zip(predictions, references)):
            if pred is None:
                st.no_answer += 1
                continue
            refused = screen(pred, self.max_answer_chars)
            if refused is not None:
                setattr(st, refused, getattr(st, refused) + 1)
                continue
            decided = fast_grade(pred, ref)
            if decided is not None:
                st.fast_path += 1
                verdicts[i] = decided
            elif not symbolic:
                st.not_numeric += 1
            else:
                key = (normalize_answer(pred), normalize_answer(ref))
                if key in self._cache:
                    st.cache_hits += 1
                    verdicts[i] = self._cache[key]
                elif key in todo:  # repeated within the call: graded once
                    st.cache_hits += 1
                    todo[key].append(i)
                else:
                    todo[key] = [i]
        return todo

    def _run_pool(self, todo: dict[tuple[str, str], list[int]], verdicts: list[bool], st: GraderStats) -> None:
        """math-verify on the pairs of ``todo``; fills ``verdicts``, counts outcomes and caches the verdicts."""
        t0, starts = time.monotonic(), self._pool.starts
        pairs = list(todo)
        try:
            outcomes: list[Outcome] = self._pool.run(pairs, self.timeout)
        finally:
            st.worker_starts += self._pool.starts - starts
            st.pool_seconds += time.monotonic() - t0
        st.symbolic += len(pairs)
        for pair, outcome in zip(pairs, outcomes):
            st.unparsed += outcome == "unparsed"
            st.errors += outcome == "error"
            st.timeouts += outcome == "timeout"
            ok = outcome == "correct"
            for i in todo[pair]:
                verdicts[i] = ok
            if self.cache_size > 0:
                if len(self._cache) >= self.cache_size:
                    self._cache.clear()  # crude but bounded; verdicts are cheap to recompute
                self._cache[pair] = ok


@functools.cache
def _warn_retired_env() -> None:
    """Say once per process that the old environment variables are ignored (settings are arguments now)."""
    for var, key in _RETIRED_ENV.items():
        if var in os.environ:
            warnings.warn(f"{var} is no longer read: set the config key {key} (softgate train), the softgate eval "
                          "option, or pass Grader(...) as grader=", FutureWarning, stacklevel=3)
