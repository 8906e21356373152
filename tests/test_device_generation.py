"""Device resolution, autocast, and sampling from exactly pi_old (a clean generation config)."""

from __future__ import annotations

import pytest
import torch

from softgate.device import autocast, check_compute_dtype, resolve_device
from softgate.generation import policy_generate_kwargs, shipped_overrides, use_clean_generation_config


def test_resolve_device_auto_and_explicit() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "CPU", ""):
        with pytest.raises(ValueError, match="unknown device"):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_missing_accelerator_is_an_error_not_a_cpu_fallback() -> None:
    with pytest.raises(ValueError, match="CUDA is not available.*cpu"):
        resolve_device("cuda:0")


def test_autocast_bf16_on_cpu_and_float32_is_no_region() -> None:
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with autocast(torch.device("cpu"), "bfloat16"):
        assert layer(x).dtype == torch.bfloat16
        assert torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu"), "float32"):
        assert layer(x).dtype == torch.float32
        assert not torch.is_autocast_enabled("cpu")
    assert layer.weight.dtype == torch.float32  # master weights untouched
    with pytest.raises(ValueError, match="float16' needs a GPU"):
        check_compute_dtype(torch.device("cpu"), "float16")


@pytest.fixture(scope="module")
def tiny_lm():
    from softgate.pretrain import PretrainConfig, build_model
    from softgate.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = build_model(tokenizer, PretrainConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))
    return model.eval(), tokenizer


def _sample(model, tokenizer, seed: int) -> torch.Tensor:
    ids = torch.tensor([[tokenizer.bos_token_id or 1, 5, 6, 7]])
    torch.manual_seed(seed)
    kwargs = policy_generate_kwargs(do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=24,
                                    eos_token_ids=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id)
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)


def test_shipped_repetition_penalty_is_ignored(tiny_lm) -> None:
    import copy

    model, tokenizer = tiny_lm
    clean = copy.deepcopy(model)
    use_clean_generation_config(clean, warn=False)
    shipped = copy.deepcopy(model)
    shipped.generation_config.repetition_penalty = 5.0
    shipped.generation_config.no_repeat_ngram_size = 2
    # Left as shipped, the penalty changes what is drawn under the same seed (so this test can fail)...
    differs = [not torch.equal(_sample(shipped, tokenizer, s), _sample(clean, tokenizer, s)) for s in range(4)]
    assert any(differs)
    # ...and after cleaning, the samples are exactly the clean model's, with one warning naming what was dropped.
    with pytest.warns(UserWarning, match=r"no_repeat_ngram_size=2, repetition_penalty=5\.0"):
        dropped = use_clean_generation_config(shipped)
    assert dropped == {"repetition_penalty": 5.0, "no_repeat_ngram_size": 2}
    for seed in range(4):
        assert torch.equal(_sample(shipped, tokenizer, seed), _sample(clean, tokenizer, seed))
    assert shipped_overrides(shipped.generation_config) == {}  # idempotent
    assert shipped.generation_config.eos_token_id == model.generation_config.eos_token_id  # token ids kept


def test_disable_dropout_makes_train_mode_deterministic() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from softgate.modeling import disable_dropout

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, attention_dropout=0.5))
    ids = torch.randint(0, 50, (2, 12))
    model.eval()
    reference = model(ids).logits
    model.train()
    assert not torch.allclose(model(ids).logits, reference)  # dropout on: train mode differs (test can fail)
    disable_dropout(model)
    assert model.config.attention_dropout == 0.0
    assert torch.equal(model(ids).logits, reference)


def test_output_settings_are_not_distribution_changes() -> None:
    from transformers import GenerationConfig

    shipped = GenerationConfig(output_attentions=False, output_hidden_states=False, return_dict_in_generate=True,
                               temperature=0.6, top_p=0.9, min_p=0.05)
    assert shipped_overrides(shipped) == {"min_p": 0.05}  # temperature/top_p are set by softgate on every call
