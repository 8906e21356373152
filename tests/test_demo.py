"""`softgate demo` (what `make demo` runs): a short run prints the summary, writes plots, never overwrites; it takes
`--set` and `--threads` like `softgate train`."""

import pytest

from softgate.cli import main


@pytest.mark.slow
def test_demo_short_run_and_no_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "1", "--threads", "1", "--set", "eval.size=16"]) == 0
    assert "size: 16" in (out / "config.yaml").read_text() and "threads: 1" in (out / "config.yaml").read_text()
    printed = capsys.readouterr().out
    assert "held-out accuracy" in printed and "EUR" in printed and "plots:" in printed
    assert (out / "plots" / "curves.png").is_file() and (out / "plots" / "eval.png").is_file()
    first = (out / "metrics.jsonl").read_text()
    assert main(["demo", "--out", str(out), "--steps", "1", "--set", "eval.size=16"]) == 0  # a second demo goes next to the first
    assert (out / "metrics.jsonl").read_text() == first
    assert (tmp_path / "demo-1" / "summary.json").is_file()
