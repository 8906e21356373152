"""`softgate eval` end to end on a tiny random model: synthetic task and a GSM8K fixture file."""

import json

import pytest

import softgate

from softgate.cli import main


def test_eval_synthetic_writes_items_and_summary(tiny_random_model, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "--model", tiny_random_model, "--task", "synthetic", "--limit", "6", "--samples", "3",
                 "--max-new-tokens", "8", "--threads", "1", "--out", str(out)])
    assert code == 0
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(items) == 18 and {i["sample"] for i in items} == {0, 1, 2}
    assert {"prompt", "completion", "extracted", "reference", "correct", "format_reward"} <= items[0].keys()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 6 and summary["samples"] == 18 and summary["samples_per_problem"] == 3
    settings = {k: summary[k] for k in ("model", "task", "data", "temperature", "max_new_tokens", "seed", "threads")}
    assert settings == {"model": tiny_random_model, "task": "synthetic", "data": None, "temperature": 0.7,
                        "max_new_tokens": 8, "seed": 0, "threads": 1}
    assert summary["softgate_version"] == softgate.__version__
    assert summary["wall_time_s"] > 0 and summary["generated_tokens"] == sum(i["length"] for i in items)
    assert summary["tokens_per_s"] == pytest.approx(summary["generated_tokens"] / summary["wall_time_s"])
    assert "pass@3" in summary and "maj@3" in summary
    assert summary["accuracy"] == sum(i["correct"] for i in items) / 18
    assert 0.0 <= summary["accuracy_ci_low"] <= summary["accuracy"] <= summary["accuracy_ci_high"] <= 1.0
    printed = capsys.readouterr().out
    assert "pass@1" in printed and "tokens/s" in printed and "1 thread(s)" in printed


def test_eval_gsm8k_fixture(tiny_random_model, tmp_path):
    out = tmp_path / "eval"
    code = main(["eval", "--model", tiny_random_model, "--task", "gsm8k", "--data", "tests/fixtures/gsm8k.jsonl",
                 "--limit", "4", "--max-new-tokens", "6", "--out", str(out)])
    assert code == 0
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    from softgate.tasks import get_task

    expected = get_task("gsm8k").load("tests/fixtures/gsm8k.jsonl", limit=4)
    assert [i["reference"] for i in items] == [e.reference for e in expected]
    assert items[0]["reference"] == "7" and len(items) == 4
    assert "Mia has 3 bags" in items[0]["prompt"]


def test_eval_needs_data_for_file_tasks(tiny_random_model, tmp_path, capsys):
    assert main(["eval", "--model", tiny_random_model, "--task", "math500", "--out", str(tmp_path)]) == 2
    assert "--data is required" in capsys.readouterr().err


def test_eval_builds_its_grader_from_the_options(tiny_random_model, tmp_path, capsys, monkeypatch):
    import softgate.evaluation
    from softgate.evaluation import EvalResult, summary_of_records
    from softgate.grading import GraderStats

    seen = {}

    def fake_evaluate(model, tokenizer, task, examples, *, grader, **kwargs):
        seen.update(timeout=grader.timeout, workers=grader._pool.size)
        records = [{"item": 0, "id": "a", "correct": False, "format_reward": 0.0, "length": 3, "extracted": None,
                    "truncated": False}]
        summary = {**summary_of_records(records, 1), "samples_per_problem": 1, "wall_time_s": 1.0,
                   "generated_tokens": 3, "tokens_per_s": 3.0}
        return EvalResult(summary, records, GraderStats(graded=1, timeouts=1))

    monkeypatch.setattr(softgate.evaluation, "evaluate_policy", fake_evaluate)
    code = main(["eval", "--model", tiny_random_model, "--task", "synthetic", "--limit", "1", "--out",
                 str(tmp_path), "--grader-timeout", "2.5", "--grader-workers", "2"])
    assert code == 0 and seen == {"timeout": 2.5, "workers": 2}
    assert "grader: 1 timeouts, 0 errors, 0 too_long (scored 0)" in capsys.readouterr().out
    for bad in (["--grader-timeout", "0"], ["--grader-workers", "0"]):
        assert main(["eval", "--model", tiny_random_model, "--task", "synthetic", "--out", str(tmp_path / "x"),
                     *bad]) == 2
    assert "must be" in capsys.readouterr().err


def test_eval_refuses_to_overwrite_without_overwrite(tiny_random_model, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", "--model", tiny_random_model, "--task", "synthetic", "--limit", "2", "--max-new-tokens", "2",
            "--out", str(out)]
    assert main(args) == 0
    first = (out / "summary.json").read_text()
    capsys.readouterr()
    assert main([*args, "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"softgate eval: error: {out} already holds an evaluation (summary.json); pass --overwrite to "
                   "replace it or choose another --out"]
    assert (out / "summary.json").read_text() == first
    assert main([*args, "--seed", "1", "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["seed"] == 1


def _rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_any_question_answer_file_with_sources(tiny_random_model, tmp_path, capsys):
    data = _rows(tmp_path / "mixed.jsonl", [
        {"problem": f"What is {i} plus {i}?", "final": 2 * i, "source": "easy" if i < 3 else "hard"}
        for i in range(5)])
    out = tmp_path / "eval"
    assert main(["eval", "--model", tiny_random_model, "--data", str(data), "--question-field", "problem",
                 "--answer-field", "final", "--samples", "2", "--max-new-tokens", "4", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert summary["task"] == "fields" and summary["n"] == 5 and summary["question_field"] == "problem"
    assert [i["reference"] for i in items[::2]] == ["0", "2", "4", "6", "8"]
    by_source = summary["by_source"]
    assert list(by_source) == ["easy", "hard"]
    assert (by_source["easy"]["n"], by_source["hard"]["n"]) == (3, 2)
    easy = [i["correct"] for i in items if i["source"] == "easy"]
    assert by_source["easy"]["accuracy"] == sum(easy) / len(easy)
    assert "  easy: pass@1" in capsys.readouterr().out


def test_eval_duplicate_ids_error_or_dedupe(tiny_random_model, tmp_path, capsys):
    data = _rows(tmp_path / "dup.jsonl", [{"id": "AB"[i % 2], "question": f"q{i}", "answer": str(i)}
                                          for i in range(10)])
    base = ["eval", "--model", tiny_random_model, "--data", str(data), "--question-field", "question",
            "--answer-field", "answer", "--max-new-tokens", "2"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{data}: line 3: duplicate id 'A' (first at {data}: line 1)" in err[0]
    assert main([*base, "--dedupe", "--out", str(tmp_path / "b")]) == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["n"] == 2 and summary["duplicates_dropped"] == 8
    assert "--dedupe: dropped 8 row(s)" in capsys.readouterr().out


def test_problems_never_merge_in_the_summary():
    """Two problems under one id (e.g. two datasets concatenated) stay two problems: records group by item."""
    from softgate.evaluation import summary_of_records

    records = [{"item": i, "id": "same", "source": "s", "correct": i == 0, "format_reward": 1.0, "length": 2,
                "extracted": "1", "truncated": False} for i in range(2)]
    assert summary_of_records(records, 1)["n"] == 2


def _bad_inputs(model: str, tmp_path):
    """(case, extra argv, text the one line must contain) for every bad input of the docs/eval.md table."""
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text('{"question": "q", "answer": "1"}\n{"question": \n')
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe\xfd")
    wrong = _rows(tmp_path / "wrong.jsonl", [{"prompt": "q", "answer": "1"}])
    fields = ["--question-field", "question", "--answer-field", "answer"]
    synthetic = ["--model", model, "--task", "synthetic"]
    return [
        ("missing model path", ["--model", str(tmp_path / "nope"), "--task", "synthetic"], "model path not found"),
        ("directory without config.json", ["--model", str(no_config), "--task", "synthetic"], "has no config.json"),
        ("hub name, no network", ["--model", "softgate-test-org/not-cached", "--task", "synthetic"],
         "offline: model 'softgate-test-org/not-cached' is not in the local Hugging Face cache"),
        ("missing data file", ["--model", model, "--data", str(tmp_path / "none.jsonl"), *fields],
         "data file not found"),
        ("empty data file", ["--model", model, "--data", str(empty), *fields], "no usable examples"),
        ("malformed JSONL", ["--model", model, "--data", str(malformed), *fields], "line 2: invalid JSON"),
        ("wrong column", ["--model", model, "--data", str(wrong), *fields],
         "line 1: missing field 'question' (question); fields present: answer, prompt"),
        ("binary file", ["--model", model, "--data", str(binary), *fields], "line 1: not UTF-8 text"),
        ("--batch-size 0", [*synthetic, "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        ("--max-new-tokens 0", [*synthetic, "--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
        ("--limit 0", [*synthetic, "--limit", "0"], "--limit must be >= 1, got 0"),
        ("--samples 0", [*synthetic, "--samples", "0"], "--samples must be >= 1, got 0"),
        ("--temperature -1", [*synthetic, "--temperature", "-1"], "--temperature must be >= 0 (0 = greedy), got -1"),
        ("--threads -1", [*synthetic, "--threads", "-1"], "--threads must be >= 0, got -1"),
        ("one field only", ["--model", model, "--data", str(wrong), "--question-field", "prompt"],
         "--question-field and --answer-field go together"),
        ("no task, no fields", ["--model", model, "--data", str(wrong)], "give --task NAME"),
        ("file task without data", ["--model", model, "--task", "math500"], "--data is required for task 'math500'"),
    ]


def test_every_bad_input_is_one_line_and_exit_2(tiny_random_model, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    # Nothing goes to the network, whatever the machine has: the variable for anything imported from now on, the
    # constant for huggingface_hub, which read the variable when it was imported.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for case, argv, expected in _bad_inputs(tiny_random_model, tmp_path):
        code = main(["eval", *argv, "--out", str(tmp_path / "out")])
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (case, captured.err)
        assert lines[0].startswith("softgate eval: error: ") and expected in lines[0], (case, lines[0])
        assert not (tmp_path / "out").exists(), case  # nothing written


def test_bad_input_with_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="--batch-size must be >= 1"):
        main(["--debug", "eval", "--model", "embedded:tiny", "--task", "synthetic", "--batch-size", "0",
              "--out", str(tmp_path)])


def test_progress_ticks_per_batch_with_tokens_per_s(tiny_random_model, monkeypatch):
    import io
    import sys

    from softgate.evaluation import evaluate_policy
    from softgate.modeling import load_model_and_tokenizer
    from softgate.tasks import get_task

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    model, tokenizer = load_model_and_tokenizer(tiny_random_model)
    task = get_task("synthetic")
    examples = task.load("test", n=6)
    for progress in (True, False):
        err = Terminal()
        monkeypatch.setattr(sys, "stderr", err)
        result = evaluate_policy(model, tokenizer, task, examples, batch_size=2, max_new_tokens=3,
                                 progress=progress)
        ticks = [line for line in err.getvalue().split("\r") if "tok/s" in line]
        assert len({t.split("|")[2].split("[")[0] for t in ticks}) == (3 if progress else 0)  # 2/6, 4/6, 6/6
    assert result.summary["generated_tokens"] == sum(r["length"] for r in result.records)
