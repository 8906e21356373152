"""Task loaders (JSONL / JSON / Parquet / a stubbed Hugging Face hub), bad-data errors, prompts, registry, mixing."""

from __future__ import annotations

import json
import logging
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from softgate.tasks import DataError, Example, Examples, Task, get_task, names, register
from softgate.tasks.aime import load_aime
from softgate.tasks.base import DEFAULT_SYSTEM_PROMPT
from softgate.tasks.gsm8k import load_gsm8k, parse_final_answer
from softgate.tasks.latex_answers import load_deepmath, load_math500
from softgate.tasks.mix import allocate, default_size, mix, paper_mix

FIX = Path(__file__).parent / "fixtures"
FORMATS = ["jsonl", "json", "parquet"]


# -- loaders, every format ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_gsm8k_reference_is_the_number_after_hashes(fmt: str) -> None:
    examples = load_gsm8k(FIX / f"gsm8k.{fmt}")
    assert [e.reference for e in examples] == ["7", "1234", "-5", "3.5"]  # "1,234" loses its comma
    assert examples[0].question.startswith("Mia has 3 bags")
    assert examples[0].id == "gsm8k:0" and examples[0].source == "gsm8k"
    assert examples[0].meta["solution"].endswith("#### 7")
    assert examples.skipped == ()


@pytest.mark.parametrize("fmt", FORMATS)
def test_math500_fields(fmt: str) -> None:
    examples = load_math500(FIX / f"math500.{fmt}")
    assert [e.reference for e in examples] == ["\\frac{14}{3}", "(3, \\frac{\\pi}{2})", "2\\sqrt{3}"]
    assert examples[1].id == "test/precalculus/9002.json"
    assert examples[1].meta == {"subject": "Precalculus", "level": 2}


@pytest.mark.parametrize("fmt", FORMATS)
def test_aime_years_and_leading_zeros(fmt: str) -> None:
    examples = load_aime(FIX / f"aime.{fmt}")
    assert [e.reference for e in examples] == ["24", "24", "121"]  # "024" -> "24"
    assert [e.meta["year"] for e in examples] == [2024, 2024, 2025]
    only_2025 = load_aime(FIX / f"aime.{fmt}", years=[2025])
    assert [e.id for e in only_2025] == ["2025-I-92"]


def test_aime_year_read_from_id_when_no_year_column(tmp_path: Path) -> None:
    path = tmp_path / "aime.jsonl"
    path.write_text('{"id": "2025-II-7", "problem": "p", "answer": "5"}\n')
    assert load_aime(path, years=[2025])[0].meta["year"] == 2025


@pytest.mark.parametrize("fmt", FORMATS)
def test_deepmath_fields(fmt: str) -> None:
    examples = load_deepmath(FIX / f"deepmath.{fmt}")
    assert [e.reference for e in examples] == ["3", "2", "\\sqrt{2}"]
    assert examples[0].meta["difficulty"] == 4.0


def test_column_names_are_configurable() -> None:
    columns = {"question": "prompt", "answer": "target", "id": "uid"}
    examples = load_math500(FIX / "custom_columns.jsonl", columns=columns)
    assert [(e.id, e.question, e.reference) for e in examples] == [
        ("c1", "What is 6 times 7?", "42"),
        ("c2", "What is 1/2 + 1/4?", "\\frac{3}{4}"),
    ]
    with pytest.raises(ValueError, match="unknown column role 'questoin'"):
        load_math500(FIX / "custom_columns.jsonl", columns={"questoin": "prompt"})


def test_limit_and_task_load() -> None:
    task = get_task("gsm8k")
    assert len(task.load(FIX / "gsm8k.jsonl", limit=2)) == 2
    assert isinstance(task.load(FIX / "gsm8k.parquet"), Examples)


# -- bad data ---------------------------------------------------------------------------------------------------


def test_bad_jsonl_names_file_line_and_field() -> None:
    with pytest.raises(DataError) as err:
        load_gsm8k(FIX / "gsm8k_bad.jsonl")
    msg = str(err.value)
    assert "gsm8k_bad.jsonl: line 2" in msg and "'answer'" in msg and "####" in msg


def test_skip_invalid_counts_and_reports(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="softgate.tasks.base"):
        examples = load_gsm8k(FIX / "gsm8k_bad.jsonl", skip_invalid=True)
    assert [e.reference for e in examples] == ["7", "1234"]
    locations = [s.location.rsplit(": ", 1)[1] for s in examples.skipped]
    assert locations == ["line 2", "line 3", "line 4"]
    assert "missing field 'question'" in examples.skipped[1].reason
    assert "fields present: answer, prompt" in examples.skipped[1].reason
    assert "invalid JSON" in examples.skipped[2].reason
    assert "skipped 3 invalid row(s) of 5" in caplog.text


def test_bad_json_item_and_parquet_row() -> None:
    with pytest.raises(DataError, match=r"aime_bad\.json: item 1: malformed field 'answer'.*'x=3'"):
        load_aime(FIX / "aime_bad.json")
    skipped = load_aime(FIX / "aime_bad.json", skip_invalid=True).skipped
    assert [s.location.rsplit(": ", 1)[1] for s in skipped] == ["item 1", "item 2"]
    assert "malformed field 'problem' (question): empty" in skipped[1].reason
    with pytest.raises(DataError, match=r"deepmath_bad\.parquet: row 1: malformed field 'final_answer'.*None"):
        load_deepmath(FIX / "deepmath_bad.parquet")


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no_such.jsonl"):
        load_gsm8k(tmp_path / "no_such.jsonl")
    with pytest.raises(DataError, match="expected a JSON list"):
        load_gsm8k(FIX / "not_a_list.json")
    (tmp_path / "x.csv").write_text("question,answer\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        load_gsm8k(tmp_path / "x.csv")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no usable examples"):
        load_gsm8k(tmp_path / "empty.jsonl")
    (tmp_path / "broken.json").write_text('[{"question": "q",')
    with pytest.raises(DataError, match=r"broken\.json: invalid JSON at line 1"):
        load_gsm8k(tmp_path / "broken.json")


def test_binary_and_non_parquet_files_name_the_file(tmp_path: Path) -> None:
    binary = tmp_path / "data.jsonl"
    binary.write_bytes(b'{"question": "q", "answer": "#### 1"}\n\x89PNG\r\n\x1a\n\xff\xfe')
    with pytest.raises(DataError, match=r"data\.jsonl: line 2: not UTF-8 text"):
        load_gsm8k(binary)
    (tmp_path / "data.json").write_bytes(b"\xff\xfe[]")
    with pytest.raises(DataError, match=r"data\.json: not UTF-8 text"):
        load_gsm8k(tmp_path / "data.json")
    (tmp_path / "data.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"data\.parquet: not a readable Parquet file"):
        load_gsm8k(tmp_path / "data.parquet")


def _ten_rows_two_ids(tmp_path: Path) -> Path:
    """10 problems whose id column holds only A and B (A, B, A, B, ...)."""
    path = tmp_path / "dup.jsonl"
    rows = [{"id": "AB"[i % 2], "question": f"q{i}", "answer": str(i)} for i in range(10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_duplicate_ids_are_an_error_naming_the_first_duplicate(tmp_path: Path) -> None:
    path = _ten_rows_two_ids(tmp_path)
    with pytest.raises(DataError, match=r"dup\.jsonl: line 3: duplicate id 'A' \(first at .*dup\.jsonl: line 1\)"):
        get_task("fields").load(path)
    with pytest.raises(DataError, match="duplicate id 'A'"):
        load_math500(path, columns={"question": "question", "id": "id"})


def test_dedupe_keeps_the_first_row_of_each_id(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        examples = get_task("fields").load(_ten_rows_two_ids(tmp_path), dedupe=True)
    assert [(e.id, e.question) for e in examples] == [("A", "q0"), ("B", "q1")]
    assert examples.duplicates == 8 and "dropped 8 row(s)" in caplog.text
    assert get_task("fields").load(_ten_rows_two_ids(tmp_path), dedupe=True, limit=1).duplicates == 0


def test_fields_task_reads_any_question_answer_columns_and_sources(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    rows = [{"problem": "1+1?", "final": 2, "source": "easy"}, {"problem": "x^2=4, x>0?", "final": "2"},
            {"problem": "3*3?", "final": 9, "source": "hard"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = get_task("fields")
    examples = task.load(path, columns={"question": "problem", "answer": "final"})
    assert [(e.question, e.reference, e.source) for e in examples] == [
        ("1+1?", "2", "easy"), ("x^2=4, x>0?", "2", "fields"), ("3*3?", "9", "hard")]
    assert [e.id for e in examples] == ["fields:0", "fields:1", "fields:2"]
    assert task.extract == ("answer",) and task.symbolic  # the default extraction mode, graded by the grader
    assert task.answer_rewards(["<answer>\\frac{4}{2}</answer>"], ["2"]) == [1.0]
    with pytest.raises(DataError, match=r"line 1: missing field 'question' \(question\); fields present: final"):
        task.load(path)


def test_parse_final_answer() -> None:
    assert parse_final_answer("so 12.\n#### 12") == "12"
    assert parse_final_answer("#### 1,000,000 ") == "1000000"
    assert parse_final_answer("first #### 3 then\n#### 4") == "4"
    assert parse_final_answer("no marker") is None
    assert parse_final_answer("####   ") is None


def test_hugging_face_path_uses_datasets_stub(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load_dataset(name, config=None, split=None):  # the stub never touches the network
        calls.append((name, config, split))
        return [{"question": "q1", "answer": "work\n#### 5"}, {"question": "q2", "answer": "no final"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(DataError, match=r"hf:openai/gsm8k\[test\]: row 1: malformed field 'answer'"):
        load_gsm8k("hf:openai/gsm8k", split="test")
    examples = get_task("gsm8k").load("hf", split="train", skip_invalid=True)
    assert [e.reference for e in examples] == ["5"] and len(examples.skipped) == 1
    assert calls == [("openai/gsm8k", "main", "test"), ("openai/gsm8k", "main", "train")]


def test_latex_answer_tasks_read_their_own_columns_and_split(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    rows = [{"problem": "p", "question": "q", "answer": "\\frac12", "final_answer": "3", "level": 2, "topic": "t"}]

    def load_dataset(name, config=None, split=None):
        calls.append((name, split))
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    math500, deepmath = get_task("math500").load("hf"), get_task("deepmath").load("hf")
    assert calls == [("HuggingFaceH4/MATH-500", "test"), ("zwhe99/DeepMath-103K", "train")]
    assert (math500[0].question, math500[0].reference, math500[0].source, dict(math500[0].meta)) == (
        "p", "\\frac12", "math500", {"level": 2})
    assert (deepmath[0].question, deepmath[0].reference, deepmath[0].source, dict(deepmath[0].meta)) == (
        "q", "3", "deepmath", {"topic": "t"})


def test_missing_datasets_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import raises ImportError
    with pytest.raises(ImportError, match=r"softgate\[data\]"):
        load_math500("hf:HuggingFaceH4/MATH-500")


# -- prompts ----------------------------------------------------------------------------------------------------

EXAMPLE = Example(question="What is 2 + 3?", reference="5", id="t:0", source="t")


class ChatTokenizer:
    chat_template = "{{ fake }}"

    def __init__(self, system_ok: bool = True):
        self.system_ok = system_ok
        self.seen: list = []

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
        assert tokenize is False and add_generation_prompt is True
        if not self.system_ok and messages[0]["role"] == "system":
            raise ValueError("System role not supported")
        self.seen.append(messages)
        return "|".join(f"<{m['role']}>{m['content']}" for m in messages) + "|<assistant>"


def test_render_prompt_uses_chat_template_with_system_prompt() -> None:
    tok = ChatTokenizer()
    prompt = get_task("math500").render_prompt(EXAMPLE, tok)
    assert prompt == f"<system>{DEFAULT_SYSTEM_PROMPT}|<user>What is 2 + 3?|<assistant>"
    assert "<think>" in DEFAULT_SYSTEM_PROMPT and "<answer>" in DEFAULT_SYSTEM_PROMPT


def test_render_prompt_folds_system_into_user_when_template_rejects_it() -> None:
    prompt = get_task("gsm8k").render_prompt(EXAMPLE, ChatTokenizer(system_ok=False))
    assert prompt == f"<user>{DEFAULT_SYSTEM_PROMPT}\n\nWhat is 2 + 3?|<assistant>"


def test_render_prompt_plain_template_without_chat_template() -> None:
    class Plain:
        chat_template = None

    task = get_task("gsm8k")
    expected = f"{DEFAULT_SYSTEM_PROMPT}\n\nQuestion: What is 2 + 3?\nAnswer:"
    assert task.render_prompt(EXAMPLE, Plain()) == expected
    assert task.render_prompt(EXAMPLE, None) == expected
    custom = Task(name="custom", plain_template="Q: {question}\nA:")
    assert custom.render_prompt(EXAMPLE) == "Q: What is 2 + 3?\nA:"


# -- registry ---------------------------------------------------------------------------------------------------


def test_registry_names_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import softgate.tasks as tasks_pkg

    monkeypatch.setattr(tasks_pkg, "_REGISTRY", dict(tasks_pkg._REGISTRY))  # keep the test's entry local
    assert {"gsm8k", "math500", "aime", "deepmath", "synthetic", "fields"} <= set(names())
    with pytest.raises(KeyError, match="unknown task 'gsm9k'; valid tasks: .*gsm8k"):
        get_task("gsm9k")
    with pytest.raises(ValueError, match="already registered"):
        register("gsm8k", "softgate.tasks.gsm8k:TASK")
    register("test_missing_module", "softgate.tasks.not_written_yet:TASK")
    with pytest.raises(ImportError, match="not available"):
        get_task("test_missing_module")


def test_registry_task_settings() -> None:
    gsm8k, math500, aime = get_task("gsm8k"), get_task("math500"), get_task("aime")
    assert gsm8k.extract == ("answer", "gsm8k") and not gsm8k.symbolic
    assert math500.extract == ("answer", "boxed") and math500.symbolic
    assert not aime.symbolic and get_task("deepmath").symbolic
    assert get_task("gsm8k") is gsm8k  # built once
    assert isinstance(get_task("synthetic"), Task)
    with pytest.raises(ValueError, match="extract modes"):
        Task(name="bad", extract=("xml",))


def test_task_reward_functions_use_task_extraction() -> None:
    task = get_task("gsm8k")
    completions = ["<think>t</think><answer>5</answer>", "work\n#### 5", "<answer>6</answer>"]
    assert task.answer_rewards(completions, ["5", "5", "5"]) == [1.0, 1.0, 0.0]
    assert task.format_rewards(completions) == [1.0, 0.0, 0.25]
    assert set(task.reward_fns()) == {"answer", "format"}
    assert task.extract_answer("#### 1,234") == "1,234"


def test_task_grades_with_the_grader_it_is_given() -> None:
    from softgate.grading import Grader

    completions = ["<answer>\\sqrt{8}</answer>", "\\boxed{3}", "no answer"]
    with Grader(timeout=1.0, symbolic=False) as grader:  # the caller's grader decides: no math-verify here
        grades = get_task("math500").grade_answers(completions, ["2\\sqrt{2}", "3", "1"], grader)
        assert grades.verdicts == [False, True, False]
        assert (grades.stats.not_numeric, grades.stats.fast_path, grades.stats.no_answer) == (1, 1, 1)
        assert get_task("math500").answer_rewards(completions[1:], ["3", "1"], grader) == [1.0, 0.0]
        assert grader._pool.starts == 0


def test_math500_and_deepmath_share_one_definition() -> None:
    math500, deepmath = get_task("math500"), get_task("deepmath")
    assert (math500.extract, math500.symbolic) == (deepmath.extract, deepmath.symbolic)
    assert (math500.default_hf, deepmath.default_hf) == (("HuggingFaceH4/MATH-500",), ("zwhe99/DeepMath-103K",))
    assert (load_math500.__name__, load_deepmath.__name__) == ("load_math500", "load_deepmath")


# -- mixing -----------------------------------------------------------------------------------------------------


def _examples(source: str, n: int) -> list[Example]:
    return [Example(question=f"{source} q{i}", reference=str(i), id=f"{source}:{i}", source=source) for i in range(n)]


def test_allocate_largest_remainder() -> None:
    assert allocate(10, [1, 1]) == [5, 5]
    assert allocate(10, [1, 2]) == [3, 7]  # 3.33 / 6.67 -> remainders .33 / .67: the second gets the spare one
    assert allocate(7, [1, 1, 1]) == [3, 2, 2]  # equal remainders: lower index first
    assert sum(allocate(1001, [0.3, 0.7, 1e-9])) == 1001
    with pytest.raises(ValueError, match="weights"):
        allocate(3, [0, 0])
    assert default_size([7, 100], [1, 1]) == 14  # equal mix stops when the smaller source is used up


def test_mix_is_deterministic_and_proportional() -> None:
    gsm, deep = _examples("gsm8k", 30), _examples("deepmath", 500)
    a = paper_mix(gsm, deep, n=100, seed=3)
    assert a == paper_mix(gsm, deep, n=100, seed=3)
    assert a != paper_mix(gsm, deep, n=100, seed=4)
    assert Counter(e.source for e in a) == {"gsm8k": 50, "deepmath": 50}
    # 50 > 30 GSM8K examples: every one is used once before any repeats
    counts = Counter(e.id for e in a if e.source == "gsm8k")
    assert len(counts) == 30 and set(counts.values()) <= {1, 2}
    # sources interleave rather than sitting in two blocks
    assert {e.source for e in a[:20]} == {"gsm8k", "deepmath"}


def test_mix_default_size_and_mapping_weights() -> None:
    gsm, deep = _examples("gsm8k", 30), _examples("deepmath", 500)
    assert len(paper_mix(gsm, deep)) == 60
    out = mix({"gsm8k": gsm, "deepmath": deep}, {"gsm8k": 1, "deepmath": 3}, n=40, seed=0)
    assert Counter(e.source for e in out) == {"gsm8k": 10, "deepmath": 30}
    with pytest.raises(ValueError, match="unknown sources"):
        mix({"gsm8k": gsm}, {"gsmk": 1}, n=4)
    with pytest.raises(ValueError, match="has weight 1.0 but no examples"):
        mix([gsm, []], [1, 1], n=4)
