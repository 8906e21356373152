"""The README stays true to the code: its Python snippets run, and every command it shows exists."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_snippets_run(tmp_path):
    code = "\n".join(re.findall(r"```python\n(.*?)```", README, flags=re.S))
    assert code.strip()
    script = tmp_path / "snippets.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PASS" in proc.stdout  # gates.check(gate) printed its table


def test_shell_commands_exist():
    from softgate.cli import build_parser

    parser = build_parser()
    subcommands = set(parser._subparsers._group_actions[0].choices)  # noqa: SLF001 - argparse has no public API
    shown = set(re.findall(r"^softgate (\w+)", README, flags=re.M)) | set(re.findall(r"`softgate (\w+)", README))
    assert shown, "the README shows no softgate command"
    assert shown <= subcommands, f"README shows commands that do not exist: {sorted(shown - subcommands)}"


def test_linked_docs_exist():
    for link in re.findall(r"\]\(((?:docs|examples)/[^)#]+)", README):
        assert (ROOT / link).is_file(), f"README links to missing {link}"


def test_ci_runs_the_readme_test_command():
    assert "make test" in README.splitlines()[4]
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == "make test"
