"""The README and docs stay true to the code: the README's Python snippets run, every command it shows exists,
and every command in a ```bash block of the README and docs/ runs (with tiny sizes, or listed as not run, with why)."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

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


# --------------------------------------------------------------------------------------------------------------
# Every command in the ```bash blocks of the README and docs/ runs (so that examples cannot go false).

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Commands a test cannot run, with the reason. The test asserts the docs show exactly these besides the ones it
# runs: a new command is run, or added here with its reason.
NOT_RUN = {
    "make demo": "the full demo (100 RL steps, minutes); `softgate demo` itself is run below with tiny sizes",
    "make test": "the whole test suite, which holds this test",
    "softgate train configs/smollm2_synthetic.yaml": "a 135M model, minutes per step on CPU; "
                                                     "tests/test_train.py::test_one_rl_step_on_smollm2_from_gguf "
                                                     "runs one step of it",
    **dict.fromkeys([
        "softgate eval --model smollm2:135m-instruct --task gsm8k --data gsm8k_test.jsonl --limit 100 --out eval_gsm8k",
        "softgate eval --model MODEL --data problems.jsonl --question-field problem --answer-field final --out eval_any",
    ], "placeholders for the reader's own data files (tests/test_eval_command.py runs both kinds on fixtures)"),
    "softgate train configs/paper_qwen2.5_7b.yaml --engine trl --processes 8 --accelerate-config "
    "examples/deepspeed_zero3.yaml": "the paper's 7B run on 8 GPUs with DeepSpeed (neither is here)",
    **dict.fromkeys([
        "python3 -m venv .venv-verl",
        ".venv-verl/bin/python -m pip install --upgrade pip",
        ".venv-verl/bin/python -m pip install torch==2.13.0",
        ".venv-verl/bin/python -m pip install --no-deps verl==0.9.1",
        ".venv-verl/bin/python -m pip install tensordict>=0.8,<=0.10,!=0.9.0 ray omegaconf hydra-core codetiming "
        "orjson transformers<5.11 numpy datasets pillow pytest>=8 pytest-timeout>=2.3",
        ".venv-verl/bin/python -m pip install --no-deps -e .",
        ".venv-verl/bin/python -m pytest -q tests/test_integration_verl.py",
    ], "builds the second virtual environment for the verl plug-in (network, minutes); `make test` builds it and "
       "runs those tests"),
}

# How the commands that are run are made small (each rule is applied where it matches):
# - `softgate train` and `softgate demo` get TINY overrides first (the command's own --set still win): 2 RL steps of
#   2 prompts x 2 completions, 4 held-out problems, no periodic checkpoint; a command's own `--set steps=N` becomes
#   steps=N/10 (at least 2);
# - `softgate eval` gets `--limit 4 --max-new-tokens 16`, and a checkpoint path is the newest the run wrote (a
#   2-step run writes step_000002, not the step a 100-step run ends at);
# - `softgate sweep` runs with `--dry-run` (a sweep is 18 runs of 100 steps); `softgate report` of a sweep
#   directory then reads the runs the earlier commands made (`runs/`).
TINY = ["steps=2", "rollout.prompts_per_step=2", "rollout.num_generations=2", "rollout.max_new_tokens=8",
        "algo.minibatches=1", "algo.micro_batch_size=4", "eval.size=4", "eval.batch_size=4", "log.save_every=0",
        "log.progress=false", "model.threads=1"]


def doc_commands() -> list[tuple[str, list[str]]]:
    """(file, argv) of every command line in the ```bash blocks, continuation lines joined, comments dropped."""
    found = []
    for path in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                argv = shlex.split(line, comments=True)
                if argv:
                    found.append((path.name, argv))
    return found


def make_small(argv: list[str], sandbox: Path) -> list[str]:
    if argv[:2] in (["softgate", "train"], ["softgate", "demo"]):
        head = 3 if len(argv) > 2 and not argv[2].startswith("-") else 2  # after a CONFIG argument
        own = [re.sub(r"^steps=(\d+)$", lambda m: f"steps={max(2, int(m.group(1)) // 10)}", a) for a in argv[head:]]
        return [*argv[:head], *sum((["--set", s] for s in TINY), []), *own]
    if argv[:2] == ["softgate", "eval"]:
        out = []
        for arg in argv:
            match = re.match(r"(.*)/checkpoints/step_\d+$", arg)
            if match:
                arg = str(sorted((sandbox / match.group(1) / "checkpoints").iterdir())[-1].relative_to(sandbox))
            out.append(arg)
        return [*out, "--limit", "4", "--max-new-tokens", "16"]
    if argv[:2] == ["softgate", "sweep"]:
        return [*argv, "--dry-run"]
    if argv[:2] == ["softgate", "report"]:
        return ["softgate", "report", *["runs" if "sweep" in a and not a.startswith("-") and i < argv.index("--out")
                                        else a for i, a in enumerate(argv[2:], 2)]]
    return argv


@pytest.mark.slow
def test_every_documented_command_runs(tmp_path, monkeypatch):
    from softgate.cli import main

    for name in ("configs", "sweeps", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    commands = doc_commands()
    skipped = {" ".join(argv) for _, argv in commands if " ".join(argv) in NOT_RUN}
    assert skipped == set(NOT_RUN), f"NOT_RUN lists commands the docs no longer show: {set(NOT_RUN) - skipped}"
    ran = []
    for source, argv in commands:
        if " ".join(argv) in NOT_RUN:
            continue
        assert argv[0] == "softgate", f"{source}: `{' '.join(argv)}` is neither run nor in NOT_RUN with a reason"
        small = make_small(argv, tmp_path)
        assert main(small[1:]) == 0, f"{source}: `{' '.join(argv)}` (run as `{' '.join(small)}`) failed"
        ran.append(argv[1])
    assert {"gates", "train", "eval", "sweep", "report"} <= set(ran)
