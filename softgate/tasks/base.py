"""Examples, tasks and the record readers every loader shares.

An :class:`Example` is one problem with its gold answer. A :class:`Task` knows how to turn an example into a prompt
(system prompt asking for ``<think>`` reasoning then ``<answer>``; the tokenizer's chat template when it has one),
which answer-extraction modes apply, and which reward functions score a completion. Loaders read local JSONL,
JSON (a list of objects) and Parquet files, or a Hugging Face dataset name (``hf:owner/name``), and turn each row
into an :class:`Example`; a row that cannot be used raises :class:`DataError` naming the file, the line or row and
the field, unless ``skip_invalid=True``, in which case the row is counted in ``Examples.skipped`` and a warning is
logged.

Nothing here imports torch or transformers; the tokenizer is duck-typed (``chat_template`` and
``apply_chat_template``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from softgate.choices import EXTRACT_MODES

if TYPE_CHECKING:
    from softgate.grading import Grader, Grades

logger = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The User asks a question and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process and then gives the final answer. "
    "The reasoning goes inside <think> </think> tags and the final answer inside <answer> </answer> tags, "
    "i.e. <think> reasoning here </think><answer> final answer here </answer>. "
    "The answer tag contains only the final answer, without units or explanation."
)

# Used when the tokenizer has no chat template (base models, the tiny embedded model). Fields: {system}, {question}.
DEFAULT_PLAIN_TEMPLATE = "{system}\n\nQuestion: {question}\nAnswer:"


@dataclass(frozen=True)
class Example:
    """One problem and its gold answer.

    Attributes:
        question: the problem text shown to the model (no instructions, no template).
        reference: the gold final answer as a string (GSM8K: the number after ``####``; MATH500/DeepMath: the
            LaTeX answer; AIME: the integer 0..999).
        id: a stable identifier; the dataset's own id column when there is one, else ``"<source>:<index>"``.
        source: the dataset the example came from (``"gsm8k"``, ``"math500"``, ``"aime"``, ``"deepmath"``, ...).
        meta: anything else worth keeping (``year`` for AIME, ``level``/``subject`` for MATH500, ``difficulty`` for
            DeepMath). Not part of the hash.
    """

    question: str
    reference: str
    id: str
    source: str
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class SkippedRow:
    """A row dropped under ``skip_invalid=True``: where it was and why."""

    location: str  # "path: line 7" / "path: row 3" / "hf:name[split]: row 3"
    reason: str


class Examples(list):
    """A ``list[Example]`` that also carries the rows skipped while loading (empty unless ``skip_invalid``) and
    the number of rows dropped for repeating an earlier row's id (0 unless ``dedupe``)."""

    def __init__(self, items: Sequence[Example] = (), skipped: Sequence[SkippedRow] = (), origin: str = "",
                 duplicates: int = 0):
        super().__init__(items)
        self.skipped: tuple[SkippedRow, ...] = tuple(skipped)
        self.origin = origin
        self.duplicates = duplicates


class DataError(ValueError):
    """A data file or row cannot be used. The message names the file, the line/row and the field."""


class Tokenizer(Protocol):  # the two members render_prompt needs
    chat_template: Any

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


# --------------------------------------------------------------------------------------------------------------
# Tasks


@dataclass(frozen=True)
class Task:
    """A problem source plus how to prompt for it and how to score completions.

    Attributes:
        name: registry name (``softgate.tasks.get_task(name)``).
        system_prompt: instructions for the ``<think>``/``<answer>`` format.
        plain_template: prompt used when the tokenizer has no chat template; ``{system}`` and ``{question}``.
        extract: answer-extraction modes tried in order (see ``softgate.rewards.extract_answer``): ``"answer"``
            (content of the last ``<answer>...</answer>``), ``"gsm8k"`` (text after the last ``####``),
            ``"boxed"`` (content of the last ``\\boxed{...}``).
        symbolic: when True, answers the exact/numeric fast path cannot decide go to math-verify in the grader
            process pool; when False the fast path's answer is final (integer-answer tasks never touch the pool).
        loader: ``loader(source, **kwargs) -> Examples`` reading this task's data (see ``load``).
        default_hf: the Hugging Face dataset(s) used when ``load`` is given ``"hf"`` alone (several are
            concatenated, e.g. AIME 2024 + 2025). Never used in tests.
    """

    name: str
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    plain_template: str = DEFAULT_PLAIN_TEMPLATE
    extract: tuple[str, ...] = ("answer",)
    symbolic: bool = True
    loader: Callable[..., Examples] | None = None
    default_hf: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        bad = [m for m in self.extract if m not in EXTRACT_MODES]
        if bad or not self.extract:
            raise ValueError(f"Task {self.name!r}: extract modes {list(self.extract)!r}; valid: {list(EXTRACT_MODES)}")

    # -- prompts ---------------------------------------------------------------------------------------------
    def user_message(self, example: Example) -> str:
        """The user turn: the question alone (the format instructions live in the system prompt)."""
        return example.question

    def render_prompt(self, example: Example, tokenizer: Tokenizer | None = None) -> str:
        """The prompt string the model continues.

        With a tokenizer that has a chat template: system + user messages through ``apply_chat_template`` with the
        generation prompt appended. Templates that reject a system role (they raise) get the system prompt folded
        into the user turn. Without a chat template (or without a tokenizer): ``plain_template``.
        """
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            user = self.user_message(example)
            messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]
            try:
                return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as err:  # noqa: BLE001 - jinja raises TemplateError for "system role not supported"
                logger.debug("chat template rejected a system message (%s); folding it into the user turn", err)
                merged = [{"role": "user", "content": f"{self.system_prompt}\n\n{user}"}]
                return tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
        return self.plain_template.format(system=self.system_prompt, question=example.question)

    # -- rewards ---------------------------------------------------------------------------------------------
    def grade_answers(self, completions: Sequence[str], references: Sequence[str],
                      grader: Grader | None = None) -> Grades:
        """Verdict per completion with this task's extraction modes and symbolic setting, and the counters of the
        call (see ``softgate.rewards.grade_answers``; ``grader=None`` uses the default one)."""
        from softgate import rewards

        return rewards.grade_answers(completions, references, extract=self.extract, symbolic=self.symbolic,
                                     grader=grader)

    def answer_rewards(self, completions: Sequence[str], references: Sequence[str],
                       grader: Grader | None = None) -> list[float]:
        """1.0 / 0.0 per completion (see :meth:`grade_answers`)."""
        return [1.0 if ok else 0.0 for ok in self.grade_answers(completions, references, grader).verdicts]

    def format_rewards(self, completions: Sequence[str]) -> list[float]:
        """The paper's 1 / 0.5 / 0.25 / 0 format levels per completion."""
        from softgate import rewards

        return rewards.format_rewards(completions)

    def reward_fns(self) -> dict[str, Callable[..., list[float]]]:
        """Named reward functions the trainer weights and logs separately: ``{"answer": f(c, r), "format": f(c)}``."""
        return {"answer": self.answer_rewards, "format": self.format_rewards}

    def extract_answer(self, completion: str) -> str | None:
        """The answer string this task grades (None when no extraction mode finds one)."""
        from softgate import rewards

        return rewards.extract_answer(completion, self.extract)

    # -- data ------------------------------------------------------------------------------------------------
    def load(self, source: str | os.PathLike[str], **kwargs: Any) -> Examples:
        """Load examples from a local .jsonl/.json/.parquet file or ``hf:owner/name`` (``"hf"`` = ``default_hf``).

        Keyword arguments go to the task's loader (``split``, ``columns``, ``skip_invalid``, ``limit``, ...).
        """
        if self.loader is None:
            raise ValueError(f"Task {self.name!r} has no data loader")
        if str(source) != "hf":
            return self.loader(source, **kwargs)
        if not self.default_hf:
            raise ValueError(f"Task {self.name!r} has no default Hugging Face dataset; pass hf:owner/name")
        parts = [self.loader(f"hf:{name}", **kwargs) for name in self.default_hf]
        return Examples(
            [e for part in parts for e in part],
            [s for part in parts for s in part.skipped],
            origin="+".join(p.origin for p in parts),
            duplicates=sum(p.duplicates for p in parts),
        )


# --------------------------------------------------------------------------------------------------------------
# Record readers: yield (location, row) with a location that names the file and the line/row.

FILE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}


def iter_records(
    source: str | os.PathLike[str], *, split: str | None = None, hf_config: str | None = None
) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, row)`` for every record of a local file or a Hugging Face dataset.

    ``location`` reads ``"<path>: line <n>"`` (JSONL, 1-based line numbers), ``"<path>: item <i>"`` (JSON list,
    0-based) or ``"<path>: row <i>"`` (Parquet and Hugging Face, 0-based). ``row`` is whatever the file holds there
    (normally a dict; the caller checks). A line that is not valid JSON raises :class:`DataError` right away: the
    caller decides whether to skip it.
    """
    text = str(source)
    if text.startswith("hf:"):
        yield from _iter_hf(text[3:], split=split, config=hf_config)
        return
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"data file not found: {path} (local .jsonl/.json/.parquet, or hf:owner/name for a Hugging Face dataset)"
        )
    kind = FILE_FORMATS.get(path.suffix.lower())
    if kind == "jsonl":
        yield from _iter_jsonl(path)
    elif kind == "json":
        try:
            data = json.loads(_read_text(path))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
        if isinstance(data, dict):  # {"data": [...]} / {"rows": [...]} wrappers are common
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise DataError(f"{path}: expected a JSON list of objects (or an object holding exactly one list)")
            data = lists[0]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        for i, row in enumerate(data):
            yield f"{path}: item {i}", row
    elif kind == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(f"reading {path} needs pyarrow: pip install 'softgate[data]'") from None
        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError; a truncated file an OSError
            raise DataError(f"{path}: not a readable Parquet file ({' '.join(str(err).split())})") from None
        for i, row in enumerate(table.to_pylist()):
            yield f"{path}: row {i}", row
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(FILE_FORMATS)}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); JSON data must be UTF-8 "
                        "(a binary file?)") from None


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as fh:  # bytes, so that a decoding error can name its line
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: line {lineno}: not UTF-8 text ({err.reason} at byte {err.start} of the "
                                "line); JSONL data must be UTF-8 (a binary file?)") from None
            if not line.strip():
                continue  # blank lines (e.g. a trailing newline) are not records
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                yield f"{path}: line {lineno}", _BadRecord(f"invalid JSON ({err.msg} at column {err.colno})")
                continue
            yield f"{path}: line {lineno}", row


def _iter_hf(name: str, *, split: str | None, config: str | None) -> Iterator[tuple[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise ImportError(f"loading hf:{name} needs the datasets package: pip install 'softgate[data]'") from None
    ds = datasets.load_dataset(name, config, split=split or "test")
    for i, row in enumerate(ds):
        yield f"hf:{name}[{split or 'test'}]: row {i}", row


@dataclass(frozen=True)
class _BadRecord:
    """Placeholder for a record that could not even be decoded (kept so the caller can skip or raise)."""

    reason: str


class RowError(Exception):
    """Raised by a row parser; the loader adds the location and turns it into DataError or a skip."""


def get_field(row: Mapping[str, Any], column: str, role: str) -> str:
    """``row[column]`` as a non-empty string; numbers are converted, anything else raises :class:`RowError`.

    ``role`` names the logical field (``question``, ``answer``...) so messages say both.
    """
    if column not in row:
        present = ", ".join(sorted(map(str, row))) or "none"
        raise RowError(f"missing field {column!r} ({role}); fields present: {present}")
    value = row[column]
    if isinstance(value, bool) or value is None:
        raise RowError(f"malformed field {column!r} ({role}): expected text, got {value!r}")
    if isinstance(value, int):
        value = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise RowError(f"malformed field {column!r} ({role}): {value!r}")
        value = str(int(value)) if value.is_integer() else repr(value)
    if not isinstance(value, str):
        raise RowError(f"malformed field {column!r} ({role}): expected text, got {type(value).__name__}")
    if not value.strip():
        raise RowError(f"malformed field {column!r} ({role}): empty")
    return value


RowParser = Callable[[Mapping[str, Any], int], Example]


def load_records(
    source: str | os.PathLike[str],
    parse_row: RowParser,
    *,
    split: str | None = None,
    hf_config: str | None = None,
    skip_invalid: bool = False,
    dedupe: bool = False,
    limit: int | None = None,
) -> Examples:
    """Read ``source`` and turn each record into an :class:`Example` with ``parse_row(row, index)``.

    ``parse_row`` raises :class:`RowError` for a bad row (missing/malformed field). Without ``skip_invalid`` that
    becomes a :class:`DataError` naming the file, line/row and field; with it the row is recorded in
    ``Examples.skipped`` and one warning with the count is logged. An empty result is an error either way.

    Ids must be unique (an evaluation reports per problem, and two problems under one id would be merged): a
    repeated id is a :class:`DataError` naming the row, the id and where it first appeared; with ``dedupe`` the
    first row of each id is kept, and the count of dropped rows is in ``Examples.duplicates`` and one warning.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    examples: list[Example] = []
    skipped: list[SkippedRow] = []
    first_seen: dict[str, str] = {}  # id -> location of its first row
    index = duplicates = 0
    for location, row in iter_records(source, split=split, hf_config=hf_config):
        try:
            if isinstance(row, _BadRecord):
                raise RowError(row.reason)
            if not isinstance(row, Mapping):
                raise RowError(f"expected an object with named fields, got {type(row).__name__}")
            example = parse_row(row, index)
        except RowError as err:
            if not skip_invalid:
                raise DataError(f"{location}: {err}") from None
            skipped.append(SkippedRow(location, str(err)))
            example = None
        index += 1
        if example is not None and example.id in first_seen:
            if not dedupe:
                raise DataError(f"{location}: duplicate id {example.id!r} (first at {first_seen[example.id]}); ids "
                                "must be unique: fix the file, or keep the first row of each id (--dedupe)")
            duplicates += 1
        elif example is not None:
            first_seen[example.id] = location
            examples.append(example)
        if limit is not None and len(examples) >= limit:
            break
    if skipped:
        logger.warning(
            "%s: skipped %d invalid row(s) of %d (first: %s: %s)",
            source, len(skipped), index, skipped[0].location, skipped[0].reason,
        )
    if duplicates:
        logger.warning("%s: dropped %d row(s) whose id repeats an earlier row's", source, duplicates)
    if not examples:
        note = f" ({len(skipped)} invalid row(s) skipped)" if skipped else "" if index else " (it holds no records)"
        raise DataError(f"{source}: no usable examples{note}")
    return Examples(examples, skipped, origin=str(source), duplicates=duplicates)


def row_id(row: Mapping[str, Any], id_column: str | None, source: str, index: int) -> str:
    """The dataset's own id when ``id_column`` is present in the row, else ``"<source>:<index>"``."""
    if id_column and id_column in row and row[id_column] is not None:
        return str(row[id_column])
    return f"{source}:{index}"


def question_answer_task(name: str, default_columns: Mapping[str, str], *, meta_columns: Sequence[str] = (),
                         extract: tuple[str, ...] = ("answer",), default_split: str | None = None,
                         default_hf: tuple[str, ...] = ()) -> Task:
    """A task over rows holding a question and its final answer (MATH500, DeepMath, any file via ``fields``).

    ``default_columns`` maps the roles ``question``, ``answer``, ``id`` and optionally ``source`` to column names
    (the loader's ``columns=`` overrides them); ``meta_columns`` are kept in ``meta``; ``default_split`` is the
    Hugging Face split read when none is given. An example's source is its row's ``source`` value when that role
    is mapped and the row has one (per-source breakdowns of an evaluation), else ``name``. Answers that the fast
    path cannot decide go to math-verify (``symbolic=True``).
    """

    def parse(row: Mapping[str, Any], index: int, cols: Mapping[str, str]) -> Example:
        question = get_field(row, cols["question"], "question")
        answer = get_field(row, cols["answer"], "answer")
        meta = {k: row[k] for k in meta_columns if k in row}
        origin = row.get(cols["source"]) if "source" in cols else None
        origin = str(origin).strip() if origin is not None and str(origin).strip() else name
        return Example(question.strip(), answer.strip(), row_id(row, cols["id"], name, index), origin, meta)

    def load(
        source: str | os.PathLike[str],
        *,
        split: str | None = None,
        columns: Mapping[str, str] | None = None,
        skip_invalid: bool = False,
        dedupe: bool = False,
        limit: int | None = None,
        hf_config: str | None = None,
    ) -> Examples:
        cols = merge_columns(default_columns, columns)
        return load_records(source, lambda row, index: parse(row, index, cols), split=split or default_split,
                            hf_config=hf_config, skip_invalid=skip_invalid, dedupe=dedupe, limit=limit)

    load.__name__ = load.__qualname__ = f"load_{name}"
    load.__doc__ = f"{name} examples; ``columns`` maps the roles {', '.join(map(repr, default_columns))}."
    return Task(name=name, extract=extract, symbolic=True, loader=load, default_hf=default_hf)


def merge_columns(defaults: Mapping[str, str], columns: Mapping[str, str] | None) -> dict[str, str]:
    """Default logical-field -> column mapping updated by the user's, rejecting unknown logical fields."""
    merged = dict(defaults)
    for key, value in (columns or {}).items():
        if key not in defaults:
            raise ValueError(f"unknown column role {key!r}; valid roles: {sorted(defaults)}")
        merged[key] = value
    return merged

