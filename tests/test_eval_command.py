"""`softgate eval` end to end on a tiny random model: synthetic task and a GSM8K fixture file."""

import json

import pytest

from softgate.cli import main


@pytest.fixture(scope="module")
def tiny_random_model(tmp_path_factory) -> str:
    from softgate.pretrain import PretrainConfig, build_model
    from softgate.tokenizer import build_tokenizer

    out = tmp_path_factory.mktemp("tiny_random_eval")
    tokenizer = build_tokenizer()
    build_model(tokenizer, PretrainConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
                ).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return str(out)


def test_eval_synthetic_writes_items_and_summary(tiny_random_model, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "--model", tiny_random_model, "--task", "synthetic", "--limit", "6", "--samples", "3",
                 "--max-new-tokens", "8", "--out", str(out)])
    assert code == 0
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(items) == 18 and {i["sample"] for i in items} == {0, 1, 2}
    assert {"prompt", "completion", "extracted", "reference", "correct", "format_reward"} <= items[0].keys()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 6 and summary["samples"] == 18
    assert "pass@3" in summary and "maj@3" in summary
    assert summary["accuracy"] == sum(i["correct"] for i in items) / 18
    assert 0.0 <= summary["accuracy_ci_low"] <= summary["accuracy"] <= summary["accuracy_ci_high"] <= 1.0
    assert "pass@1" in capsys.readouterr().out


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
        records = [{"id": "a", "correct": False, "format_reward": 0.0, "length": 3, "extracted": None,
                    "truncated": False}]
        return EvalResult(summary_of_records(records, 1), records, GraderStats(graded=1, timeouts=1))

    monkeypatch.setattr(softgate.evaluation, "evaluate_policy", fake_evaluate)
    code = main(["eval", "--model", tiny_random_model, "--task", "synthetic", "--limit", "1", "--out",
                 str(tmp_path), "--grader-timeout", "2.5", "--grader-workers", "2"])
    assert code == 0 and seen == {"timeout": 2.5, "workers": 2}
    assert "grader: 1 timeouts, 0 errors, 0 too_long (scored 0)" in capsys.readouterr().out
    for bad in (["--grader-timeout", "0"], ["--grader-workers", "0"]):
        assert main(["eval", "--model", tiny_random_model, "--task", "synthetic", "--out", str(tmp_path), *bad]) == 2
    assert "must be" in capsys.readouterr().err
