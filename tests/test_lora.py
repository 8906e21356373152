"""LoRA through peft in the native trainer: only the adapters train, the KL reference is the base model (the
adapters switched off, no copy), checkpoints hold the adapter and resume bit-exactly, `softgate export --merge`
writes a plain model computing what the adapted one computes, and config errors."""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft", reason="the lora extra (peft) is not installed")

from softgate.cli import main  # noqa: E402
from softgate.config import ConfigError, load_config  # noqa: E402
from softgate.rundir import read_jsonl  # noqa: E402
from softgate.train import train  # noqa: E402

LORA = ["model.lora.r=4", "model.lora.alpha=8"]
VOLATILE = ("time", "time/generate", "time/logprobs", "time/train", "time/step", "perf/tokens_per_s",
            "eval/wall_time_s", "eval/tokens_per_s")


def lora_config(model: str, out: Path, *extra: str):
    return load_config(None, [
        f"model.name_or_path={model}", f"output_dir={out}", "steps=2", "rollout.prompts_per_step=2",
        "rollout.num_generations=4", "rollout.max_new_tokens=16", "algo.minibatches=2", "algo.micro_batch_size=4",
        "eval.size=8", "eval.every=2", "eval.batch_size=8", "log.save_every=2", "log.progress=false",
        "model.threads=1", "optim.lr=1e-2", *LORA, *extra,
    ])


def test_only_adapter_parameters_train_and_go_to_the_optimizer(tiny_random_model, tmp_path):
    from softgate.lifecycle import setup

    s = setup(lora_config(tiny_random_model, tmp_path / "run"))
    named = dict(s.model.named_parameters())
    optimized = {id(p) for group in s.optimizer.param_groups for p in group["params"]}
    adapters = {name for name in named if "lora_" in name}
    assert adapters and optimized == {id(named[name]) for name in adapters}
    assert all(named[name].requires_grad == (name in adapters) for name in named)
    before = {name: p.detach().clone() for name, p in named.items()}
    ids = torch.randint(4, 50, (2, 10))
    s.model(input_ids=ids).logits.pow(2).mean().backward()
    s.optimizer.step()
    for name, p in named.items():
        if name in adapters and "lora_B" in name:  # B starts at 0 and gets a gradient: it moves
            assert not torch.equal(p, before[name]), name
        elif name not in adapters:
            assert torch.equal(p, before[name]), name  # the base weights, bit for bit


def test_reference_logprobs_are_the_base_models_without_a_copy(tiny_random_model, tmp_path):
    from softgate.lifecycle import setup
    from softgate.modeling import load_model_and_tokenizer
    from softgate.train import reference_logprobs, rollout_logprobs

    s = setup(lora_config(tiny_random_model, tmp_path / "run", "loss.kl_coef=0.1"))
    assert s.ref_model is None  # no second copy of the model
    with torch.no_grad():  # move the adapters away from B = 0 so that the adapted model differs from its base
        for name, p in s.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    s.model.eval()
    rollout = s.sampler.sample(s.data.prompts[:2], 3, temperature=1.0, top_p=1.0, max_new_tokens=8)
    kw = dict(micro=6, temperature=1.0, shared_prompt=True)
    base, _ = load_model_and_tokenizer(tiny_random_model)
    expected = rollout_logprobs(base, rollout, **kw)
    assert torch.equal(reference_logprobs(s.model, None, rollout, **kw), expected)
    adapted = rollout_logprobs(s.model, rollout, **kw)  # the adapters are back on after the reference pass
    assert (adapted - expected).abs().max() > 1e-3


def test_staleness_ring_keeps_only_the_adapters_and_lags_exactly(tiny_random_model, tmp_path):
    """algo.staleness=2 under LoRA: the ring holds the adapter tensors only (not the frozen base), and after each
    optimizer step the behaviour model equals a deep copy of the policy taken 2 steps earlier (fewer at the
    start), weights and logits bit for bit, while differing from the current policy."""
    import copy

    from softgate.lifecycle import setup

    k = 2
    s = setup(lora_config(tiny_random_model, tmp_path / "run", f"algo.staleness={k}", "optim.lr=0.05"))
    model, behaviour = s.model, s.behaviour
    adapters = {name: p for name, p in model.named_parameters() if "lora_" in name}
    ids = torch.randint(4, 50, (2, 10))

    def logits(m):
        with torch.no_grad():
            return m(input_ids=ids).logits

    copies = [copy.deepcopy(model).eval()]  # copies[j]: the policy after j optimizer steps
    for step in range(1, 5):
        model(input_ids=ids).logits.pow(2).mean().backward()
        behaviour.record(model)
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
        copies.append(copy.deepcopy(model).eval())
        lag = behaviour.sync(model)
        assert lag == min(k, step)
        lagged = copies[step - lag]
        expected = dict(lagged.named_parameters())
        assert all(torch.equal(p, expected[name]) for name, p in behaviour.model.named_parameters())
        assert torch.equal(logits(behaviour.model), logits(lagged))
        assert not torch.equal(logits(behaviour.model), logits(copies[step]))  # lagged, not the current policy

    ring = behaviour.state()
    assert len(ring) == k and all(state.keys() == adapters.keys() for state in ring)
    ring_bytes = sum(t.numel() * t.element_size() for t in ring[0].values())
    assert ring_bytes == sum(p.numel() * p.element_size() for p in adapters.values())
    whole = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert ring_bytes < whole / 10  # the frozen base is not copied

    # Checkpoints written before held whole state dicts: they still load (their adapter entries are the state).
    old_ring = [{n: t.clone() for n, t in copies[j].state_dict().items()} for j in (3, 4)]
    assert len(old_ring[0]) > len(adapters)
    behaviour.load(old_ring, where="step_000002/policy_ring.pt")
    assert behaviour.sync(model) == k and torch.equal(logits(behaviour.model), logits(copies[3]))
    assert all(state.keys() == adapters.keys() for state in behaviour.state())
    # A ring that does not fit the model (another model.lora) is refused in one line naming the file.
    with pytest.raises(ValueError, match=r"^step_000002/policy_ring.pt: its lagged policy states do not fit the "
                                         r"model \(missing \[.*lora_A[^\n]*model.lora must be what the run"):
        behaviour.load([{n: t for n, t in ring[0].items() if "lora_B" in n}], where="step_000002/policy_ring.pt")


def test_lora_staleness_ring_is_checkpointed_as_adapters_and_resume_is_exact(tmp_path):
    """On the shipped warm-started model (the adapters move): policy_ring.pt holds adapter tensors only, and a run
    stopped at step 2 and resumed to step 4 with algo.staleness=2 equals the uninterrupted one."""
    extra = ("algo.staleness=2", "eval.size=0")
    reference = tmp_path / "reference"
    train(lora_config("embedded:tiny", reference, "steps=4", *extra))
    resumed = tmp_path / "resumed"
    train(lora_config("embedded:tiny", resumed, "steps=2", *extra))
    ring = torch.load(resumed / "checkpoints" / "step_000002" / "policy_ring.pt", weights_only=True)
    assert len(ring) == 2 and ring[0] and all("lora_" in name for state in ring for name in state)
    train(lora_config("embedded:tiny", resumed, "steps=4", *extra), resume=True)

    def strip(records):
        return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]

    metrics = read_jsonl(resumed / "metrics.jsonl")
    assert strip(metrics) == strip(read_jsonl(reference / "metrics.jsonl"))
    assert [m["rollout/policy_lag"] for m in metrics[::4]] == [0, 2, 2, 2]
    # The lagged rollouts are off-policy from their first update: the adapters moved in the 2 steps of lag.
    assert all(abs(m["gate/ratio_max"] - 1.0) > 1e-6 for m in metrics[4::4])


def test_lora_run_checkpoints_the_adapter_and_resumes_bit_exactly(tmp_path):
    """On the shipped warm-started model (rewards vary, so the adapters move): the run logs a KL to the base model
    that grows from 0, its checkpoints hold only the adapter, and a run stopped at step 2 and resumed to step 4
    equals the uninterrupted one, metrics and adapter weights bit for bit."""
    from safetensors.torch import load_file

    extra = ("steps=4", "loss.kl_coef=0.05")
    reference = tmp_path / "reference"
    train(lora_config("embedded:tiny", reference, *extra))
    ckpt = reference / "checkpoints" / "step_000004"
    assert (ckpt / "adapter_model.safetensors").is_file() and not (ckpt / "model.safetensors").exists()
    assert all("lora_" in key for key in load_file(str(ckpt / "adapter_model.safetensors")))
    metrics = read_jsonl(reference / "metrics.jsonl")
    assert metrics[0]["policy/kl_ref"] == 0.0 and metrics[-1]["policy/kl_ref"] > 0  # starts at the base model

    resumed = tmp_path / "resumed"
    train(lora_config("embedded:tiny", resumed, "steps=2", "loss.kl_coef=0.05"))
    train(lora_config("embedded:tiny", resumed, *extra), resume=True)

    def strip(records):
        return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]

    assert strip(read_jsonl(resumed / "metrics.jsonl")) == strip(metrics)
    a = load_file(str(ckpt / "adapter_model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step_000004" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # export --merge: a plain Hugging Face model computing what the adapted model computes
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    assert main(["export", str(reference), "--merge", "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    adapted = AutoPeftModelForCausalLM.from_pretrained(str(ckpt))  # the checkpoint itself loads with peft
    ids = torch.randint(4, 50, (2, 12))
    with torch.no_grad():
        # Equal up to float32 rounding: W + s B A is summed once instead of per forward (observed max 1.1e-5 on
        # logits of size ~7); the adapters themselves move the logits by far more (checked below).
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-4, rtol=0)
        base = AutoModelForCausalLM.from_pretrained(str(Path(json.loads(
            (ckpt / "adapter_config.json").read_text())["base_model_name_or_path"])))
        assert not torch.allclose(merged(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-3)
        # softgate's own loader (softgate eval --model, model.name_or_path) merges an adapter folder at load
        from softgate.modeling import load_model_and_tokenizer

        loaded, _ = load_model_and_tokenizer(str(ckpt))
        assert torch.equal(loaded(input_ids=ids).logits, merged(input_ids=ids).logits)
    assert main(["export", str(reference), "--out", str(tmp_path / "adapter")]) == 0  # without --merge
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "adapter" / "optimizer.pt").exists()


def test_export_of_a_full_checkpoint_and_its_errors(tiny_random_model, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    cfg = lora_config(tiny_random_model, run, "steps=1", "eval.size=0", "model.lora=null")
    train(cfg)
    assert main(["export", str(run), "--merge", "--out", str(tmp_path / "out")]) == 0
    assert not (tmp_path / "out" / "optimizer.pt").exists()
    AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    capsys.readouterr()
    for argv, message in [
        (["export", str(run), "--out", str(tmp_path / "out")], "is not empty"),
        (["export", str(run), "--step", "7", "--out", str(tmp_path / "o2")], "no checkpoint of step 7; it has steps 1"),
        (["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "o3")], "holds no checkpoint"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_lora_config_errors_name_the_key(tiny_random_model, tmp_path):
    with pytest.raises(ConfigError, match="model.lora.r: must be > 0"):
        load_config(None, ["model.lora.r=0"])
    with pytest.raises(ConfigError, match="model.lora.dropout: must be in"):
        load_config(None, ["model.lora.dropout=1.5"])
    with pytest.raises(ConfigError, match="unknown key 'model.lora.rank'"):
        load_config(None, ["model.lora.rank=4"])
    with pytest.raises(ConfigError, match="model.lora: LoRA runs sample with rollout.backend=hf only"):
        load_config(None, ["model.lora.r=4", "rollout.backend=vllm"])
    assert load_config(None, ["model.lora=null"]).model.lora is None
    assert load_config(None, ["model.lora={r: 2, target_modules: [q_proj]}"]).model.lora.target_modules == ["q_proj"]
    from softgate.lifecycle import load_policy

    with pytest.raises(ValueError, match="model.lora.target_modules: .*nope"):  # peft names the target
        load_policy(lora_config(tiny_random_model, tmp_path, "model.lora.target_modules=[nope]"))


def test_resume_with_another_lora_setting_is_refused(tiny_random_model, tmp_path):
    from softgate.checkpoint import load_checkpoint
    from softgate.lifecycle import setup

    run = tmp_path / "run"
    train(lora_config(tiny_random_model, run, "steps=1", "eval.size=0"))
    s = setup(lora_config(tiny_random_model, run, "model.lora=null"))
    with pytest.raises(ValueError, match="holds a LoRA adapter but the config trains full weights"):
        load_checkpoint(run / "checkpoints" / "step_000001", model=s.model, optimizer=s.optimizer,
                        scheduler=s.scheduler)
