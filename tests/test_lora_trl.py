"""LoRA on the trl engine (``model.lora`` with ``engine=trl``): TRL wraps the policy with softgate's adapter settings
(the native engine's trainable parameters), the KL reference is the base model with the adapters off (no reference
model, no second adapter), only the adapters move, the run directory holds adapter checkpoints that resume
bit-exactly, and ``softgate export --merge`` turns them into a plain Hugging Face model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft", reason="the lora extra (peft) is not installed")

from softgate.config import Config, load_config  # noqa: E402
from softgate.rundir import RunDir  # noqa: E402

VOLATILE = ("time", "time/step", "perf/tokens_per_s", "eval/wall_time_s", "eval/tokens_per_s")


def _cfg(out: Path, *extra: str) -> Config:
    """The shipped tiny model (its rewards vary within a group, so the adapters move), 2 RL steps of 2 updates
    each (num_iterations=2), a KL penalty to the base model, a checkpoint every step."""
    return load_config(None, [
        "engine=trl", "model.name_or_path=embedded:tiny", "model.device=cpu", "model.threads=1", f"output_dir={out}",
        "steps=2", "task.train_size=16", "rollout.prompts_per_step=2", "rollout.num_generations=4",
        "rollout.max_new_tokens=16", "algo.minibatches=1", "algo.micro_batch_size=8", "eval.size=4", "eval.every=1",
        "eval.batch_size=4", "log.save_every=1", "log.progress=false", "optim.lr=1e-2", "loss.kl_coef=0.05",
        "model.lora.r=4", "model.lora.alpha=8", *extra,
    ])


def _base_model() -> Any:
    from softgate.modeling import load_model_and_tokenizer

    return load_model_and_tokenizer("embedded:tiny")[0]


def test_trl_wraps_the_policy_as_the_native_engine_does(tmp_path: Path) -> None:
    """The same trainable parameters as ``softgate.lifecycle.load_policy`` (the native engine), and no second model
    or adapter for the KL reference; the adapters' dropout is off (model.disable_dropout), as in the native engine."""
    from softgate.engines.trl import build_trainer
    from softgate.lifecycle import load_policy

    cfg = _cfg(tmp_path / "run", "model.lora.dropout=0.1")
    trainer = build_trainer(cfg)
    native, _, _ = load_policy(cfg)

    def trainable(model: Any) -> list[tuple[str, tuple[int, ...]]]:
        return [(name, tuple(p.shape)) for name, p in model.named_parameters() if p.requires_grad]

    assert trainable(trainer.model) and trainable(trainer.model) == trainable(native)
    assert all("lora_" in name for name, _ in trainable(trainer.model))
    assert trainer.ref_model is None  # no copy of the model as the reference
    assert list(trainer.model.peft_config) == ["default"]  # and no copy of the adapter ("ref")
    lora_dropout = [m for name, m in trainer.model.named_modules() if name.endswith("lora_dropout.default")]
    assert lora_dropout and all(isinstance(m, torch.nn.Dropout) and m.p == 0 for m in lora_dropout)


def test_a_lora_target_the_model_lacks_names_the_key(tmp_path: Path) -> None:
    from softgate.engines.trl import build_trainer

    with pytest.raises(ValueError, match="model.lora.target_modules: .*nope"):
        build_trainer(_cfg(tmp_path / "run", "model.lora.target_modules=[nope]"))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted run; keeps its trainer and the rollouts TRL scored (with their reference log-probs)."""
    import softgate.engines.trl as engine

    out = tmp_path_factory.mktemp("lora_trl") / "run"
    seen: dict[str, Any] = {"rollouts": []}

    def capturing_build_trainer(*args: Any, **kwargs: Any) -> Any:
        trainer = build_trainer(*args, **kwargs)
        score = trainer._generate_and_score_completions

        def keep(inputs: list[dict[str, Any]]) -> dict[str, Any]:
            output = score(inputs)
            seen["rollouts"].append({k: v.detach().clone() for k, v in output.items() if torch.is_tensor(v)})
            return output

        trainer._generate_and_score_completions = keep
        seen["trainer"] = trainer
        return trainer

    build_trainer = engine.build_trainer
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "build_trainer", capturing_build_trainer)
        engine.train_trl(_cfg(out))
    return {"out": out, **seen}


def test_only_the_adapters_train_and_the_run_directory_is_complete(lora_run: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    out, trainer = lora_run["out"], lora_run["trainer"]
    run = RunDir(out)
    info = run.read_info()
    assert (info.engine, info.status, info.last_step) == ("trl", "finished", 2)
    assert [m["step"] for m in run.read_metrics()] == [1, 2, 3, 4]  # 2 RL steps x num_iterations=2
    assert [e["rl_step"] for e in run.read_evals()] == [0, 1, 2]
    assert (out / "summary.json").is_file() and (out / "config.yaml").is_file()
    assert [run.checkpoint_step(p) for p in run.list_checkpoints()] == [1, 2]
    for ckpt in run.list_checkpoints():  # the adapter only, as a peft folder
        assert (ckpt / "adapter_config.json").is_file() and not (ckpt / "model.safetensors").exists()
        assert all("lora_" in key for key in load_file(str(ckpt / "adapter_model.safetensors")))

    # The base weights are the loaded base model's bit for bit; the adapters moved away from B = 0.
    base = dict(_base_model().named_parameters())
    frozen, moved = set(), []
    for name, p in trainer.model.named_parameters():
        if "lora_" in name:
            moved += [p.abs().max().item()] if "lora_B" in name else []
            continue
        plain = name.removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(p, base[plain]), name
        frozen.add(plain)
    assert frozen == set(base) and moved and max(moved) > 0


def test_kl_reference_is_the_base_model_with_the_adapters_off(lora_run: dict[str, Any]) -> None:
    """TRL's reference log-probs of each rollout equal the base model's (a separately loaded copy, here only to
    check), while the adapted policy's differ once the adapters moved; the logged KL starts at 0 (B = 0: the policy
    is the base) and is finite and positive after updates."""
    from trl.trainer.utils import add_fused_lm_head

    trainer, rollouts = lora_run["trainer"], lora_run["rollouts"]
    assert len(rollouts) == 2 and all("ref_per_token_logps" in r for r in rollouts)
    base = _base_model()
    # TRL's log-prob pass reads a fused LM head: set up on the base copy as TRL does for a reference model
    # (grpo_trainer.py L1074-1077).
    add_fused_lm_head(base, temperature=trainer.temperature, cast_lm_head_to_fp32=trainer.args.cast_lm_head_to_fp32)
    last = rollouts[-1]  # sampled after step 1's updates
    ids = torch.cat([last["prompt_ids"], last["completion_ids"]], 1)
    mask = torch.cat([last["prompt_mask"], last["completion_mask"]], 1)
    keep, completion = last["completion_ids"].size(1), last["completion_mask"].bool()
    with torch.no_grad():
        base_logp, _, _ = trainer._get_per_token_logps_and_entropies(base, ids, mask, keep)
        policy_logp, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep)
    torch.testing.assert_close(last["ref_per_token_logps"][completion], base_logp[completion], atol=1e-6, rtol=0)
    assert (policy_logp - base_logp)[completion].abs().max() > 1e-3

    kl = [m["policy/kl_ref"] for m in RunDir(lora_run["out"]).read_metrics()]
    assert kl[0] == 0.0 and all(math.isfinite(v) for v in kl) and kl[-1] > 0


def test_resume_from_an_adapter_checkpoint_equals_the_uninterrupted_run(lora_run: dict[str, Any],
                                                                         tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from softgate.engines.trl import train_trl

    out = tmp_path / "resumed"
    train_trl(_cfg(out, "steps=1"))
    train_trl(_cfg(out), resume=True)
    run, reference = RunDir(out), RunDir(lora_run["out"])
    assert (run.read_info().status, run.read_info().last_step) == ("finished", 2)

    def strip(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]

    # The first update after the resume has a KL > 0: the adapter was restored (fresh adapters would give 0).
    assert run.read_metrics()[2]["policy/kl_ref"] > 0
    assert strip(run.read_metrics()) == strip(reference.read_metrics())
    a = load_file(str(reference.latest_checkpoint() / "adapter_model.safetensors"))
    b = load_file(str(run.latest_checkpoint() / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_merge_writes_a_plain_model_computing_the_adapted_one(lora_run: dict[str, Any],
                                                                     tmp_path: Path) -> None:
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from softgate.cli import main

    out, trainer = lora_run["out"], lora_run["trainer"]
    assert main(["export", str(out), "--merge", "--out", str(tmp_path / "merged")]) == 0
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert type(merged).__module__.startswith("transformers.")  # a plain model, no peft wrapper
    # The adapted model: the newest checkpoint loaded by peft on its base, holding the policy's final adapter.
    ckpt = RunDir(out).latest_checkpoint()
    adapted = AutoPeftModelForCausalLM.from_pretrained(str(ckpt)).eval()
    final = {name: p for name, p in trainer.model.named_parameters() if "lora_" in name}
    assert final and all(torch.equal(p, adapted.get_parameter(name)) for name, p in final.items())
    # Compared in float64: the merged weights W + (alpha / r) B A are the adapted model's up to their float32
    # rounding, while float32 forwards also differ by summation order (observed 1.05e-5 on logits of size ~6).
    adapted, merged = adapted.double(), merged.double()
    ids = torch.randint(4, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = adapted(input_ids=ids).logits
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
        assert (_base_model().double()(input_ids=ids).logits - expected).abs().max() > 1e-3  # the adapter matters

    # Without --merge: the adapter folder, none of the training state of either engine.
    assert main(["export", str(out), "--out", str(tmp_path / "adapter")]) == 0
    written = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= written
    assert not written & {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin",
                          "state.json"}
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 4
