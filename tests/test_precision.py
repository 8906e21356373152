"""The trainer on real hardware, checked on CPU: devices, bf16 autocast over float32 master weights, gradient
checkpointing with the shared prompt pass, dropout off, r = 1 on every on-policy update."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from softgate.config import load_config
from softgate.forward import completion_logprobs
from softgate.rundir import RunDir
from softgate.train import load_policy, train

from test_train import small_config


def _changed_fraction(model_dir: str, run) -> float:
    before = load_file(f"{model_dir}/model.safetensors")
    after = load_file(str(RunDir(run).latest_checkpoint() / "model.safetensors"))
    # In the checkpoint's dtype: a bf16 checkpoint is compared with the start rounded to bf16.
    changed = sum(int((after[k] != before[k].to(after[k].dtype)).sum()) for k in before)
    return changed / sum(v.numel() for v in before.values())


def test_bf16_autocast_with_master_weights_moves_every_parameter_at_lr_1e6(tmp_path) -> None:
    # One RL step of the shipped warm start (it earns rewards, so advantages are not all 0) at the paper's lr.
    # With bf16 parameters most updates round away (the old behaviour of model.dtype=bfloat16); with float32
    # master weights and bf16 compute every parameter moves.
    from softgate.modeling import embedded_path

    common = ["steps=1", "optim.lr=1e-6", "eval.size=0", "log.save_every=1", "algo.num_iterations=1",
              "algo.minibatches=1", "model.compute_dtype=bfloat16", "model.device=cpu",
              "rollout.prompts_per_step=8", "rollout.num_generations=8", "algo.micro_batch_size=64"]
    shipped = str(embedded_path())
    train(small_config("embedded:tiny", tmp_path / "amp", *common))
    assert _changed_fraction(shipped, tmp_path / "amp") >= 0.99
    train(small_config("embedded:tiny", tmp_path / "pure", *common, "optim.master_weights=false"))
    assert _changed_fraction(shipped, tmp_path / "pure") < 0.5


def test_gradient_checkpointing_keeps_the_shared_pass_exact(tiny_random_model) -> None:
    cfg = load_config(None, [f"model.name_or_path={tiny_random_model}", "model.gradient_checkpointing=true",
                             "model.device=cpu", "model.threads=1"])
    model, _, _ = load_policy(cfg)  # train mode, checkpointing on
    torch.manual_seed(0)
    prompt = torch.randint(5, 40, (2, 6)).repeat_interleave(3, 0)  # 2 groups of 3 rows sharing a prompt
    ids = torch.cat([prompt, torch.randint(5, 40, (6, 5))], 1)
    mask = torch.ones_like(ids)
    groups = torch.arange(2).repeat_interleave(3)
    results = []
    for group_ids in (groups, None):
        model.zero_grad()
        logp, _ = completion_logprobs(model, ids, mask, 5, group_ids=group_ids)
        logp.sum().backward()
        results.append((logp.detach(), [p.grad.clone() for p in model.parameters()]))
    (shared, shared_grads), (full, full_grads) = results
    torch.testing.assert_close(shared, full, rtol=0, atol=1e-5)
    for a, b in zip(shared_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_dropout_is_off_and_on_policy_updates_have_r_equal_1(tiny_random_model, tmp_path) -> None:
    import json
    from pathlib import Path

    # A checkpoint with dropout 0.1: with dropout on in the update passes, r != 1 on the on-policy update.
    config = json.loads((Path(tiny_random_model) / "config.json").read_text())
    config["attention_dropout"] = 0.1
    dropout_dir = tmp_path / "dropout_model"
    dropout_dir.mkdir()
    for f in Path(tiny_random_model).iterdir():
        (dropout_dir / f.name).write_bytes(f.read_bytes())
    (dropout_dir / "config.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    train(small_config(str(dropout_dir), out, "steps=2", "eval.size=0", "model.device=auto"))
    on_policy = [m for m in RunDir(out).read_metrics() if m["policy/on_policy"]]
    assert len(on_policy) == 2
    for m in on_policy:
        assert m["gate/ratio_min"] == 1.0 and m["gate/ratio_max"] == 1.0 and m["gate/eur"] == 1.0
