"""The ``trl`` engine: key mapping and refusals, batch geometry, the launch command, loss/gradient parity with the
native engine on the same rollout, a 2-process run (metrics over all ranks, complete run directory, resume), the
engines sweep and the report across engines."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from softgate.config import Config, ConfigError, load_config  # noqa: E402
from softgate.engines.launch import launch_command  # noqa: E402
from softgate.engines.trl_args import KEY_MAP, NATIVE_ONLY_SPEED, check_trl_engine, geometry  # noqa: E402
from softgate.rundir import RunDir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Keys of metrics.jsonl the trl engine cannot provide: TRL does not time generation, log-probs and updates apart.
ABSENT = {"time/generate", "time/logprobs", "time/train"}


def _cfg(*overrides: str) -> Config:
    return load_config(None, ["engine=trl", *overrides])


# --------------------------------------------------------------------------------------------------------------
# Mapping, refusals, geometry, launch command


def _leaf_keys(obj, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out += _leaf_keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]
    return out


def test_every_config_key_is_mapped_or_refused() -> None:
    """No silent drops: each key of the schema is in the mapping table (which also names the refusals)."""
    named = {k.strip() for entry in KEY_MAP for k in entry.split(",")}
    for key in _leaf_keys(Config()):
        section = key.split(".")[0] + ".*"
        assert key in named or section in named or key in NATIVE_ONLY_SPEED, key
    # docs/integrations.md shows the same table.
    page = (ROOT / "docs" / "integrations.md").read_text()
    for entry in KEY_MAP:
        assert f"`{entry.split(',')[0]}`" in page, entry


@pytest.mark.parametrize(("override", "key"), [
    ("algo.advantage=rloo", "algo.advantage"),
    ("algo.drop_zero_variance=true", "algo.drop_zero_variance"),
    ("algo.staleness=2", "algo.staleness"),
    ("algo.eur_target=0.8", "algo.eur_target"),
    ("loss.entropy_coef=0.01", "loss.entropy_coef"),
    ("loss.kl_estimator=k1", "loss.kl_estimator"),
    ("model.device=cuda:1", "model.device"),
])
def test_refused_keys_are_named(override: str, key: str) -> None:
    extra = ["loss.kl_coef=0.1"] if key == "loss.kl_estimator" else []
    with pytest.raises(ConfigError, match=re.escape(key)):
        check_trl_engine(_cfg(override, *extra))
    assert check_trl_engine(_cfg()) is not None  # the defaults run on TRL


def test_token_mean_needs_one_minibatch() -> None:
    with pytest.raises(ConfigError, match="token-mean"):
        check_trl_engine(_cfg("loss.agg=token-mean", "algo.minibatches=2"))
    check_trl_engine(_cfg("loss.agg=token-mean", "algo.minibatches=1"))


def test_cli_refusal_is_one_line(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "softgate.cli", "train", "--engine", "trl", "--set",
                          "algo.eur_target=0.8", "--set", "algo.advantage=rloo", "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 2
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("softgate train: error: engine=trl cannot honour")
    assert "algo.eur_target" in line and "algo.advantage=rloo" in line
    assert not (tmp_path / "r").exists()


def test_geometry_by_hand() -> None:
    # Defaults: 16 prompts x 8 = 128 rows, 2 minibatches of 64 rows, micro-batches of 32, 2 passes.
    g = geometry(Config(), processes=1)
    assert (g.rows, g.updates_per_step, g.per_device, g.grad_accum, g.steps_per_generation) == (128, 4, 32, 2, 4)
    assert g.max_steps == 100 * 4
    # 2 processes: 32 rows each per optimizer step -> one micro-batch of 32.
    g2 = geometry(Config(), processes=2)
    assert (g2.per_device, g2.grad_accum, g2.steps_per_generation) == (32, 1, 2)
    # 12 prompts x 8 / 2 minibatches = 48 rows per step, 24 per process: micro-batches of 16 do not divide 24,
    # so the largest divisor below 16 is used, 12 (two micro-batches).
    g3 = geometry(_cfg("rollout.prompts_per_step=12", "algo.micro_batch_size=16"), processes=2)
    assert (g3.per_device, g3.grad_accum, g3.steps_per_generation) == (12, 2, 4)
    with pytest.raises(ConfigError, match="--processes 3"):
        geometry(Config(), processes=3)


def test_trl_old_logprobs_rule_holds_for_the_geometry() -> None:
    """TRL keeps old log-probs (the gate acts) exactly when the native engine makes off-policy updates."""
    from softgate.integrations.trl_config import gate_is_inert

    for iters, mbs in ((1, 1), (2, 1), (1, 2), (2, 2)):
        g = geometry(_cfg(f"algo.num_iterations={iters}", f"algo.minibatches={mbs}"), processes=1)
        args = type("A", (), dict(steps_per_generation=g.steps_per_generation, num_iterations=iters,
                                  gradient_accumulation_steps=g.grad_accum, use_vllm=False,
                                  vllm_importance_sampling_correction=False))
        assert gate_is_inert(args) == (iters == 1 and mbs == 1)


def test_launch_command() -> None:
    cpu = launch_command(Path("c.yaml"), processes=2, cpu=True, resume=True, port=29999)
    assert cpu[1:3] == ["-m", "accelerate.commands.launch"]
    assert cpu[cpu.index("--num_processes") + 1] == "2" and "--multi_gpu" in cpu
    assert cpu[-4:] == ["-m", "softgate.engines.launch", "c.yaml", "--resume"]
    ds = launch_command(Path("c.yaml"), processes=8, cpu=False, resume=False,
                        accelerate_config="examples/deepspeed_zero3.yaml", port=29999)
    assert ds[ds.index("--config_file") + 1] == "examples/deepspeed_zero3.yaml" and "--multi_gpu" not in ds
    assert ds[ds.index("--num_processes") + 1] == "8" and ds[-1] == "c.yaml"


def test_processes_need_the_trl_engine() -> None:
    from softgate.engines import run

    with pytest.raises(ValueError, match="--engine trl"):
        run(Config(), processes=2)


# --------------------------------------------------------------------------------------------------------------
# Parity: the first optimizer update of both engines on the same rollout


def test_first_update_loss_and_gradients_equal_native(tiny_random_model: str, tmp_path: Path) -> None:
    """Same config, seed and rollout batch: the native minibatch update (micro-batches of 2, whole-minibatch
    normalizer) and the trl engine's TRL micro-batch losses (3 accumulation steps) give the same loss and parameter
    gradients to 1e-6. Old log-probs are perturbed so that the gate acts (off-policy ratios)."""
    from softgate.engines.trl import build_trainer
    from softgate.integrations.trl import GROUP_KEY
    from softgate.lifecycle import load_policy
    from softgate.rollout import HFSampler
    from softgate.train import make_gate, rollout_logprobs, update_on_minibatch

    cfg = _cfg(f"model.name_or_path={tiny_random_model}", "model.device=cpu", "model.threads=1",
               f"output_dir={tmp_path / 'run'}", "rollout.prompts_per_step=2", "rollout.num_generations=3",
               "rollout.max_new_tokens=6", "algo.minibatches=1", "algo.micro_batch_size=2", "task.train_size=8",
               "eval.size=0", "gate.tau_pos=2", "gate.tau_neg=3")
    torch.manual_seed(cfg.seed)
    model, tokenizer, _ = load_policy(cfg)
    trainer = build_trainer(cfg)
    assert trainer.args.gradient_accumulation_steps == 3 and trainer.args.per_device_train_batch_size == 2
    data = trainer.scorer.data
    prompts = [data.prompts[0], data.prompts[5]]
    assert len(tokenizer(prompts[0])["input_ids"]) != len(tokenizer(prompts[1])["input_ids"])  # left padding
    rollout = HFSampler(model, tokenizer).sample(prompts, 3, temperature=1.0, max_new_tokens=6)
    g = torch.Generator().manual_seed(1)
    old_logp = rollout_logprobs(model, rollout, micro=2, temperature=1.0, shared_prompt=False)
    old_logp = old_logp + 0.4 * torch.randn(old_logp.shape, generator=g)
    adv = torch.tensor([1.1, -0.4, -0.7, 0.9, 0.2, -1.1])

    # native: one minibatch of 6 rows in micro-batches of 2
    model.zero_grad(set_to_none=True)
    stats = update_on_minibatch(model, rollout, torch.arange(6), old_logp=old_logp, ref_logp=None, adv=adv,
                                gate=make_gate(cfg), cfg=cfg)
    native = {n: p.grad.clone() for n, p in model.named_parameters()}

    # trl engine: TRL's inputs of the same rows, 3 micro-batches of 2 in one accumulation window
    policy = trainer.model.train()
    policy.zero_grad(set_to_none=True)
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    P = rollout.prompt_len
    loss = 0.0
    for rows in torch.arange(6).split(2):
        inputs = {"prompt_ids": rollout.input_ids[rows, :P], "prompt_mask": rollout.attention_mask[rows, :P],
                  "completion_ids": rollout.input_ids[rows, P:], "completion_mask": rollout.completion_mask[rows].long(),
                  "advantages": adv[rows], "old_per_token_logps": old_logp[rows], GROUP_KEY: rollout.group_ids[rows]}
        micro = trainer._compute_loss(policy, inputs)
        micro.backward()
        loss += micro.item()
    assert abs(stats["loss"]) > 1e-3 and 0 < stats["eur"] < 1  # the gate acted
    assert loss == pytest.approx(stats["loss"], abs=1e-6)
    for name, p in policy.named_parameters():
        assert native[name].abs().max() > 0, name
        torch.testing.assert_close(p.grad, native[name], atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")
    assert trainer._metrics["train"]["gate/eur"] == [pytest.approx(stats["eur"], abs=1e-6)]  # Eq. 12, same groups


@pytest.mark.parametrize("split", ["groups", "rows"])
def test_optimizer_steps_hold_the_native_minibatches(tiny_random_model: str, tmp_path: Path, split: str) -> None:
    """4 prompts x G=2, 2 minibatches, 2 passes, micro-batches of 2: the rows of each of the RL step's 4 optimizer
    steps (TRL's buffering through ``_prepare_inputs``) are the native engine's minibatches
    (``softgate.train.minibatch_plan``) from the same RNG state, for both ``algo.minibatch_split`` values."""
    from softgate.engines.trl import build_trainer
    from softgate.train import minibatch_plan

    cfg = _cfg(f"model.name_or_path={tiny_random_model}", "model.device=cpu", "model.threads=1",
               f"output_dir={tmp_path / 'run'}", "rollout.prompts_per_step=4", "rollout.num_generations=2",
               "algo.minibatches=2", "algo.micro_batch_size=2", "task.train_size=8", "eval.size=0",
               f"algo.minibatch_split={split}")
    trainer = build_trainer(cfg)
    assert (trainer.args.steps_per_generation, trainer.args.gradient_accumulation_steps) == (4, 2)
    rollout = {"prompt_ids": torch.arange(4).repeat_interleave(2)[:, None], "row": torch.arange(8),
               "num_items_in_batch": torch.tensor(8)}
    trainer._generate_and_score_completions = lambda batch: rollout  # the rollout, without sampling
    trainer.model.train()
    torch.manual_seed(0)
    rows = []
    for trainer._step in range(8):  # 2 passes x 2 optimizer steps x 2 micro-batches
        rows.append(trainer._prepare_inputs(None)["row"])
    steps = [torch.cat(rows[k:k + 2]) for k in range(0, 8, 2)]
    torch.manual_seed(0)
    native = [m for minibatches in minibatch_plan(4, 2, 2, 2, split) for m in minibatches]
    for got, want in zip(steps, native):
        assert torch.equal(got, want), (split, steps, native)


def test_a_failure_after_the_final_evaluation_resumes_without_a_second_one(tiny_random_model: str, tmp_path: Path,
                                                                           monkeypatch) -> None:
    """One process, in this one: the run fails in its plots after the final evaluation; resumed from its final
    checkpoint it finishes without evaluating again (the native engine's rule, through the same ``run_eval``)."""
    import softgate.plots
    import softgate.train
    from softgate.engines.trl import train_trl

    real_evaluate, evaluations = softgate.train.evaluate_policy, []

    def evaluate_policy(*args, **kwargs):
        evaluations.append(1)
        return real_evaluate(*args, **kwargs)

    def plots_fail(path):
        raise OSError("disk full")

    monkeypatch.setattr(softgate.train, "evaluate_policy", evaluate_policy)
    monkeypatch.setattr(softgate.plots, "plot_run", plots_fail)
    out = tmp_path / "run"
    cfg = _cfg(f"model.name_or_path={tiny_random_model}", "model.device=cpu", "model.threads=1",
               f"output_dir={out}", "steps=2", "task.train_size=8", "rollout.prompts_per_step=2",
               "rollout.num_generations=2", "rollout.max_new_tokens=6", "algo.minibatches=1",
               "algo.micro_batch_size=2", "eval.size=4", "eval.every=0", "eval.batch_size=4", "log.save_every=0",
               "log.progress=false")
    with pytest.raises(OSError, match="disk full"):
        train_trl(cfg)
    run = RunDir(out)
    assert (run.read_info().status, run.read_info().last_step) == ("failed", 2)
    assert run.latest_checkpoint().name == "step_000002"
    written = run.read_evals()
    assert [e["rl_step"] for e in written] == [0, 2] and len(evaluations) == 2
    monkeypatch.setattr(softgate.plots, "plot_run", lambda path: [])
    train_trl(cfg, resume=True)
    assert run.read_info().status == "finished"
    assert run.read_evals() == written and len(evaluations) == 2


# --------------------------------------------------------------------------------------------------------------
# Two processes: a short run, then resume


def _train_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "softgate.cli", "train", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.slow
def test_two_processes_run_directory_and_resume(tmp_path: Path) -> None:
    """The embedded tiny model (its rewards vary within a group, so updates move the policy and the gate acts)."""
    out = tmp_path / "run"
    base = ["--engine", "trl", "--processes", "2", "--out", str(out), "--set", "model.name_or_path=embedded:tiny",
            "--set", "model.device=cpu", "--set", "model.threads=1", "--set", "steps=2", "--set", "task.train_size=16",
            "--set", "rollout.prompts_per_step=2", "--set", "rollout.num_generations=2",
            "--set", "rollout.max_new_tokens=6", "--set", "algo.minibatches=1", "--set", "algo.micro_batch_size=2",
            "--set", "eval.size=4", "--set", "eval.every=1", "--set", "eval.batch_size=4",
            "--set", "log.save_every=1", "--set", "log.progress=false"]
    first = _train_cli(*base)
    assert first.returncode == 0, first.stderr[-3000:]
    run = RunDir(out)
    info = run.read_info()
    assert (info.engine, info.status, info.last_step) == ("trl", "finished", 2)
    for name in ("config.yaml", "summary.json", "plots/curves.png", "plots/eval.png"):
        assert (out / name).is_file(), name
    assert [run.checkpoint_step(p) for p in run.list_checkpoints()] == [1, 2]
    assert load_config(run.config_yaml).engine == "trl"
    metrics = run.read_metrics()
    # Only rank 0 writes: one line per optimizer step (2 RL steps x 2 passes), not one per process.
    assert [(m["step"], m["rl_step"], m["policy/on_policy"]) for m in metrics] == [
        (1, 1, True), (2, 1, False), (3, 2, True), (4, 2, False)]
    # Rollout figures are over both ranks' completions: they equal TRL's gathered figures of the same step.
    history = json.loads((out / "checkpoints" / "step_000002" / "trainer_state.json").read_text())["log_history"]
    for m, h in zip(metrics, [h for h in history if "loss" in h], strict=True):
        if "reward" in h:  # TRL logs the rollout figures on the first update of each rollout
            assert m["reward/total"] == pytest.approx(h["reward"], abs=1e-6)
            assert m["response/length_mean"] == pytest.approx(h["completions/mean_length"], abs=1e-6)
            assert m["response/truncated_frac"] == pytest.approx(h["completions/clipped_ratio"], abs=1e-6)
        assert m["gate/eur"] == pytest.approx(h["gate/eur"]) and m["policy/loss"] == pytest.approx(h["loss"])
    assert metrics[0]["gate/eur"] == pytest.approx(1.0) and metrics[1]["gate/eur"] < 1.0  # off-policy: the gate acts
    # The native engine's keys, minus the ones TRL cannot provide (and kl_ref: no KL penalty here).
    logged = {k for m in metrics for k in m}
    native_keys = set(re.findall(r"`([a-z_]+(?:/[a-z_0-9]+)?)`", _design_metric_keys()))
    assert logged <= native_keys and native_keys - logged == ABSENT | {"policy/kl_ref"}
    assert [e["rl_step"] for e in run.read_evals()] == [0, 1, 2]

    # Resume for one more step: from checkpoint step_000002, with the same number of processes.
    again = _train_cli("--resume", "--out", str(out), "--set", "steps=3", "--processes", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    info = run.read_info()
    assert (info.status, info.last_step, info.steps) == ("finished", 3, 3)
    assert [m["step"] for m in run.read_metrics()] == [1, 2, 3, 4, 5, 6]
    assert run.latest_checkpoint().name == "step_000003"
    assert run.read_summary()["steps"] == 3


def _design_metric_keys() -> str:
    page = (ROOT / "docs" / "design.md").read_text()
    return page[page.index("Per-step keys in metrics.jsonl"):page.index("## Config keys")]


# --------------------------------------------------------------------------------------------------------------
# The engines sweep and the report across engines


def test_engines_sweep_dry_run(tmp_path: Path) -> None:
    from softgate.sweep import load_sweep

    sweep = load_sweep(ROOT / "sweeps" / "engines.yaml")
    cells = sweep.cells(tmp_path)
    assert len(cells) == 12
    assert {c.overrides["engine"] for c in cells} == {"native", "trl"} and {c.seed for c in cells} == {0, 1, 2}
    assert len({c.variant for c in cells}) == 4
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "softgate.cli", "sweep", str(ROOT / "sweeps" / "engines.yaml"),
                          "--dry-run", "--out", str(tmp_path / "sweep")], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("overrides: engine=trl") == 6 and out.stdout.count("overrides: engine=native") == 6


def _fake_run(path: Path, *, engine: str, gate: str, params: dict[str, float], seed: int, acc: float) -> None:
    from softgate.gates import GateSpec
    from softgate.rundir import RunInfo

    run = RunDir(path)
    run.write_info(RunInfo(status="finished", gate=GateSpec.of(gate, **params).to_dict(), seed=seed, steps=4,
                           last_step=4, engine=engine))
    with run.metrics_writer() as log:
        for step in range(1, 5):
            log.write({"step": step, "rl_step": step, "reward/total": 1.0, "reward/format": 1.0, "gate/eur": 0.9,
                       "policy/entropy": 1.0, "policy/on_policy": False})
    run.write_eval({"step": 4, "rl_step": 4, "eval/task": "synthetic", "eval/accuracy": acc, "eval/n": 100})


def test_report_puts_engines_side_by_side(tmp_path: Path) -> None:
    """Runs of the same gate on two engines are two variants (gate label @ engine) in one table; runs of one engine
    keep the plain gate label."""
    from softgate import report as rp

    sig = {"tau_pos": 10.0, "tau_neg": 12.0}
    for engine, acc in (("native", 0.5), ("trl", 0.7)):
        for seed in (0, 1):
            _fake_run(tmp_path / "runs" / engine / f"seed{seed}", engine=engine, gate="sigmoid", params=sig,
                      seed=seed, acc=acc + 0.1 * seed)
    report = rp.build_report([tmp_path / "runs"], tmp_path / "report")
    assert [v.name for v in report.variants] == ["sigmoid-10-12@native", "sigmoid-10-12@trl"]
    assert [len(v.stat_runs) for v in report.variants] == [2, 2]
    (held_out,) = [t for t in report.tables if any(r[0] == "sigmoid-10-12@trl" for r in t.rows)
                   and any("synthetic" in c.lower() for c in t.columns)][:1]
    names = [r[0] for r in held_out.rows]
    assert "sigmoid-10-12@native" in names and "sigmoid-10-12@trl" in names
    single = rp.load_runs([tmp_path / "runs" / "trl"])
    assert {r.variant for r in single} == {"sigmoid-10-12"}
