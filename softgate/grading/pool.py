"""A killable pool of math-verify worker processes with a deadline per item.

Workers are plain child interpreters (``python -m softgate.grading.worker``, see ``softgate.grading.worker``)
talking JSON lines over pipes: no pickling, no fork of a process that may hold torch threads, and no re-import of
the caller's ``__main__``. The parent bounds every item: a worker that has not answered within the timeout is
killed and a warm spare takes its place (a new spare starts in the background), so a hanging item costs one
timeout, not a fresh sympy import. This works from any thread of the parent (a trainer's reward thread, TRL's and
verl's workers). Workers die with the parent (``worker._exit_with_parent``).

The pool knows nothing of answers or counters: :meth:`WorkerPool.run` maps ``(prediction, reference)`` pairs to
:data:`Outcome` strings and :class:`softgate.grading.grader.Grader` tallies them.
"""

from __future__ import annotations

import json
import logging
import multiprocessing.connection
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 120.0  # a fresh worker imports sympy + math-verify; generous because CPUs may be shared
START_ATTEMPTS = 3  # consecutive workers that fail to start before the pool gives up with an error

# What became of one pair: math-verify's verdict, or why there is none (every one but "correct" scores 0).
Outcome = Literal["correct", "wrong", "unparsed", "error", "timeout"]

# The directory holding the softgate package, so a worker finds softgate even from an uninstalled source tree.
_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --------------------------------------------------------------------------------------------------------------
# Starting processes from one long-lived thread.
#
# Linux delivers the parent-death signal when the *thread* that forked the child exits; workers started directly
# from a short-lived caller thread (a reward thread, a test's thread) would die with it. So every worker of every
# pool in the process is forked by one daemon thread. This is process infrastructure, not configuration.

_spawn_requests: queue.Queue[tuple[list[str], dict[str, Any], queue.Queue[tuple[bool, Any]]]] = queue.Queue()
_spawner: threading.Thread | None = None
_spawner_lock = threading.Lock()


def _popen_from_spawner(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(cmd, **kwargs)`` run on the spawner thread (started on first use)."""
    global _spawner
    with _spawner_lock:
        if _spawner is None or not _spawner.is_alive():
            _spawner = threading.Thread(target=_spawner_loop, name="softgate-grader-spawner", daemon=True)
            _spawner.start()
    done: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)
    _spawn_requests.put((cmd, kwargs, done))
    ok, value = done.get()
    if not ok:
        raise value
    return value


def _spawner_loop() -> None:
    while True:
        cmd, kwargs, done = _spawn_requests.get()
        try:
            done.put((True, subprocess.Popen(cmd, **kwargs)))
        except BaseException as err:  # noqa: BLE001 - handed back to the caller
            done.put((False, err))


# --------------------------------------------------------------------------------------------------------------
# One worker process


class _Worker:
    """One child process speaking JSON lines over pipes; ``job`` is the item it works on (None = idle) and
    ``deadline`` the monotonic time by which it must be ready (starting) or answer (busy)."""

    def __init__(self, memory_mb: int, startup_timeout: float):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PKG_ROOT, env.get("PYTHONPATH")) if p)
        self.stderr = tempfile.TemporaryFile()  # read only if the worker fails to start
        self.proc = _popen_from_spawner(
            [sys.executable, "-m", "softgate.grading.worker", str(memory_mb), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
            close_fds=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        self.ready = False
        self.job: int | None = None
        self.deadline = time.monotonic() + startup_timeout

    def fileno(self) -> int:  # lets multiprocessing.connection.wait select on the worker
        return self.fd

    def send(self, job: int, prediction: str, reference: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"id": job, "p": prediction, "r": reference}) + "\n").encode())
        self.proc.stdin.flush()

    def read_messages(self) -> list[dict[str, Any]] | None:
        """Complete messages available now; None when the worker has exited (EOF)."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            return None
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def startup_error(self) -> str:
        try:
            self.stderr.seek(0)
            return self.stderr.read()[-2000:].decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for stream in (self.proc.stdin, self.proc.stdout, self.stderr):
            try:
                stream.close()  # type: ignore[union-attr]
            except (OSError, AttributeError):
                pass


def _outcome(message: dict[str, Any]) -> Outcome:
    """A worker's answer message as an outcome (``"memory"``, the address-space cap, counts as an error)."""
    status = message["s"]
    if status == "ok":
        return "correct" if message["ok"] else "wrong"
    return "unparsed" if status == "unparsed" else "error"


# --------------------------------------------------------------------------------------------------------------
# The pool


@dataclass
class _Batch:
    """Book-keeping of one :meth:`WorkerPool.run` call."""

    pairs: list[tuple[str, str]]
    outcomes: list[Outcome] = field(init=False)
    pending: list[int] = field(init=False)  # indices not yet sent; pop() from the end = submission order
    jobs: dict[int, int] = field(default_factory=dict)  # job id -> index into pairs
    remaining: int = field(init=False)

    def __post_init__(self) -> None:
        self.outcomes = ["error"] * len(self.pairs)
        self.pending = list(range(len(self.pairs)))[::-1]
        self.remaining = len(self.pairs)

    def finish(self, job: int, outcome: Outcome) -> None:
        self.outcomes[self.jobs.pop(job)] = outcome
        self.remaining -= 1


class WorkerPool:
    """``size`` worker processes plus one spare, started on the first :meth:`run` and stopped by :meth:`close`.

    Not thread-safe on its own: :class:`~softgate.grading.grader.Grader` serializes calls.

    Args:
        size: worker processes; the pairs of one ``run`` call are spread across them.
        memory_mb: extra address space each worker may allocate after start-up (Linux ``RLIMIT_AS``); 0 = no cap.
        startup_timeout: seconds a new worker may take to import math-verify.
    """

    def __init__(self, size: int, *, memory_mb: int, startup_timeout: float = STARTUP_TIMEOUT_S):
        self.size, self.memory_mb, self.startup_timeout = size, memory_mb, startup_timeout
        self.workers: list[_Worker] = []
        self.spare: _Worker | None = None
        self.starts = 0  # processes started so far (first ones, replacements and spares)
        self._job = 0
        self._start_failures = 0

    def run(self, pairs: list[tuple[str, str]], timeout: float) -> list[Outcome]:
        """math-verify on every pair, ``timeout`` seconds each; one outcome per pair, in order.

        Raises RuntimeError (after closing the pool) when workers repeatedly fail to start.
        """
        while len(self.workers) < self.size:
            self.workers.append(self._spawn())
        batch = _Batch(list(pairs))
        self._start_failures = 0
        while batch.remaining:
            self._dispatch(batch, timeout)
            waiting = [w for w in self.workers if not w.ready or w.job is not None]
            wait_s = max(0.0, min(w.deadline for w in waiting) - time.monotonic())
            readable = multiprocessing.connection.wait(waiting, timeout=wait_s)
            for w in list(self.workers):
                self._service(w, w in readable, batch)
        return batch.outcomes

    def close(self) -> None:
        """Kill every worker (idempotent; a later ``run`` starts new ones)."""
        for w in self.workers + ([self.spare] if self.spare else []):
            w.kill()
        self.workers, self.spare = [], None

    # -- internals -------------------------------------------------------------------------------------------
    def _dispatch(self, batch: _Batch, timeout: float) -> None:
        """Hand the next pending pair to every ready, idle worker."""
        for w in self.workers:
            if not (w.ready and w.job is None and batch.pending):
                continue
            idx = batch.pending.pop()
            self._job += 1
            try:
                w.send(self._job, *batch.pairs[idx])
            except (OSError, ValueError):  # died while idle: the item goes to its replacement
                batch.pending.append(idx)
                self._replace(w)
                continue
            w.job, w.deadline = self._job, time.monotonic() + timeout
            batch.jobs[self._job] = idx

    def _service(self, w: _Worker, readable: bool, batch: _Batch) -> None:
        """Read what ``w`` sent, then replace it if it exited, missed its deadline or never became ready."""
        messages = w.read_messages() if readable else []
        if messages is None:  # EOF: the worker exited (crash, OOM killer, failed import)
            if w.job is not None:
                batch.finish(w.job, "error")
            elif not w.ready:
                self._start_failed(w)
            self._replace(w)
            return
        for msg in messages:
            if msg["id"] == "ready":
                w.ready, self._start_failures = True, 0
                continue
            w.job = None
            batch.finish(msg["id"], _outcome(msg))
        if time.monotonic() < w.deadline:
            return
        if w.job is not None:
            batch.finish(w.job, "timeout")
            self._replace(w)
        elif not w.ready:
            self._start_failed(w)
            logger.warning("grader worker not ready after %.0f s; replacing it", self.startup_timeout)
            self._replace(w)

    def _spawn(self) -> _Worker:
        self.starts += 1
        return _Worker(self.memory_mb, self.startup_timeout)

    def _replace(self, w: _Worker) -> None:
        """Kill ``w``; the spare (warm, or at least already importing) takes its slot and a new spare starts."""
        w.kill()
        new = self.spare if self.spare is not None and self.spare.proc.poll() is None else self._spawn()
        self.workers[self.workers.index(w)] = new
        self.spare = self._spawn()

    def _start_failed(self, w: _Worker) -> None:
        self._start_failures += 1
        if self._start_failures >= START_ATTEMPTS:  # an environment problem, not a hard item: say so loudly
            detail = w.startup_error()
            self.close()
            raise RuntimeError(
                "softgate grader workers fail to start (is math-verify installed? "
                f"pip install 'math-verify[antlr4_13_2]'). Last worker's stderr:\n{detail}"
            )
