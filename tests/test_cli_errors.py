"""Every command reports user errors in one line with exit code 2; --debug shows the traceback."""

from __future__ import annotations

import pytest

from softgate.cli import main
from softgate.threads import default_threads


def test_user_error_is_one_line_with_exit_2(capsys, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("softgate train: ") and "\n" not in err and str(bad) in err


def test_debug_shows_the_traceback(tmp_path) -> None:
    from softgate.report import ReportError

    with pytest.raises(ReportError, match="no such file"):
        main(["--debug", "report", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])


def test_threads_rule() -> None:
    assert default_threads(cores=2, load=0.0) == 2
    assert default_threads(cores=2, load=1.1) == 1  # one other busy process on 2 cores
    assert default_threads(cores=2, load=7.0) == 1
    assert default_threads(cores=8, load=2.6) == 5
