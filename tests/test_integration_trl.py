"""softgate inside TRL's GRPOTrainer: parity with TRL's own losses, metrics, config checks, an end-to-end run.

The parity tests run TRL's real ``GRPOTrainer._compute_loss`` (loss_type sapo / grpo / dapo / dr_grpo) and
``SoftGateGRPOTrainer._compute_loss`` on the same micro-batch of a tiny random Llama model, and compare the loss
and every parameter gradient to 1e-6. The batch is off-policy (old log-probs perturbed) so the gate is active.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from softgate import gates  # noqa: E402
from softgate.integrations.trl import (  # noqa: E402
    GROUP_KEY,
    SoftGateGRPOConfig,
    SoftGateGRPOTrainer,
    check_trl_version,
    gate_is_inert,
    reward_functions,
    trl_normalizer,
    warn_if_gate_is_inert,
)

B, P, T = 6, 5, 7  # rows (completions), prompt tokens, completion tokens of the hand-made micro-batch
G = 3  # completions per prompt in that micro-batch


# ------------------------------------------------------------------------------------------------------------
# A tiny random model and tokenizer saved to disk (TRL builds its reference model from a path); no download.
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from softgate.tokenizer import build_tokenizer

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _length_reward(completions: list[str], **_: Any) -> list[float]:
    return [float(len(c)) for c in completions]


def _trainer(cls: type, config_cls: type, tiny_dir: Path, tmp_path: Path, **overrides: Any) -> Any:
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=B, num_generations=G,
        max_completion_length=T, max_steps=1, bf16=False, use_cpu=True, report_to=[], save_strategy="no",
        num_iterations=2, epsilon=0.2, epsilon_high=0.28, sapo_temperature_pos=2.0, sapo_temperature_neg=3.0,
    )
    kwargs.update(overrides)
    dataset = Dataset.from_dict({"prompt": ["Ann has 3 apples"] * 4})
    return cls(model=str(tiny_dir), reward_funcs=_length_reward, args=config_cls(**kwargs),
               train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(tiny_dir))


def _batch(trainer: Any, seed: int = 1) -> dict[str, Any]:
    """A micro-batch in the format TRL hands to ``_compute_loss``: two prompts x G completions, ragged masks
    (one all-masked row), off-policy old log-probs and a perturbed reference."""
    g = torch.Generator().manual_seed(seed)
    vocab = trainer.model.config.vocab_size
    prompts = torch.randint(4, vocab, (B // G, P), generator=g).repeat_interleave(G, dim=0)
    completion_mask = (torch.rand(B, T, generator=g) > 0.25).long()
    completion_mask[:, 0] = 1
    completion_mask[4] = 0  # an all-masked row: contributes nothing, still counted by TRL's row mean
    inputs = {
        "prompt_ids": prompts,
        "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.randint(4, vocab, (B, T), generator=g),
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.2, -0.7, 0.0, 0.9, -1.5, 0.4]),
        "num_items_in_batch": completion_mask.sum() * 2,  # as if the generation batch held 2 such micro-batches
        GROUP_KEY: torch.arange(B) // G,  # the EUR groups, as SoftGateGRPOTrainer tags them at generation
    }
    logp = _current_logp(trainer, inputs)
    # |log r| up to ~0.6: ratios from ~0.5 to ~1.8, both sides of every trust region, no clamping.
    inputs["old_per_token_logps"] = logp + 0.35 * torch.randn(B, T, generator=g)
    inputs["ref_per_token_logps"] = logp + 0.2 * torch.randn(B, T, generator=g)
    return inputs


def _current_logp(trainer: Any, inputs: dict[str, Any], length: int = T) -> Any:
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    att = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    with torch.no_grad():
        return trainer._get_per_token_logps_and_entropies(trainer.model, ids, att, length)[0]


def _loss_and_grads(trainer: Any, inputs: dict[str, Any], *, train: bool = True,
                    accum: int = 2) -> tuple[Any, dict[str, Any]]:
    trainer.model.train(train)
    trainer.model.zero_grad(set_to_none=True)
    trainer.current_gradient_accumulation_steps = accum  # as inside an accumulation window of `accum` micro-batches
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _assert_parity(ref: Any, ours: Any, inputs: dict[str, Any], *, train: bool = True) -> None:
    loss_ref, grads_ref = _loss_and_grads(ref, inputs, train=train)
    loss_ours, grads_ours = _loss_and_grads(ours, inputs, train=train)
    assert abs(loss_ref.item()) > 1e-3  # the comparison is not between two zeros
    torch.testing.assert_close(loss_ours.double(), loss_ref.double(), atol=1e-6, rtol=0)
    assert grads_ref.keys() == grads_ours.keys() and len(grads_ref) > 0
    for name, g_ref in grads_ref.items():
        assert g_ref.abs().max() > 0, name
        torch.testing.assert_close(grads_ours[name], g_ref, atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")


# ------------------------------------------------------------------------------------------------------------
# Parity with TRL's own losses
# ------------------------------------------------------------------------------------------------------------

PARITY_CASES = [
    # (TRL loss_type, softgate gate, softgate agg, extra config shared by both trainers)
    pytest.param("sapo", "sigmoid", "seq-mean-token-mean", {}, id="sapo"),
    pytest.param("sapo", "sigmoid", "seq-mean-token-mean", {"beta": 0.04}, id="sapo-kl"),
    pytest.param("sapo", "sigmoid", "seq-mean-token-mean", {"importance_sampling_level": "sequence"},
                 id="sapo-sequence"),
    pytest.param("sapo", "sigmoid", "seq-mean-token-mean", {"top_entropy_quantile": 0.5}, id="sapo-entropy-mask"),
    pytest.param("sapo", "sigmoid", "seq-mean-token-mean", {"off_policy_mask_threshold": 0.05}, id="sapo-opsm"),
    pytest.param("grpo", "clip", "seq-mean-token-mean", {}, id="grpo"),
    pytest.param("grpo", "clip", "seq-mean-token-mean", {"importance_sampling_level": "sequence"}, id="gspo"),
    pytest.param("dapo", "clip", "token-mean", {}, id="dapo"),
    pytest.param("dr_grpo", "clip", "seq-mean-token-sum-norm", {"beta": 0.04}, id="dr_grpo-kl"),
]


@pytest.mark.parametrize(("loss_type", "gate", "agg", "extra"), PARITY_CASES)
def test_loss_and_gradients_equal_trl(tiny_dir: Path, tmp_path: Path, loss_type: str, gate: str, agg: str,
                                      extra: dict[str, Any]) -> None:
    ref = _trainer(GRPOTrainer, GRPOConfig, tiny_dir, tmp_path, loss_type=loss_type, **extra)
    ours = _trainer(SoftGateGRPOTrainer, SoftGateGRPOConfig, tiny_dir, tmp_path, softgate_gate=gate,
                    softgate_agg=agg, **extra)
    inputs = _batch(ref)
    if extra.get("off_policy_mask_threshold"):
        # The sampler of row 1 (A < 0) is far from the current policy: the off-policy mask must drop it, or this
        # case would test nothing beyond "sapo".
        shift = torch.zeros(B, 1)
        shift[1] = 1.0
        inputs["sampling_per_token_logps"] = inputs["old_per_token_logps"] + shift
        logp = _current_logp(ref, inputs)
        keep = ref.get_off_policy_mask(inputs["advantages"][:, None], logp, inputs["sampling_per_token_logps"],
                                       inputs["completion_mask"], extra["off_policy_mask_threshold"])
        assert keep[1].item() == 0 and keep.sum() >= 3
    _assert_parity(ref, ours, inputs, train=True)


def test_eval_mode_has_no_accumulation_factor(tiny_dir: Path, tmp_path: Path) -> None:
    ref = _trainer(GRPOTrainer, GRPOConfig, tiny_dir, tmp_path, loss_type="sapo")
    ours = _trainer(SoftGateGRPOTrainer, SoftGateGRPOConfig, tiny_dir, tmp_path, softgate_gate="sigmoid",
                    loss_type="sapo")
    _assert_parity(ref, ours, _batch(ref), train=False)


def test_softgate_tau_fields_drive_the_gate(tiny_dir: Path, tmp_path: Path) -> None:
    """softgate_tau_* set -> the same as TRL's sapo with those temperatures (and differs from the defaults)."""
    ref = _trainer(GRPOTrainer, GRPOConfig, tiny_dir, tmp_path, loss_type="sapo",
                   sapo_temperature_pos=10.0, sapo_temperature_neg=12.0)
    ours = _trainer(SoftGateGRPOTrainer, SoftGateGRPOConfig, tiny_dir, tmp_path, softgate_gate="sigmoid",
                    loss_type="sapo", softgate_tau_pos=10.0, softgate_tau_neg=12.0)
    assert (ours.args.sapo_temperature_pos, ours.args.sapo_temperature_neg) == (10.0, 12.0)
    inputs = _batch(ref)
    _assert_parity(ref, ours, inputs)
    default = _trainer(SoftGateGRPOTrainer, SoftGateGRPOConfig, tiny_dir, tmp_path, softgate_gate="sigmoid",
                       loss_type="sapo")
    assert abs(_loss_and_grads(default, inputs)[0] - _loss_and_grads(ours, inputs)[0]) > 1e-4


# ------------------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------------------


def test_gate_metrics_are_logged(tiny_dir: Path, tmp_path: Path) -> None:
    ours = _trainer(SoftGateGRPOTrainer, SoftGateGRPOConfig, tiny_dir, tmp_path, softgate_gate="erf",
                    softgate_tau_pos=4.0, softgate_tau_neg=5.0)
    inputs = _batch(ours)
    _loss_and_grads(ours, inputs, accum=1)
    m = {k: v[-1] for k, v in ours._metrics["train"].items()}
    for key in ("gate/eur", "gate/soft_clip_frac", "gate/hard_clip_frac", "gate/ratio_mean", "gate/ratio_min",
                "gate/ratio_max", "gate/ratio_p05", "gate/ratio_p50", "gate/ratio_p95", "gate/clamped",
                "gate/approx_kl", "entropy"):
        assert key in m and math.isfinite(m[key]), key

    # Closed form: erf f'(r) = exp(-tau^2 (r-1)^2 / 2); EUR (Eq. 12) per prompt group, then mean over groups.
    mask = inputs["completion_mask"].bool()
    logp = _current_logp(ours, inputs)
    r = torch.exp(logp.double() - inputs["old_per_token_logps"].double())
    tau = torch.where(inputs["advantages"][:, None] > 0, 4.0, 5.0).double()
    df = torch.exp(-0.5 * tau**2 * (r - 1) ** 2)
    per_group = []
    for g in range(B // G):
        rows = slice(g * G, (g + 1) * G)
        per_group.append((df[rows] * mask[rows]).sum() / mask[rows].sum())
    assert m["gate/eur"] == pytest.approx(torch.stack(per_group).mean().item(), abs=1e-6)
    assert m["gate/ratio_max"] == pytest.approx(r[mask].max().item(), rel=1e-6)
    assert m["gate/ratio_min"] == pytest.approx(r[mask].min().item(), rel=1e-6)
    assert m["gate/soft_clip_frac"] == pytest.approx((df[mask] < 0.5).double().mean().item(), abs=1e-6)
    assert 0 < m["gate/eur"] < 1 and m["gate/clamped"] == 0


def test_log_reduces_min_max_and_clamped_exactly(tiny_dir: Path, tmp_path: Path) -> None:
    """Over the micro-batches of a logging interval: min of the minima, max of the maxima, sum of the clamped
    counts (TRL's log would average them); the other gate figures stay TRL's mean."""
    ours = _trainer(SoftGateGRPOTrainer, SoftGateGRPOConfig, tiny_dir, tmp_path)
    ours.model.train()
    metrics = ours._metrics["train"]
    metrics["gate/ratio_min"] += [0.9, 0.7, float("nan")]  # NaN: a micro-batch without valid tokens
    metrics["gate/ratio_max"] += [1.1, 1.4, 1.2]
    metrics["gate/clamped"] += [1.0, 0.0, 2.0]
    metrics["gate/ratio_mean"] += [1.0, 0.94]
    ours.log({"loss": 0.5})
    logged = ours.state.log_history[-1]
    assert (logged["gate/ratio_min"], logged["gate/ratio_max"], logged["gate/clamped"]) == (0.7, 1.4, 3.0)
    assert logged["gate/ratio_mean"] == pytest.approx(0.97)


def test_on_policy_batch_gives_eur_one(tiny_dir: Path, tmp_path: Path) -> None:
    """Without old log-probs (one update per rollout) r = 1 exactly: every admissible gate has f'(1) = 1."""
    ours = _trainer(SoftGateGRPOTrainer, SoftGateGRPOConfig, tiny_dir, tmp_path, softgate_gate="arctan",
                    softgate_tau_pos=10.0, softgate_tau_neg=12.0)
    inputs = _batch(ours)
    del inputs["old_per_token_logps"]
    _loss_and_grads(ours, inputs, accum=1)
    m = {k: v[-1] for k, v in ours._metrics["train"].items()}
    assert m["gate/eur"] == 1.0 and m["gate/ratio_min"] == 1.0 and m["gate/ratio_max"] == 1.0
    assert m["gate/soft_clip_frac"] == 0.0


def _one_row(trainer: Any, length: int, adv: float, log_ratio: float) -> dict[str, Any]:
    """A micro-batch of one completion of prompt group 0 (``per_device_train_batch_size=1``, the paper's TRL
    setting) with ``length`` valid tokens out of 9, all at ratio exp(log_ratio)."""
    g = torch.Generator().manual_seed(length)
    vocab = trainer.model.config.vocab_size
    mask = (torch.arange(9) < length).long()[None]
    inputs = {"prompt_ids": torch.randint(4, vocab, (1, P), generator=torch.Generator().manual_seed(0)),
              "prompt_mask": torch.ones(1, P, dtype=torch.long),
              "completion_ids": torch.randint(4, vocab, (1, 9), generator=g), "completion_mask": mask,
              "advantages": torch.tensor([adv]), GROUP_KEY: torch.tensor([0])}
    inputs["old_per_token_logps"] = _current_logp(trainer, inputs, 9) - log_ratio
    return inputs


def test_eur_is_eq12_across_micro_batches(tiny_dir: Path, tmp_path: Path) -> None:
    """One prompt, two completions in two micro-batches of one optimizer step: 1 token with f' = 0 (A > 0, r = e
    beyond the clip) and 9 tokens with f' = 1 (r = 1). Eq. 12: (0 + 9) / (1 + 9) = 0.9; the mean of per-micro-batch
    EURs would say 0.5."""
    ours = _trainer(SoftGateGRPOTrainer, SoftGateGRPOConfig, tiny_dir, tmp_path, softgate_gate="clip",
                    loss_type="grpo", per_device_train_batch_size=1, num_generations=2, gradient_accumulation_steps=2)
    for inputs in (_one_row(ours, 1, adv=1.0, log_ratio=1.0), _one_row(ours, 9, adv=-1.0, log_ratio=0.0)):
        assert "gate/eur" not in ours._metrics["train"]  # not before the step's last micro-batch
        _loss_and_grads(ours, inputs, accum=2)
    assert ours._metrics["train"]["gate/eur"] == [pytest.approx(0.9, abs=1e-6)]
    # Evaluation batches stand alone.
    ours.model.eval()
    ours._compute_loss(ours.model, _one_row(ours, 1, adv=1.0, log_ratio=1.0))
    assert ours._metrics["eval"]["gate/eur"] == [0.0]


def test_groups_are_tagged_at_generation(tiny_dir: Path, tmp_path: Path) -> None:
    """TRL's groups (num_generations consecutive rows of the generation batch), numbered across generations, even
    for identical prompts; the tag survives TRL's shuffle and split into micro-batches."""
    ours = _trainer(SoftGateGRPOTrainer, SoftGateGRPOConfig, tiny_dir, tmp_path, num_iterations=1)
    ours.model.train()
    rows = [{"prompt": "Ann has 3 apples"}] * B  # B // G groups of G identical prompts
    first = ours._generate_and_score_completions(rows)[GROUP_KEY]
    second = ours._generate_and_score_completions(rows)[GROUP_KEY]
    assert first.tolist() == [0, 0, 0, 1, 1, 1] and second.tolist() == [2, 2, 2, 3, 3, 3]
    ours._step, ours._buffered_inputs = 0, None
    ours.args.steps_per_generation = 2  # two micro-batches of 3 rows out of one generation batch of 6
    parts = [ours._prepare_inputs(rows)]
    ours._step = 1
    parts.append(ours._prepare_inputs(rows))
    assert [part[GROUP_KEY].shape for part in parts] == [(B // 2,), (B // 2,)]
    assert sorted(torch.cat([q[GROUP_KEY] for q in parts]).tolist()) == [4, 4, 4, 5, 5, 5]


def test_trl_normalizer_by_hand() -> None:
    # grpo/sapo: 6 rows, 4 accumulation steps -> each micro-batch's row-mean / 4.
    assert trl_normalizer("seq-mean-token-mean", num_rows=6, train=True, grad_accum_steps=4) == 24.0
    assert trl_normalizer("seq-mean-token-mean", num_rows=6, train=False, grad_accum_steps=4) == 6.0
    # dr_grpo: rows * max_completion_length * accumulation.
    assert trl_normalizer("seq-mean-token-sum-norm", num_rows=6, train=True, grad_accum_steps=4,
                          max_completion_length=512) == 6 * 512 * 4
    # dapo: 1200 tokens in the generation batch over 2 processes, 4 accumulation steps, 8 steps per generation
    # -> 1200 / 2 * 4 / 8 = 300 tokens per accumulation window per process.
    z = trl_normalizer("token-mean", num_rows=6, train=True, grad_accum_steps=4, num_items_in_batch=1200.0,
                       num_processes=2, steps_per_generation=8)
    assert float(z) == 300.0


def test_reward_functions_for_trl() -> None:
    fmt, ans = reward_functions(symbolic=False)
    assert (fmt.__name__, ans.__name__) == ("format_reward", "answer_reward")  # TRL logs rewards/<name>/mean
    completions = ["<think>3 + 4</think> <answer>7</answer>", "<answer>8</answer>", "seven"]
    assert fmt(completions) == [1.0, 0.25, 0.0]
    assert ans(completions, answer=["7", "8", "7"]) == [1.0, 1.0, 0.0]
    # Conversational datasets: TRL passes a list of messages per completion.
    chat = [[{"role": "assistant", "content": c}] for c in completions]
    assert fmt(chat) == [1.0, 0.25, 0.0] and ans(chat, answer=[7, 8, 7]) == [1.0, 1.0, 0.0]
    with pytest.raises(KeyError, match="'answer'"):
        ans(completions, solution=["7", "8", "7"])


# ------------------------------------------------------------------------------------------------------------
# Configuration and guards
# ------------------------------------------------------------------------------------------------------------


def _config(tmp_path: Path, **kw: Any) -> SoftGateGRPOConfig:
    return SoftGateGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], **kw)


def test_config_temperatures_have_one_value(tmp_path: Path) -> None:
    inherited = _config(tmp_path, sapo_temperature_pos=3.0, sapo_temperature_neg=4.0)
    assert (inherited.softgate_tau_pos, inherited.softgate_tau_neg) == (3.0, 4.0)
    explicit = _config(tmp_path, softgate_tau_pos=10.0, softgate_tau_neg=12.0)
    assert (explicit.sapo_temperature_pos, explicit.sapo_temperature_neg) == (10.0, 12.0)
    gate = explicit.softgate_gate_object()
    assert gate.name == "sigmoid" and gate.params == {"tau_pos": 10.0, "tau_neg": 12.0}
    clip = _config(tmp_path, softgate_gate="clip", epsilon=0.2, epsilon_high=0.28).softgate_gate_object()
    assert clip.params == {"eps_low": 0.2, "eps_high": 0.28}


def test_default_temperatures_are_the_registrys(tmp_path: Path) -> None:
    # Nothing set: the gate family's defaults (the registry is their one home), mirrored into TRL's SAPO fields.
    for name in ("erf", "student"):
        cfg = _config(tmp_path, softgate_gate=name)
        expected = gates.defaults(name)
        assert cfg.softgate_gate_object().params == expected
        assert (cfg.softgate_tau_pos, cfg.sapo_temperature_pos) == (expected["tau_pos"],) * 2 == (10.0, 10.0)
        assert (cfg.softgate_tau_neg, cfg.sapo_temperature_neg) == (expected["tau_neg"],) * 2 == (12.0, 12.0)
    # SAPO's own pair is one argument away; softgate_gate_params wins over the fields.
    sapo = _config(tmp_path, softgate_tau_pos=1.0, softgate_tau_neg=1.05)
    assert sapo.softgate_gate_object().params == {"tau_pos": 1.0, "tau_neg": 1.05}
    both = _config(tmp_path, softgate_gate="student", softgate_tau_pos=3.0, softgate_gate_params={"tau_pos": 4.0})
    assert both.softgate_gate_object().params == {"tau_pos": 4.0, "tau_neg": 12.0, "nu": 3.0}
    assert (both.softgate_tau_pos, both.sapo_temperature_pos) == (4.0, 4.0)


@pytest.mark.parametrize(("gate", "agg", "loss_type"), [
    ("sigmoid", "seq-mean-token-mean", "sapo"), ("erf", "seq-mean-token-mean", "grpo"),
    ("erf", "token-mean", "dapo"), ("clip", "seq-mean-token-sum-norm", "dr_grpo"),
])
def test_unset_loss_type_follows_the_aggregation(tmp_path: Path, gate: str, agg: str, loss_type: str) -> None:
    """TRL only warns with loss_type; when the user leaves it unset it names TRL's loss with the same aggregation."""
    assert _config(tmp_path, softgate_gate=gate, softgate_agg=agg).loss_type == loss_type


@pytest.mark.parametrize(("loss_type", "agg"), [
    (None, "token-mean"),  # TRL's default loss_type, dapo
    ("dapo", "token-mean"), ("grpo", "seq-mean-token-mean"), ("sapo", "seq-mean-token-mean"),
    ("dr_grpo", "seq-mean-token-sum-norm"),
])
def test_loss_type_decides_the_aggregation_when_softgate_agg_is_unset(tmp_path: Path, loss_type: str | None,
                                                                      agg: str) -> None:
    cfg = _config(tmp_path, softgate_gate="erf", **({} if loss_type is None else {"loss_type": loss_type}))
    assert cfg.softgate_agg == agg
    assert cfg.loss_type == (loss_type or "dapo")  # the user's value is kept


@pytest.mark.parametrize(("loss_type", "agg"), [("dapo", "seq-mean-token-mean"), ("grpo", "token-mean"),
                                                ("cispo", "token-mean"), ("vespo", None)])
def test_loss_type_conflicting_with_softgate_agg_is_an_error(tmp_path: Path, loss_type: str,
                                                             agg: str | None) -> None:
    with pytest.raises(ValueError, match=f"loss_type='{loss_type}'.*softgate_agg"):
        _config(tmp_path, loss_type=loss_type, **({} if agg is None else {"softgate_agg": agg}))
    # Agreeing values are fine.
    assert _config(tmp_path, loss_type="grpo", softgate_agg="seq-mean-token-mean").softgate_agg == "seq-mean-token-mean"


def test_default_loss_type_is_trl_dapo(tiny_dir: Path, tmp_path: Path) -> None:
    """Neither loss_type nor softgate_agg given: the clip gate is TRL's default GRPOConfig (dapo), to 1e-6."""
    ref = _trainer(GRPOTrainer, GRPOConfig, tiny_dir, tmp_path)
    ours = _trainer(SoftGateGRPOTrainer, SoftGateGRPOConfig, tiny_dir, tmp_path, softgate_gate="clip")
    assert ref.args.loss_type == "dapo" and ours.args.softgate_agg == "token-mean"
    _assert_parity(ref, ours, _batch(ref))


@pytest.mark.parametrize("delta", [1.5, 1.1], ids=["delta>1+eps_high", "delta<1+eps_high"])
def test_delta_two_sided_clip_equals_trl(tiny_dir: Path, tmp_path: Path, delta: float) -> None:
    ref = _trainer(GRPOTrainer, GRPOConfig, tiny_dir, tmp_path, loss_type="grpo", delta=delta)
    ours = _trainer(SoftGateGRPOTrainer, SoftGateGRPOConfig, tiny_dir, tmp_path, loss_type="grpo",
                    softgate_gate="clip", delta=delta)
    inputs = _batch(ref, seed=3)
    inputs["old_per_token_logps"][inputs["advantages"] < 0] -= 0.5  # ratios around e^0.5 where A < 0
    # The two-sided clip acts on this batch: some A < 0 token has r > delta (and TRL's loss moves with delta).
    r = torch.exp(_current_logp(ref, inputs) - inputs["old_per_token_logps"])
    hit = (r > max(delta, 1.28)) & (inputs["advantages"][:, None] < 0) & inputs["completion_mask"].bool()
    assert hit.any()
    plain = _trainer(GRPOTrainer, GRPOConfig, tiny_dir, tmp_path, loss_type="grpo")
    assert abs(_loss_and_grads(plain, inputs)[0] - _loss_and_grads(ref, inputs)[0]) > 1e-4
    _assert_parity(ref, ours, inputs)


def test_delta_with_a_smooth_gate_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="delta=1.5.*softgate_gate='erf'"):
        _config(tmp_path, softgate_gate="erf", delta=1.5)
    with pytest.raises(ValueError, match="delta"):
        _config(tmp_path, softgate_gate="clip", delta=0.9)


def test_config_gate_params_json(tmp_path: Path) -> None:
    cfg = _config(tmp_path, softgate_gate="student", softgate_gate_params='{"nu": 2.5}')
    assert cfg.softgate_gate_params == {"nu": 2.5} and cfg.softgate_gate_object().params["nu"] == 2.5


@pytest.mark.parametrize(("kw", "field"), [
    ({"softgate_gate": "nope"}, "softgate_gate"),
    ({"softgate_level": "word"}, "softgate_level"),
    ({"softgate_agg": "token-sum"}, "softgate_agg"),
    ({"softgate_tau_pos": -1.0}, "tau_pos"),
    ({"softgate_gate_params": "{nu: 2"}, "softgate_gate_params"),
    ({"softgate_gate": "erf", "softgate_gate_params": {"nu": 2.0}}, "nu"),
    ({"softgate_log_ratio_bound": 0.0}, "softgate_log_ratio_bound"),
])
def test_config_errors_name_the_field(tmp_path: Path, kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        _config(tmp_path, **kw)


def test_entropy_bonus_is_rejected(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="entropy_coef"):
        _trainer(SoftGateGRPOTrainer, SoftGateGRPOConfig, tiny_dir, tmp_path, entropy_coef=0.01)


def test_inert_rule_is_trls(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """TRL computes old log-probs when gradient_accumulation_steps % (steps_per_generation * num_iterations) != 0
    or with vLLM importance-sampling correction; the warning follows exactly that."""
    # 3 % (2 * 1) != 0: a generation batch spans two optimizer steps, TRL keeps old log-probs, the gate acts.
    spans = _config(tmp_path, gradient_accumulation_steps=3, steps_per_generation=2, num_iterations=1)
    # vLLM without the importance-sampling correction: TRL takes old = current (r = 1), the gate is inert.
    vllm = _config(tmp_path, use_vllm=True, vllm_importance_sampling_correction=False)
    vllm_is = _config(tmp_path, use_vllm=True, vllm_importance_sampling_correction=True)
    with caplog.at_level("WARNING", logger="softgate.integrations.trl"):
        assert not warn_if_gate_is_inert(spans) and "inert" not in caplog.text
        assert not gate_is_inert(vllm_is)
        assert warn_if_gate_is_inert(vllm) and gate_is_inert(vllm)
    assert "inert" in caplog.text and "vllm_importance_sampling_correction" in caplog.text


def test_no_false_warning_when_a_generation_spans_steps(tiny_dir: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="softgate.integrations.trl"):
        trainer = _trainer(SoftGateGRPOTrainer, SoftGateGRPOConfig, tiny_dir, tmp_path, num_iterations=1,
                           gradient_accumulation_steps=3, steps_per_generation=2)
    assert not trainer.gate_is_inert() and "inert" not in caplog.text


def test_warns_when_the_gate_is_inert(tiny_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="softgate.integrations.trl"):
        on_policy = _trainer(SoftGateGRPOTrainer, SoftGateGRPOConfig, tiny_dir, tmp_path, num_iterations=1)
    assert on_policy.gate_is_inert() and "inert" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="softgate.integrations.trl"):
        reused = _trainer(SoftGateGRPOTrainer, SoftGateGRPOConfig, tiny_dir, tmp_path, num_iterations=2)
    assert not reused.gate_is_inert() and "inert" not in caplog.text


def test_plain_grpo_config_is_rejected(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="SoftGateGRPOConfig"):
        _trainer(SoftGateGRPOTrainer, GRPOConfig, tiny_dir, tmp_path)


def test_trl_version_range() -> None:
    check_trl_version("1.16.0")
    check_trl_version("1.16.9")
    for bad in ("1.15.2", "1.17.0", "2.0.0"):
        with pytest.raises(ImportError, match="pip install 'softgate\\[trl\\]'"):
            check_trl_version(bad)


# ------------------------------------------------------------------------------------------------------------
# End to end: GRPOTrainer steps on CPU
# ------------------------------------------------------------------------------------------------------------


def _e2e_model_dir(tiny_dir: Path) -> Path:
    """The embedded tiny model when it is shipped, else the random tiny model of this module."""
    try:
        from softgate.modeling import embedded_path

        return embedded_path("tiny")
    except (FileNotFoundError, ValueError, ImportError):
        return tiny_dir


def _train(cls: type, config_cls: type, model_dir: Path, out: Path, **kw: Any) -> Any:
    from transformers import AutoTokenizer

    args = config_cls(
        output_dir=str(out), per_device_train_batch_size=4, num_generations=4, max_completion_length=6,
        max_steps=2, num_iterations=2, learning_rate=5e-3, bf16=False, use_cpu=True, report_to=[],
        save_strategy="no", logging_steps=1, seed=0, **kw,
    )
    dataset = Dataset.from_dict({"prompt": ["Ann has 3 apples.", "Bob has 5 pears."] * 4})
    torch.manual_seed(0)
    trainer = cls(model=str(model_dir), reward_funcs=_length_reward, args=args, train_dataset=dataset,
                  processing_class=AutoTokenizer.from_pretrained(model_dir))
    trainer.train()
    return trainer


@pytest.mark.slow
def test_end_to_end_erf_gate(tiny_dir: Path, tmp_path: Path) -> None:
    model_dir = _e2e_model_dir(tiny_dir)
    from transformers import AutoModelForCausalLM

    before = {n: p.detach().clone() for n, p in AutoModelForCausalLM.from_pretrained(model_dir).named_parameters()}
    trainer = _train(SoftGateGRPOTrainer, SoftGateGRPOConfig, model_dir, tmp_path / "erf", softgate_gate="erf",
                     softgate_tau_pos=10.0, softgate_tau_neg=12.0)
    logs = [h for h in trainer.state.log_history if "gate/eur" in h]
    assert len(logs) == 2
    # Step 1 is the first pass over fresh rollouts: r = 1 up to float32 round-off between TRL's two forward
    # passes, so EUR = 1. Step 2 reuses them after one update (num_iterations = 2): the ratios have moved and
    # the erf gate (tau 10/12) damps the tokens that moved.
    assert logs[0]["gate/eur"] == pytest.approx(1.0, abs=1e-9)
    assert logs[0]["gate/ratio_min"] == pytest.approx(1.0, abs=1e-5)
    assert logs[0]["gate/ratio_max"] == pytest.approx(1.0, abs=1e-5)
    assert max(logs[1]["gate/ratio_max"] - 1.0, 1.0 - logs[1]["gate/ratio_min"]) > 1e-3
    assert logs[1]["gate/eur"] < 1.0 - 1e-6
    assert all(math.isfinite(h["loss"]) for h in logs)
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach().cpu(), before[n])]
    assert changed, "no parameter moved in two optimizer steps"


@pytest.mark.slow
def test_end_to_end_sigmoid_matches_trl_sapo(tiny_dir: Path, tmp_path: Path) -> None:
    """Two full TRL steps (generation, rewards, two iterations) give the same weights with either trainer."""
    model_dir = _e2e_model_dir(tiny_dir)
    ref = _train(GRPOTrainer, GRPOConfig, model_dir, tmp_path / "trl", loss_type="sapo",
                 sapo_temperature_pos=10.0, sapo_temperature_neg=12.0)
    ours = _train(SoftGateGRPOTrainer, SoftGateGRPOConfig, model_dir, tmp_path / "softgate",
                  softgate_gate="sigmoid", loss_type="sapo", softgate_tau_pos=10.0, softgate_tau_neg=12.0)
    for (name, p_ref), (_, p_ours) in zip(ref.model.named_parameters(), ours.model.named_parameters(), strict=True):
        torch.testing.assert_close(p_ours, p_ref, atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")
    losses_ref = [h["loss"] for h in ref.state.log_history if "loss" in h]
    losses_ours = [h["loss"] for h in ours.state.log_history if "loss" in h]
    assert losses_ours == pytest.approx(losses_ref, abs=1e-6)


# ------------------------------------------------------------------------------------------------------------
# The documented example stays in step with the code
# ------------------------------------------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_trl_example_script_uses_real_names() -> None:
    """The script in examples/trl_accelerate.md parses, imports names that exist, and passes only real
    SoftGateGRPOConfig fields (a renamed TRL/transformers argument would otherwise go unnoticed)."""
    import ast
    import dataclasses
    import importlib
    import re

    text = (EXAMPLES / "trl_accelerate.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    tree = ast.parse(blocks[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("softgate"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "SoftGateGRPOConfig"]
    assert len(calls) == 1
    fields = {f.name for f in dataclasses.fields(SoftGateGRPOConfig)}
    used = {kw.arg for kw in calls[0].keywords}
    assert used <= fields, f"not SoftGateGRPOConfig fields: {sorted(used - fields)}"
    assert {"softgate_gate", "softgate_tau_pos", "softgate_tau_neg", "num_iterations"} <= used


@pytest.mark.parametrize(("name", "stage"), [("deepspeed_zero2.yaml", 2), ("deepspeed_zero3.yaml", 3)])
def test_deepspeed_configs_load_in_accelerate(name: str, stage: int) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(EXAMPLES / name))
    assert str(config.distributed_type).endswith("DEEPSPEED")
    assert config.deepspeed_config["zero_stage"] == stage
    assert config.num_processes == 8 and config.mixed_precision == "bf16"
