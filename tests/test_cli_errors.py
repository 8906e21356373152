"""Every command reports user errors in one line with exit code 2; --debug shows the traceback."""

from __future__ import annotations

import subprocess
import sys

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


def test_set_errors_are_attributed_to_set_not_the_file(capsys, tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("seed: 1\nalgo:\n  minibatches: 2\ngate:\n  name: erf\n")
    assert main(["train", str(config), "--set", "algo.minibatches=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("softgate train: error: --set algo.minibatches=3: algo.minibatches: ") and str(config) not in err
    assert main(["train", str(config), "--set", "gate.tau_pos=-1"]) == 2  # a key inside a section of the file
    err = capsys.readouterr().err
    assert "--set gate.tau_pos=-1: gate: " in err and str(config) not in err
    assert main(["train", str(config), "--set", "gate={name: nope}"]) == 2  # a whole section from --set
    assert "--set gate={name: nope}: gate.name: unknown gate 'nope'" in capsys.readouterr().err
    config.write_text("seed: 1\n\n\ngate:\n  name: nope\n")  # from the file: file and line
    assert main(["train", str(config)]) == 2
    assert f"{config}:5: gate.name: unknown gate 'nope'" in capsys.readouterr().err


def test_output_dir_is_an_alias_of_out() -> None:
    from softgate.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["train", "--output-dir", "d"]).out == parser.parse_args(["train", "--out", "d"]).out == "d"


def test_demo_takes_set_and_threads(capsys, tmp_path) -> None:
    assert main(["demo", "--out", str(tmp_path / "d"), "--set", "rollout.top_p=2", "--threads", "1"]) == 2
    assert "--set rollout.top_p=2: rollout.top_p: must be in (0, 1]" in capsys.readouterr().err
    assert main(["demo", "--gate", "sigmod"]) == 2
    assert "unknown gate 'sigmod'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_help_of_every_command_imports_no_heavy_library() -> None:
    """`--help` stays fast (about 0.2 s) because no command imports torch, transformers, numpy or matplotlib
    before it runs."""
    code = """
import sys
from softgate.cli import COMMANDS, main
for argv in [[], *([c] for c in COMMANDS), ["gates", "list"], ["gates", "check"], ["gates", "plot"]]:
    try:
        main([*argv, "--help"])
    except SystemExit:
        pass
print(sorted(m for m in ("torch", "transformers", "numpy", "matplotlib") if m in sys.modules), file=sys.stderr)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr.strip().splitlines()[-1] == "[]", proc.stderr[-2000:]


def test_pretrain_help_describes_every_option() -> None:
    from softgate.cli import build_parser

    parser = build_parser()
    pretrain = parser._subparsers._group_actions[0].choices["pretrain"]  # noqa: SLF001 - argparse has no public API
    assert all(action.help for action in pretrain._actions), [a.dest for a in pretrain._actions if not a.help]


def test_a_binary_data_file_is_named(capsys, tmp_path) -> None:
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b"\x80\x81junk")
    assert main(["train", "--set", "task.name=gsm8k", "--set", f"task.train_file={junk}", "--set",
                 "task.test_file=tests/fixtures/gsm8k.jsonl", "--out", str(tmp_path / "run")]) == 2
    assert f"{junk}: line 1: not UTF-8 text" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
