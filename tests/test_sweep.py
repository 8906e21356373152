"""softgate.sweep: sweep-file schema, cell expansion, dry run, and running with a fake trainer script.

The fake trainer is a few lines of Python that accept the real trainer's command line and write a run
directory, so these tests do not depend on how fast the real trainer is.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from softgate import sweep as sw
from softgate.rundir import RunDir, RunInfo
from softgate.sweep import runner

REPO = Path(__file__).resolve().parents[1]

FAKE_TRAINER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    argv = sys.argv[1:]
    assert argv[0] == "train", argv
    sets = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--set")
    out = Path(argv[argv.index("--output-dir") + 1])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "calls.jsonl", "a") as fh:
        fh.write(json.dumps(argv) + "\\n")
    if "--resume" not in argv and (out / "metrics.jsonl").exists():
        sys.exit("refusing to start over an existing run (like the real trainer)")
    print("fake trainer stdout", sets.get("seed"))
    print("fake trainer stderr", file=sys.stderr)
    gate = {"name": sets.get("gate.name", "sigmoid"), "params": {}}
    info = {"schema": 2, "status": "running", "gate": gate, "seed": int(sets.get("seed", 0)), "steps": 2}
    (out / "run.json").write_text(json.dumps(info))
    if sets.get("seed") == "13":
        (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/total": 0.0}) + "\\n")
        info["status"] = "failed"
        (out / "run.json").write_text(json.dumps(info))
        sys.exit(3)
    with open(out / "metrics.jsonl", "w") as fh:
        for step in range(1, int(sets.get("steps", 2)) + 1):
            fh.write(json.dumps({"step": step, "reward/total": 0.1 * step}) + "\\n")
    info["status"] = "finished"
    (out / "run.json").write_text(json.dumps(info))
    """
)

SWEEP = textwrap.dedent(
    """
    base: base.yaml
    overrides: {steps: 3}
    grid:
      - gate:
          - {name: grpo, set: {gate.name: clip, gate.eps_low: 0.2, gate.eps_high: 0.2,
                               gate.tau_pos: null, gate.tau_neg: null}}
          - {name: sigmoid-10-12, set: {gate.name: sigmoid, gate.tau_pos: 10, gate.tau_neg: 12}}
      - seed: [0, 1]
    """
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def sweep_file(tmp_path: Path) -> Path:
    write(tmp_path / "base.yaml", "steps: 3\neval: {every: 0}\n")
    return write(tmp_path / "tiny.yaml", SWEEP)


@pytest.fixture
def fake_trainer(tmp_path: Path) -> list[str]:
    script = write(tmp_path / "fake_trainer.py", FAKE_TRAINER)
    return [sys.executable, str(script)]


def calls(run_dir: Path) -> list[list[str]]:
    f = run_dir / "calls.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []


# ----------------------------------------------------------------------------------------------------------------
# Schema and expansion


def test_expands_product_of_named_and_simple_axes(sweep_file: Path, tmp_path: Path):
    spec = sw.load_sweep(sweep_file)
    assert spec.name == "tiny"
    assert spec.base == (tmp_path / "base.yaml").resolve()
    cells = spec.cells(tmp_path / "out")
    assert [c.name for c in cells] == ["grpo/seed0", "grpo/seed1", "sigmoid-10-12/seed0", "sigmoid-10-12/seed1"]
    assert [c.variant for c in cells] == ["grpo", "grpo", "sigmoid-10-12", "sigmoid-10-12"]
    assert [c.seed for c in cells] == [0, 1, 0, 1]
    assert cells[2].run_dir == tmp_path / "out" / "sigmoid-10-12" / "seed0"
    assert cells[2].overrides == {"steps": 3, "gate.name": "sigmoid", "gate.tau_pos": 10, "gate.tau_neg": 12,
                                  "seed": 0}
    cmd = sw.train_command(spec.base, cells[0], resume=False, trainer=["T"], threads_per_run=1)
    assert cmd == ["T", "train", str(spec.base), "--set", "steps=3", "--set", "gate.name=clip",
                   "--set", "gate.eps_low=0.2", "--set", "gate.eps_high=0.2", "--set", "gate.tau_pos=null",
                   "--set", "gate.tau_neg=null", "--set", "seed=0", "--set", "model.threads=1",
                   "--set", "log.progress=false", "--output-dir", str(cells[0].run_dir)]
    assert sw.train_command(spec.base, cells[0], resume=True, trainer=["T"])[-1] == "--resume"


def test_format_value_round_trips_through_yaml():
    import yaml

    for value in [0.2, 1.05, 10, 1e-6, 3e20, -2.5e-10, float("inf"), True, False, None, "sigmoid", "10", "true",
                  "a b", [1, 2.5, 1e-6]]:
        assert yaml.safe_load(sw.format_value(value)) == value


def test_grid_values_override_sweep_overrides_and_simple_axis_names(tmp_path: Path):
    write(tmp_path / "b.yaml", "{}\n")
    f = write(tmp_path / "s.yaml", "base: b.yaml\noverrides: {gate.tau_pos: 1}\n"
                                   "grid:\n  - gate.tau_pos: [5, 10.5]\n  - optim.lr: [0.000001]\n")
    cells = sw.load_sweep(f).cells(tmp_path)
    assert [c.name for c in cells] == ["tau_pos5/lr1e-06", "tau_pos10.5/lr1e-06"]
    assert cells[1].overrides == {"gate.tau_pos": 10.5, "optim.lr": 1e-6}
    assert cells[0].seed is None and cells[0].variant == "tau_pos5/lr1e-06"


def test_no_grid_is_one_cell(tmp_path: Path):
    write(tmp_path / "b.yaml", "{}\n")
    cells = sw.load_sweep(write(tmp_path / "s.yaml", "base: b.yaml\n")).cells(tmp_path / "o")
    assert [(c.name, c.run_dir) for c in cells] == [("base", tmp_path / "o" / "base")]


@pytest.mark.parametrize(
    "body, message",
    [
        ("grid: []\n", "base: required"),
        ("base: missing.yaml\n", "base: config file not found"),
        ("base: b.yaml\nbogus: 1\n", "unknown key(s) ['bogus']"),
        ("base: b.yaml\noverrides: [1, 2]\n", "overrides: expected a mapping"),
        ("base: b.yaml\noverrides: {output_dir: x}\n", "output_dir: set by the sweep itself"),
        ("base: b.yaml\noverrides: {'gate tau': 1}\n", "is not a config key"),
        ("base: b.yaml\ngrid: {seed: [0]}\n", "grid: expected a list of axes"),
        ("base: b.yaml\ngrid:\n  - {seed: [0], gate.name: [erf]}\n", "exactly one key"),
        ("base: b.yaml\ngrid:\n  - seed: []\n", "grid[0].seed: expected a non-empty list"),
        ("base: b.yaml\ngrid:\n  - seed: [0, 0]\n", "duplicate cell names ['seed0']"),
        ("base: b.yaml\ngrid:\n  - seed: [0, {name: a, set: {}}]\n", "mixes plain values"),
        ("base: b.yaml\ngrid:\n  - gate: [{name: a, sets: {}}]\n", "grid[0].gate[0]: a variant has keys"),
        ("base: b.yaml\ngrid:\n  - gate: [{name: ../x, set: {}}]\n", "grid[0].gate[0].name"),
        ("base: b.yaml\ngrid:\n  - gate: [{name: a, set: {gate.name: [[1]]}}]\n", "value must be a scalar"),
        ("base: b.yaml\ngrid:\n  - gate: [{name: a, set: {seed: 1}}]\n  - seed: [0]\n",
         "grid[0] (gate) and grid[1] (seed) both set ['seed']"),
        ("base: b.yaml\nworkers: 0\n", "workers: expected a positive integer"),
        ("base: b.yaml\nthreads_per_run: two\n", "threads_per_run: expected a positive integer"),
        ("- 1\n", "expected a mapping"),
        ("base: [\n", "not valid YAML"),
    ],
)
def test_schema_errors_name_file_and_key(tmp_path: Path, body: str, message: str):
    write(tmp_path / "b.yaml", "{}\n")
    f = write(tmp_path / "bad.yaml", body)
    with pytest.raises(sw.SweepFileError) as err:
        sw.load_sweep(f)
    assert str(f) in str(err.value)
    assert message in str(err.value)


def test_resolve_workers_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write(tmp_path / "b.yaml", "{}\n")
    spec = sw.load_sweep(write(tmp_path / "s.yaml", "base: b.yaml\n"))
    monkeypatch.setattr(runner, "available_cpus", lambda: 8)
    assert sw.resolve_workers(spec, None, None) == (8, 1)
    assert sw.resolve_workers(spec, None, 3) == (2, 3)
    assert sw.resolve_workers(spec, 5, None) == (5, 1)
    spec.workers, spec.threads_per_run = 2, 4
    assert sw.resolve_workers(spec, None, None) == (2, 4)
    monkeypatch.setattr(runner, "available_cpus", lambda: 1)
    assert sw.default_workers(4) == 1
    with pytest.raises(ValueError, match="--workers"):
        sw.resolve_workers(spec, 0, None)
    env = sw.cell_env(3, {"PATH": "/bin"})
    assert env["OMP_NUM_THREADS"] == "3" and env["MKL_NUM_THREADS"] == "3" and env["PATH"] == "/bin"


def test_presets_expand_to_the_documented_grids():
    embedded = sw.load_sweep(REPO / "sweeps" / "embedded.yaml", require_base=False)
    assert embedded.base == (REPO / "configs" / "embedded.yaml").resolve()
    cells = embedded.cells(Path("out"))
    assert len(cells) == 18
    variants = sorted({c.variant for c in cells})
    assert variants == sorted(["grpo", "sigmoid-10-12", "erf-10-12", "arctan-10-12", "softsign-10-12",
                               "sigmoid-1-1.05"])
    assert sorted({c.seed for c in cells}) == [0, 1, 2]
    grpo = next(c for c in cells if c.variant == "grpo")
    assert grpo.overrides["gate.name"] == "clip"
    assert grpo.overrides["gate.eps_low"] == grpo.overrides["gate.eps_high"] == 0.2
    sapo = next(c for c in cells if c.variant == "sigmoid-1-1.05")
    assert (sapo.overrides["gate.tau_pos"], sapo.overrides["gate.tau_neg"]) == (1.0, 1.05)

    paper = sw.load_sweep(REPO / "sweeps" / "paper.yaml", require_base=False)
    assert paper.base == (REPO / "configs" / "paper_qwen2.5_7b.yaml").resolve()
    pcells = paper.cells(Path("out"))
    assert {c.seed for c in pcells} == {0}
    assert [c.variant for c in pcells] == ["grpo", "sigmoid-1-1.05", "sigmoid-5-5", "sigmoid-10-12",
                                           "sigmoid-13-15", "erf-10-12", "arctan-10-12", "softsign-10-12"]


# ----------------------------------------------------------------------------------------------------------------
# Dry run and running


def test_dry_run_lists_cells_and_runs_nothing(sweep_file: Path, tmp_path: Path):
    spec = sw.load_sweep(sweep_file)
    out = tmp_path / "out"
    buf = io.StringIO()
    cells = sw.dry_run(spec, out, workers=2, threads_per_run=1, trainer=["fake"], stream=buf)
    text = buf.getvalue()
    assert len(cells) == 4
    assert "4 cells" in text
    assert "[1/4] grpo/seed0  (new)" in text
    assert "overrides: steps=3 gate.name=clip gate.eps_low=0.2" in text
    assert f"command: fake train {spec.base} --set steps=3" in text
    assert f"--output-dir {out / 'sigmoid-10-12' / 'seed1'}" in text
    assert not out.exists()


def test_run_sweep_runs_cells_then_resume_skips_finished(sweep_file: Path, tmp_path: Path, fake_trainer):
    spec = sw.load_sweep(sweep_file)
    out = tmp_path / "out"
    # A cell killed after a checkpoint: it must be resumed, not restarted.
    killed = out / "sigmoid-10-12" / "seed1"
    RunDir(killed).write_info(RunInfo(status="running", gate={"name": "sigmoid", "params": {}}, seed=1, steps=3))
    write(killed / "checkpoints" / "step_000002" / "state.json", "{}")
    buf = io.StringIO()
    result = sw.run_sweep(spec, out, workers=2, threads_per_run=1, trainer=fake_trainer, stream=buf,
                          progress=False, poll_seconds=0.02)
    assert result.ok
    assert [r.outcome for r in result.results] == ["finished"] * 4
    for cell in spec.cells(out):
        assert json.loads((cell.run_dir / "run.json").read_text())["status"] == "finished"
        log = (cell.run_dir / sw.CELL_LOG).read_text()
        assert "=== softgate sweep" in log and "fake trainer stdout" in log and "fake trainer stderr" in log
        (call,) = calls(cell.run_dir)
        assert call[-1] == "--resume" if cell.run_dir == killed else "--resume" not in call
    manifest = json.loads((out / sw.SWEEP_MANIFEST).read_text())
    assert [c["run_dir"] for c in manifest["cells"]] == ["grpo/seed0", "grpo/seed1", "sigmoid-10-12/seed0",
                                                         "sigmoid-10-12/seed1"]
    assert {c["outcome"] for c in manifest["cells"]} == {"finished"}
    assert "done   grpo/seed0" in buf.getvalue()
    # The report names the runs after the cells of the manifest.
    from softgate import report as rp

    runs = rp.load_runs([out])
    assert [(r.cell, r.variant, r.seed, r.status) for r in runs] == [
        ("grpo/seed0", "grpo", 0, "finished"), ("grpo/seed1", "grpo", 1, "finished"),
        ("sigmoid-10-12/seed0", "sigmoid-10-12", 0, "finished"),
        ("sigmoid-10-12/seed1", "sigmoid-10-12", 1, "finished")]

    # Second invocation: everything finished -> nothing runs again.
    result = sw.run_sweep(spec, out, workers=2, threads_per_run=1, trainer=fake_trainer, stream=io.StringIO(),
                          progress=False, poll_seconds=0.02)
    assert [r.outcome for r in result.results] == ["skipped"] * 4
    assert all(len(calls(c.run_dir)) == 1 for c in spec.cells(out))


def test_failing_cell_does_not_stop_others_and_exit_is_nonzero(tmp_path: Path, fake_trainer,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]):
    pytest.importorskip("softgate.gates")  # the command validates each cell's config with softgate.config
    from softgate import cli

    write(tmp_path / "base.yaml", "steps: 2\n")
    f = write(tmp_path / "s.yaml", "base: base.yaml\ngrid:\n  - seed: [13, 0, 1]\n")
    monkeypatch.setattr(runner, "DEFAULT_TRAINER", tuple(fake_trainer))
    out = tmp_path / "out"
    code = cli.main(["sweep", str(f), "--out", str(out), "--workers", "1"])
    assert code == 1
    err = capsys.readouterr().err
    assert "2 finished, 0 skipped (already finished), 1 failed" in err
    assert f"FAILED seed13 (exit 3); log: {out / 'seed13' / sw.CELL_LOG}" in err
    assert "fake trainer stderr" in err  # the tail of the failed cell's log
    for ok in ("seed0", "seed1"):  # ran after the failure, with one worker
        assert json.loads((out / ok / "run.json").read_text())["status"] == "finished"
    # Rerun: finished cells are skipped; the failed one has logs but no checkpoint, so its files are moved aside
    # (the trainer refuses to start over them) and it starts again from scratch.
    code = cli.main(["sweep", str(f), "--out", str(out), "--workers", "1"])
    assert code == 1
    assert len(calls(out / "seed13")) == 2 and "--resume" not in calls(out / "seed13")[1]
    assert "earlier attempt moved to" in capsys.readouterr().err
    (stale,) = (out / "seed13").glob(".stale-*")
    assert (stale / "metrics.jsonl").is_file() and (stale / "run.json").is_file()
    assert len(calls(out / "seed0")) == 1


def test_cell_state_and_set_aside_read_the_run_directory(tmp_path: Path):
    run = RunDir(tmp_path / "cell")
    assert sw.cell_state(run.path) == "new"
    run.path.mkdir()
    run.run_json.write_text("{not json")  # a damaged run.json is not a finished run
    run.metrics_jsonl.write_text('{"step": 1, "rl_step": 1}\n')
    (run.path / "metrics.orphaned.jsonl").write_text('{"step": 2, "rl_step": 2}\n')
    assert sw.cell_state(run.path) == "restart"
    (run.checkpoints / "step_000001").mkdir(parents=True)
    assert sw.cell_state(run.path) == "restart"  # no state.json: an incomplete checkpoint
    (run.checkpoints / "step_000001" / "state.json").write_text("{}")
    assert sw.cell_state(run.path) == "resume"
    stale = sw.set_aside(run.path)
    assert sorted(p.name for p in stale.iterdir()) == ["metrics.jsonl", "metrics.orphaned.jsonl", "run.json"]
    assert run.checkpoints.is_dir() and sw.set_aside(run.path) is None
    run.write_info(RunInfo(status="finished", gate={"name": "erf", "params": {}}, seed=0, steps=1))
    assert sw.cell_state(run.path) == "finished"


def test_trainer_that_cannot_start_is_a_failed_cell(sweep_file: Path, tmp_path: Path):
    spec = sw.load_sweep(sweep_file)
    result = sw.run_sweep(spec, tmp_path / "out", workers=2, threads_per_run=1,
                          trainer=[str(tmp_path / "no-such-trainer")], stream=io.StringIO(), progress=False)
    assert [r.outcome for r in result.results] == ["failed"] * 4 and not result.ok
    assert "cannot start the trainer" in (tmp_path / "out" / "grpo" / "seed0" / sw.CELL_LOG).read_text()


def test_cli_dry_run_and_config_check(sweep_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    pytest.importorskip("softgate.gates")
    from softgate import cli

    assert cli.main(["sweep", str(sweep_file), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "grpo/seed0" in text and "sigmoid-10-12/seed1" in text and "--set model.threads=1" in text
    # A key the config does not know is caught before anything runs, naming the cell.
    bad = write(tmp_path / "bad.yaml", "base: base.yaml\ngrid:\n  - gate.tau_pozz: [1]\n")
    assert cli.main(["sweep", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "cell tau_pozz1" in err and "tau_pozz" in err
    # Schema errors exit 2 with the file named.
    assert cli.main(["sweep", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: sweep file not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# The real trainer (slow): a two-cell sweep of very short runs, then a report on it.


@pytest.mark.slow
def test_real_trainer_sweep_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    pytest.importorskip("softgate.train")
    from softgate import cli
    from softgate.pretrain import PretrainConfig, build_model
    from softgate.tokenizer import build_tokenizer

    # A randomly initialised model of the embedded architecture, far smaller: this test is about the plumbing.
    model_dir = tmp_path / "model"
    tokenizer = build_tokenizer()
    build_model(tokenizer, PretrainConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
                ).save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    write(tmp_path / "base.yaml", textwrap.dedent(f"""
        steps: 2
        model: {{name_or_path: {model_dir}}}
        rollout: {{prompts_per_step: 2, num_generations: 2, max_new_tokens: 8}}
        algo: {{minibatches: 1, micro_batch_size: 2}}
        eval: {{every: 0, size: 4, batch_size: 4}}
        log: {{save_every: 1}}
        """))
    f = write(tmp_path / "s.yaml", textwrap.dedent("""
        base: base.yaml
        grid:
          - gate:
              - {name: grpo, set: {gate.name: clip, gate.eps_low: 0.2, gate.eps_high: 0.2,
                                   gate.tau_pos: null, gate.tau_neg: null}}
              - {name: erf-10-12, set: {gate.name: erf, gate.tau_pos: 10, gate.tau_neg: 12}}
          - seed: [0]
        """))
    out = tmp_path / "out"
    # erf-10-12/seed0 is killed (SIGKILL) once its first RL step's checkpoint exists.
    spec = sw.load_sweep(f)
    erf = next(c for c in spec.cells(out) if c.variant == "erf-10-12")
    cmd = sw.train_command(spec.base, erf, resume=False, threads_per_run=1)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=sw.cell_env(1))
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if (erf.run_dir / "checkpoints" / "step_000001" / "state.json").is_file():
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert sw.cell_state(erf.run_dir) == "resume"
    code = cli.main(["sweep", str(f), "--out", str(out), "--workers", "2"])
    logs = {c: (out / c / sw.CELL_LOG).read_text()[-3000:] for c in ("grpo/seed0", "erf-10-12/seed0")}
    assert code == 0, logs
    assert "--resume" in logs["erf-10-12/seed0"]
    rl_steps = [json.loads(line)["rl_step"] for line in (erf.run_dir / "metrics.jsonl").read_text().splitlines()]
    # num_iterations 2 x 1 minibatch = 2 optimizer steps per RL step: step 1 kept once, then step 2 after resume
    assert rl_steps == [1, 1, 2, 2]
    for cell in logs:
        info = json.loads((out / cell / "run.json").read_text())
        assert info["status"] == "finished" and info["schema"] == 2
    capsys.readouterr()
    assert cli.main(["sweep", str(f), "--out", str(out)]) == 0
    assert "0 finished, 2 skipped" in capsys.readouterr().err
    assert cli.main(["report", str(out), "--out", str(tmp_path / "report"), "--resamples", "200"]) == 0
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "| grpo/seed0 | grpo | 0 | finished | 2/2 |" in md
    assert "Paired differences against GRPO (grpo)" in md
