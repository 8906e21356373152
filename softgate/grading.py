"""Answer normalization, the exact/numeric fast path, and math-verify in a process pool with per-item timeouts.

Model output is untrusted. Nothing here evaluates it as code: numbers are parsed with regular expressions and
:class:`fractions.Fraction`, and symbolic equivalence is left to math-verify (a LaTeX/expression parser built on
sympy) running in separate worker processes. math-verify's own timeouts use ``signal.alarm``, which only works on
the main thread of the main interpreter; softgate disables them and instead bounds every call from the parent: a
worker that has not answered within ``timeout`` seconds is killed and replaced, and the item scores 0. This works
from any thread of the parent (a trainer's reward thread, TRL's and verl's workers).

Grading one ``(prediction, reference)`` pair, :meth:`Grader.grade_many`:

1. inputs longer than ``max_answer_chars`` or holding control characters (NUL etc.) score 0 without parsing;
2. exact match of the stripped strings -> correct;
3. both sides normalized (:func:`normalize_answer`): equal -> correct;
4. both sides read as plain numbers (:func:`as_number`: integers, ``1,234``, decimals, ``a/b``, ``\\frac{a}{b}``,
   with currency, percent and unit words stripped) -> compared exactly as fractions; the answer is final;
5. numeric reference and a prediction without a single digit -> wrong (no pool round trip for gibberish);
6. otherwise, with ``symbolic=True``, math-verify decides in the pool (timeouts and errors score 0 and are
   counted); with ``symbolic=False`` the item scores 0.

The counters in :attr:`Grader.stats` say which path decided each item.
"""

from __future__ import annotations

import atexit
import json
import logging
import multiprocessing.connection
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

logger = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 1000  # extracted answers longer than this score 0 without being parsed
MAX_NUMBER_CHARS = 400  # plain numbers longer than this are not converted (keeps int() and Fraction cheap)
DEFAULT_TIMEOUT_S = 5.0  # per math-verify call (parse both sides + verify)
STARTUP_TIMEOUT_S = 120.0  # a fresh worker imports sympy + math-verify; generous because CPUs may be shared
DEFAULT_MEMORY_MB = 1024  # address space a worker may add on top of what it has after start-up (Linux)

# --------------------------------------------------------------------------------------------------------------
# Normalization and the numeric fast path


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"\s+")
# Spacing and sizing commands that never change a value.
_LATEX_NOISE = re.compile(r"\\[,;:! ]|\\left\b|\\right\b|\\displaystyle\b|\\limits\b")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_WRAPPERS = ("\\boxed", "\\fbox", "\\text", "\\textbf", "\\mathrm", "\\mathbf", "\\textnormal", "\\mbox")
_MATH_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))

_UNICODE_PUNCT = {
    "\u2212": "-",  # minus sign
    "\u2013": "-",  # en dash, used as a minus by some models
    "\ufe63": "-",
    "\uff0d": "-",
    "\u00a0": " ",  # no-break space
    "\u2009": " ",  # thin space (thousands separator in some locales: handled as a space, not joined)
    "\u202f": " ",
    "\uff0e": ".",
    "\uff0c": ",",
    "\uff05": "%",
    "\uff0f": "/",
}


def ascii_digits(text: str) -> str:
    """Map every Unicode decimal digit (category Nd: Arabic-Indic, Devanagari, fullwidth...) to ASCII, and a few
    look-alike signs (minus, fullwidth punctuation) to their ASCII forms.

    Superscripts and other non-decimal digits (``²``, ``½``) are left alone: mapping them would turn ``x²`` into
    ``x2``.
    """
    if text.isascii():
        return text
    out = []
    for ch in text:
        if ch in _UNICODE_PUNCT:
            out.append(_UNICODE_PUNCT[ch])
        elif not ch.isascii() and unicodedata.category(ch) == "Nd":
            out.append(str(unicodedata.decimal(ch)))
        else:
            out.append(ch)
    return "".join(out)


def matching_brace(text: str, open_idx: int, limit: int | None = None) -> int:
    """Index of the ``}`` closing the ``{`` at ``open_idx`` (``\\{`` and ``\\}`` are escaped), or -1.

    ``limit`` bounds the scan to that many characters after ``open_idx`` (-1 when the brace closes later).
    """
    depth = 0
    i = open_idx
    n = len(text) if limit is None else min(len(text), open_idx + limit)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _unwrap_once(s: str) -> str:
    for left, right in _MATH_DELIMS:
        if len(s) > len(left) + len(right) and s.startswith(left) and s.endswith(right):
            return s[len(left) : -len(right)].strip()
    for cmd in _WRAPPERS:
        if s.startswith(cmd + "{") and matching_brace(s, len(cmd)) == len(s) - 1:
            return s[len(cmd) + 1 : -1].strip()
    return s


def normalize_answer(text: str) -> str:
    """A canonical string for comparison: ASCII digits, no math delimiters or ``\\boxed``/``\\text`` wrapper, no
    LaTeX spacing, ``\\dfrac``/``\\tfrac`` -> ``\\frac``, no degree sign, ``\\%`` -> ``%``, single spaces, no
    trailing period.

    Linear time in ``len(text)`` apart from the unwrapping loop, which is bounded by the number of wrappers.
    """
    s = ascii_digits(text).strip()
    for _ in range(8):  # wrappers nest: $\boxed{\text{5}}$
        s = s.rstrip(". ").strip()
        t = _unwrap_once(s)
        if t == s:
            break
        s = t
    s = _LATEX_NOISE.sub(" ", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\%", "%").replace("{,}", ",")
    s = _DEGREES.sub("", s)
    s = _SPACES.sub(" ", s).strip()
    return s.rstrip(".").strip()


_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_THOUSANDS = re.compile(r"^([-+]?)(\d{1,3}(?:,\d{3})+)(\.\d+)?$")
_PLAIN = re.compile(rf"^{_NUM}$")
_SCI = re.compile(r"^([-+]?(?:\d+(?:\.\d*)?|\.\d+))[eE]([-+]?\d{1,3})$")
_SLASH = re.compile(r"^([-+]?\d+)\s*/\s*([-+]?\d+)$")
_FRAC = re.compile(r"^([-+]?)\s*\\frac\s*(?:\{\s*([-+]?\d+)\s*\}|(\d))\s*(?:\{\s*([-+]?\d+)\s*\}|(\d))$")
_CURRENCY = re.compile(r"^(?:\\\$|\$|€|£|¥|₹|USD|EUR|Rs\.?)\s*")
_TEXT_SUFFIX = re.compile(r"\s*\\(?:text|mbox|mathrm|textnormal)\s*\{[^{}]*\}\s*$")
# "12 square feet", "3 cm^2" (words after a space); "12cm" (a short list of units glued to the number).
_UNIT_SUFFIX = re.compile(
    r"\s+((?:[A-Za-z]{2,20}\.?(?:\^\{?\d\}?)?\s*){1,3})$"
    r"|(?<=\d)((?:cm|mm|km|kg|mg|ml|ft|lbs?|oz|min|hrs?|sec)(?:\^\{?\d\}?)?)$"
)
_ASSIGN = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=\s*(?=[^=]*$)")
# Words that are maths, not units: "5 pi" must not become 5.
_NOT_UNITS = frozenset({"pi", "sqrt", "inf", "infty", "infinity", "cdot", "times", "frac", "mod", "and", "or", "i"})


def _to_fraction(s: str) -> Fraction | None:
    if len(s) > MAX_NUMBER_CHARS:
        return None
    m = _THOUSANDS.match(s)
    if m:
        s = m.group(1) + m.group(2).replace(",", "") + (m.group(3) or "")
    if _PLAIN.match(s):
        return Fraction(s)
    m = _SCI.match(s)
    if m:  # exponent has at most 3 digits: 10**999 is still cheap
        return Fraction(m.group(1)) * Fraction(10) ** int(m.group(2))
    m = _SLASH.match(s)
    if m:
        num, den = int(m.group(1)), int(m.group(2))
        return Fraction(num, den) if den != 0 else None
    m = _FRAC.match(s)
    if m:
        num, den = int(m.group(2) or m.group(3)), int(m.group(4) or m.group(5))
        if den == 0:
            return None
        value = Fraction(num, den)
        return -value if m.group(1) == "-" else value
    return None


def as_number(text: str) -> Fraction | None:
    """``text`` (already normalized) as an exact rational, or None when it is not a plain number.

    Accepted: integers, ``1,234,567`` thousands separators, decimals, ``1.5e3`` (exponent up to 3 digits),
    ``a/b``, ``\\frac{a}{b}`` / ``\\frac ab`` with a sign in front; around them a currency sign (``$``, ``\\$``,
    ``€``...), a trailing ``%`` (``25%`` reads as 25, the way GSM8K writes references), a trailing
    ``\\text{...}`` or up to three unit words (``12 cm``, ``3 square feet``; not ``pi``), and a leading
    ``x =``. Never calls ``eval``; the regular expressions have no nested quantifiers over the same characters.
    """
    s = _ASSIGN.sub("", text.strip(), count=1)
    s = _TEXT_SUFFIX.sub("", s)
    m = _UNIT_SUFFIX.search(s)
    if m:
        words = (m.group(1) or m.group(2) or "").replace(".", " ").split()
        if words and not any(w.split("^")[0].lower() in _NOT_UNITS for w in words):
            s = s[: m.start()]
    s = s.strip()
    if s.endswith("%"):
        s = s[:-1].rstrip()
    s = _CURRENCY.sub("", s)
    if s.startswith("-") and len(s) > 1 and s[1] in "$\\€£":  # -$5
        inner = as_number(s[1:])
        return -inner if inner is not None else None
    s = s.replace("{,}", ",").strip()
    return _to_fraction(s)


def fast_grade(prediction: str, reference: str) -> bool | None:
    """Steps 2-5 of the module docstring: True / False when decided, None when only math-verify can tell."""
    if prediction.strip() == reference.strip():
        return True
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if pred == ref:
        return True
    ref_num = as_number(ref)
    if ref_num is not None:
        pred_num = as_number(pred)
        if pred_num is not None:
            if pred_num == ref_num:
                return True
            # "10%" vs "0.1": the fast path reads "10%" as 10 (GSM8K's convention); let math-verify weigh it.
            return None if "%" in pred or "%" in ref else False
        if not any(ch.isdigit() for ch in pred):
            return False
    return None


def screen(prediction: str, max_chars: int = MAX_ANSWER_CHARS) -> str | None:
    """The reason an answer is refused before any parsing (too long, control characters), or None if it is fine."""
    if len(prediction) > max_chars:
        return "too_long"
    if _CONTROL.search(prediction):
        return "control_chars"
    return None


# --------------------------------------------------------------------------------------------------------------
# The worker side: `python -m softgate.grading --worker MEMORY_MB`, one JSON line in, one JSON line out.


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


def _worker_loop(memory_mb: int, parent_pid: int) -> None:
    """Child process: read ``{"id", "p", "r"}`` lines on stdin, write ``{"id", "s", "ok"}`` lines on stdout."""
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


# --------------------------------------------------------------------------------------------------------------
# The parent side


@dataclass
class GraderStats:
    """Counters of how items were decided (cumulative; ``Grader.reset_stats()`` zeroes them)."""

    graded: int = 0  # pairs graded
    correct: int = 0  # of which judged correct
    no_answer: int = 0  # nothing to grade (no extractable answer)
    too_long: int = 0  # refused: longer than max_answer_chars
    control_chars: int = 0  # refused: NUL or other control characters
    fast_path: int = 0  # decided by exact / normalized / numeric comparison, without the pool
    not_numeric: int = 0  # symbolic=False and the fast path could not decide: scored 0
    cache_hits: int = 0  # symbolic verdicts served from the cache
    symbolic: int = 0  # sent to math-verify in the pool
    unparsed: int = 0  # math-verify found no expression on one side
    errors: int = 0  # parser/verifier exception, MemoryError or a worker that died
    timeouts: int = 0  # worker killed after `timeout` seconds
    worker_starts: int = 0  # processes started (the first ones, replacements and spares)
    pool_seconds: float = 0.0  # wall time spent waiting on the pool

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# The package root, so a worker finds softgate even when it is run from a source tree that is not installed.
_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _popen_from_spawner(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen`` run on one long-lived daemon thread.

    Linux delivers the parent-death signal when the *thread* that forked the child exits; workers started directly
    from a short-lived caller thread (a reward thread, a test's thread) would die with it.
    """
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


_spawn_requests: queue.Queue[tuple[list[str], dict[str, Any], queue.Queue[tuple[bool, Any]]]] = queue.Queue()
_spawner: threading.Thread | None = None
_spawner_lock = threading.Lock()


class _Worker:
    """One child process speaking JSON lines over pipes; ``job`` is the item it works on (None = idle)."""

    def __init__(self, memory_mb: int, startup_timeout: float):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PKG_ROOT, env.get("PYTHONPATH")) if p)
        self.stderr = tempfile.TemporaryFile()  # read only if the worker fails to start
        self.proc = _popen_from_spawner(
            [sys.executable, "-m", "softgate.grading", "--worker", str(memory_mb), str(os.getpid())],
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


def _close_at_exit(ref: weakref.ReferenceType[Grader]) -> None:
    grader = ref()
    if grader is not None:
        grader.close()


class Grader:
    """Grades ``(prediction, reference)`` answer pairs: fast path in-process, math-verify in worker processes.

    Workers are plain child interpreters (``python -m softgate.grading --worker``) talking JSON lines over pipes:
    no pickling, no fork of a process that may hold torch threads, and no re-import of the caller's ``__main__``.
    The pool of ``workers`` processes starts on the first symbolic item and lives until ``close()`` or interpreter
    exit. Each symbolic item has ``timeout`` seconds; a worker past its deadline is killed, the item scores 0
    (``stats.timeouts``) and a warm spare takes its place (a new spare starts in the background), so a hang costs
    one timeout, not a fresh sympy import. Workers die with the parent (see ``_exit_with_parent``). Safe to call
    from any thread; calls are serialized by a lock (a batch waiting on the pool holds it).

    Args:
        timeout: seconds per math-verify item.
        workers: worker processes (items of one ``grade_many`` call run in parallel across them).
        max_answer_chars: longer predictions score 0 unparsed.
        memory_mb: extra address space each worker may allocate (Linux ``RLIMIT_AS``); 0 = no limit.
        cache_size: symbolic verdicts remembered (a rollout group often repeats an answer); 0 disables.
        startup_timeout: seconds a new worker may take to import math-verify.
    """

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT_S,
        workers: int = 1,
        *,
        max_answer_chars: int = MAX_ANSWER_CHARS,
        memory_mb: int = DEFAULT_MEMORY_MB,
        cache_size: int = 4096,
        startup_timeout: float = STARTUP_TIMEOUT_S,
    ):
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.timeout = float(timeout)
        self.n_workers = int(workers)
        self.max_answer_chars = int(max_answer_chars)
        self.memory_mb = int(memory_mb)
        self.cache_size = int(cache_size)
        self.startup_timeout = float(startup_timeout)
        self.stats = GraderStats()
        self._cache: dict[tuple[str, str], bool] = {}
        self._workers: list[_Worker] = []
        self._spare: _Worker | None = None
        self._lock = threading.RLock()
        self._job = 0
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- public ----------------------------------------------------------------------------------------------
    def grade(self, prediction: str | None, reference: str, *, symbolic: bool = True) -> bool:
        """Whether ``prediction`` is the same answer as ``reference``."""
        return self.grade_many([prediction], [reference], symbolic=symbolic)[0]

    def grade_many(
        self, predictions: Sequence[str | None], references: Sequence[str], *, symbolic: bool = True
    ) -> list[bool]:
        """``grade`` for many pairs; the items that need math-verify run in parallel across the workers.

        A ``None`` prediction (no answer could be extracted) is wrong and counted in ``stats.no_answer``.
        """
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        results = [False] * len(predictions)
        todo: dict[tuple[str, str], list[int]] = {}  # distinct pairs for the pool -> their positions
        with self._lock:
            st = self.stats
            for i, (pred, ref) in enumerate(zip(predictions, references)):
                st.graded += 1
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
                    results[i] = decided
                elif not symbolic:
                    st.not_numeric += 1
                else:
                    key = (normalize_answer(pred), normalize_answer(ref))
                    cached = self._cache.get(key)
                    if cached is not None:
                        st.cache_hits += 1
                        results[i] = cached
                    elif key in todo:
                        st.cache_hits += 1  # same pair twice in one batch: graded once
                        todo[key].append(i)
                    else:
                        todo[key] = [i]
            if todo:
                pairs = list(todo)
                for pair, ok in zip(pairs, self._run_pool(pairs)):
                    for i in todo[pair]:
                        results[i] = ok
                    if self.cache_size > 0:
                        if len(self._cache) >= self.cache_size:
                            self._cache.clear()  # crude but bounded; verdicts are cheap to recompute
                        self._cache[pair] = ok
            st.correct += sum(results)
        return results

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = GraderStats()

    def close(self) -> None:
        """Stop the workers (idempotent; a later call to ``grade`` starts new ones)."""
        with self._lock:
            for w in self._workers + ([self._spare] if self._spare else []):
                w.kill()
            self._workers, self._spare = [], None

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- pool ------------------------------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        self.stats.worker_starts += 1
        return _Worker(self.memory_mb, self.startup_timeout)

    def _replace(self, w: _Worker) -> None:
        """Kill ``w``; the spare (warm, or at least already importing) takes its slot and a new spare starts."""
        w.kill()
        new = self._spare if self._spare is not None and self._spare.proc.poll() is None else self._spawn()
        self._workers[self._workers.index(w)] = new
        self._spare = self._spawn()

    def _run_pool(self, pairs: list[tuple[str, str]]) -> list[bool]:
        """Run math-verify on every pair; a timeout, an error or a dead worker gives False (counted)."""
        t0 = time.monotonic()
        st = self.stats
        while len(self._workers) < self.n_workers:
            self._workers.append(self._spawn())
        results = [False] * len(pairs)
        pending = list(range(len(pairs)))[::-1]  # pop() from the end = submission order
        jobs: dict[int, int] = {}  # job id -> index into pairs
        remaining = len(pairs)
        start_failures = 0
        while remaining:
            for w in self._workers:  # hand work to idle, ready workers
                if w.ready and w.job is None and pending:
                    idx = pending.pop()
                    self._job += 1
                    try:
                        w.send(self._job, *pairs[idx])
                    except (OSError, ValueError):  # died while idle: retry the item on its replacement
                        pending.append(idx)
                        st.errors += 1
                        self._replace(w)
                        continue
                    w.job, w.deadline = self._job, time.monotonic() + self.timeout
                    jobs[self._job] = idx
                    st.symbolic += 1
            waiting = [w for w in self._workers if not w.ready or w.job is not None]
            wait_s = max(0.0, min(w.deadline for w in waiting) - time.monotonic())
            readable = multiprocessing.connection.wait(waiting, timeout=wait_s)
            for w in list(self._workers):
                messages = w.read_messages() if w in readable else []
                if messages is None:  # EOF: the worker exited (crash, OOM killer, failed import)
                    if w.job is not None:
                        results[jobs.pop(w.job)] = False
                        remaining -= 1
                        st.errors += 1
                    elif not w.ready:
                        start_failures += 1
                        self._check_start_failures(start_failures, w)
                    self._replace(w)
                    continue
                for msg in messages:
                    if msg["id"] == "ready":
                        w.ready = True
                        start_failures = 0
                        continue
                    idx = jobs.pop(msg["id"])
                    w.job = None
                    remaining -= 1
                    status = msg["s"]
                    if status == "ok":
                        results[idx] = bool(msg["ok"])
                    elif status == "unparsed":
                        st.unparsed += 1
                    else:  # "error" / "memory"
                        st.errors += 1
                if w.job is not None and time.monotonic() >= w.deadline:
                    st.timeouts += 1
                    results[jobs.pop(w.job)] = False
                    remaining -= 1
                    self._replace(w)
                elif not w.ready and time.monotonic() >= w.deadline:
                    start_failures += 1
                    self._check_start_failures(start_failures, w)
                    logger.warning("grader worker not ready after %.0f s; replacing it", self.startup_timeout)
                    self._replace(w)
        st.pool_seconds += time.monotonic() - t0
        return results

    def _check_start_failures(self, count: int, w: _Worker) -> None:
        if count >= 3:  # an environment problem (math-verify missing...), not a hard item: say so loudly
            detail = w.startup_error()
            self.close()
            raise RuntimeError(
                "softgate grader workers fail to start (is math-verify installed? "
                f"pip install 'math-verify[antlr4_13_2]'). Last worker's stderr:\n{detail}"
            )


# --------------------------------------------------------------------------------------------------------------
# The process-wide default grader (what softgate.rewards uses when no grader is passed)

_default: Grader | None = None
_default_lock = threading.Lock()


def default_grader() -> Grader:
    """The shared grader: workers/timeout from ``SOFTGATE_GRADER_WORKERS`` / ``SOFTGATE_GRADER_TIMEOUT`` if set."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Grader(
                timeout=float(os.environ.get("SOFTGATE_GRADER_TIMEOUT", DEFAULT_TIMEOUT_S)),
                workers=int(os.environ.get("SOFTGATE_GRADER_WORKERS", 1)),
            )
        return _default


def configure_grader(**kwargs: Any) -> Grader:
    """Replace the shared grader with ``Grader(**kwargs)`` (the old one's workers are stopped)."""
    global _default
    with _default_lock:
        if _default is not None:
            _default.close()
        _default = Grader(**kwargs)
        return _default


if __name__ == "__main__":  # the worker entry point: python -m softgate.grading --worker MEMORY_MB PARENT_PID
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        _worker_loop(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit("usage: python -m softgate.grading --worker MEMORY_MB PARENT_PID  (started by Grader)")
