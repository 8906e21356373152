"""The child side of the grader pool: ``python -m softgate.grading.worker MEMORY_MB PARENT_PID``.

One JSON line in (``{"id", "p", "r"}``: prediction and reference), one JSON line out (``{"id", "s", "ok"}``), after a
first ``{"id": "ready"}`` once math-verify is imported. math-verify's own timeouts use ``signal.alarm`` and are
disabled here; the parent (``softgate.grading.pool``) bounds every item by killing a worker past its deadline.
Started by :class:`softgate.grading.pool.WorkerPool`, never by hand.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys


def _mv_wrap(text: str) -> str:
    """math-verify finds LaTeX inside math delimiters; bare answers are wrapped so both parsers see them."""
    s = text.strip()
    if s.startswith(("$", "\\(", "\\[", "\\boxed")):
        return s
    return f"${s}$"


def _mv_equal(prediction: str, reference: str) -> tuple[str, bool]:
    """math-verify's verdict with its own (signal-based) timeouts disabled: ``(status, equal)``.

    status is ``"ok"``, or ``"unparsed"`` when one side gives no expression. Exceptions propagate.
    """
    from math_verify import parse, verify

    gold = parse(_mv_wrap(reference), parsing_timeout=None)  # type: ignore[arg-type]
    answer = parse(_mv_wrap(prediction), parsing_timeout=None)  # type: ignore[arg-type]
    if not gold or not answer:
        return "unparsed", False
    return "ok", bool(verify(gold, answer, timeout_seconds=None))


def _limit_memory(extra_mb: int) -> None:
    """Cap the worker's address space at its current size + ``extra_mb`` so a runaway sympy computation raises
    MemoryError instead of exhausting the machine before the timeout fires (Linux only; a no-op elsewhere)."""
    if extra_mb <= 0:
        return
    try:
        import resource

        with open("/proc/self/status", encoding="ascii") as fh:
            vm_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmSize:"))
        limit = vm_kb * 1024 + extra_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError, StopIteration, ImportError):
        pass


def _exit_with_parent(parent_pid: int) -> None:
    """Die with the parent, even in the middle of a hanging item: an orphan would spin forever, stdin EOF is only
    noticed between items, and a watchdog thread can be starved of the GIL by one long sympy/bigint call. Linux's
    parent-death signal does it in the kernel (elsewhere only the stdin EOF remains)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def serve(memory_mb: int, parent_pid: int) -> None:
    """Read ``{"id", "p", "r"}`` lines on stdin, write ``{"id", "s", "ok"}`` lines on stdout until stdin closes.

    ``s`` is ``"ok"`` (``ok`` holds the verdict), ``"unparsed"``, ``"error"`` (any parser exception, including
    RecursionError) or ``"memory"`` (the address-space cap was hit).
    """
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business; it kills us on shutdown
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # "timeout disabled" and parse chatter
    import math_verify  # noqa: F401  - imported before "ready", so the first item's timeout is not spent here

    _exit_with_parent(parent_pid)
    _limit_memory(memory_mb)
    proto.write(json.dumps({"id": "ready", "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        try:
            status, equal = _mv_equal(msg["p"], msg["r"])
        except MemoryError:
            status, equal = "memory", False
        except Exception:  # noqa: BLE001 - any parser failure (incl. RecursionError) is a wrong answer, counted
            status, equal = "error", False
        proto.write(json.dumps({"id": msg["id"], "s": status, "ok": equal}) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m softgate.grading.worker MEMORY_MB PARENT_PID  (started by the grader pool)")
    serve(int(sys.argv[1]), int(sys.argv[2]))
