"""The vLLM sampler's pieces that run without vLLM: inputs as token ids, the policy's sampling parameters, the
weight stream and the Rollout assembly. The engine itself needs a GPU and is exercised by benchmarks/gpu_check.py."""

from __future__ import annotations

import pytest
import torch

from softgate.tokenizer import build_tokenizer
from softgate.vllm_sampler import VLLMSampler, completions_to_rollout, prompt_inputs, sampling_kwargs


def test_prompts_are_token_ids_without_a_second_bos() -> None:
    tok = build_tokenizer()
    text = tok.bos_token + " what is 2 plus 3 ?"
    (row,) = prompt_inputs(tok, [text])
    ids = row["prompt_token_ids"]
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.bos_token_id) == 1


def test_sampling_parameters_are_the_policy_and_seeded() -> None:
    kw = sampling_kwargs(num_generations=8, temperature=0.9, top_p=0.95, max_new_tokens=32, eos_ids=[2, 7], seed=11)
    assert kw["seed"] == 11 and kw["n"] == 8 and kw["max_tokens"] == 32 and kw["stop_token_ids"] == [2, 7]
    # Everything that would change the distribution away from softmax(logits / T) with top-p is off.
    assert (kw["top_k"], kw["min_p"], kw["repetition_penalty"]) == (-1, 0.0, 1.0)


def test_completions_assemble_like_the_hf_sampler() -> None:
    tok = build_tokenizer()
    eos, pad = tok.eos_token_id, tok.pad_token_id
    rollout = completions_to_rollout(tok, [[5, 6, 7], [8]], [[9, eos], [10, 11, 12], [13, 16, 17], [14, eos]],
                                     num_generations=2, eos_ids=[eos], pad_id=pad, device=torch.device("cpu"))
    assert rollout.input_ids.shape == (4, 3 + 3)
    assert rollout.input_ids[2].tolist()[:3] == [pad, pad, 8]  # prompts left-padded
    # Up to and including the first EOS; rows without EOS ran to max_new_tokens (vLLM returns no padding).
    assert rollout.completion_mask.tolist() == [[True, True, False], [True, True, True], [True, True, True],
                                                [True, True, False]]
    assert rollout.truncated.tolist() == [False, True, True, False]
    assert rollout.group_ids.tolist() == [0, 0, 1, 1]


def test_without_vllm_the_error_names_the_install() -> None:
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'softgate\[vllm\]'"):
            VLLMSampler(object(), build_tokenizer())
    else:
        pytest.skip("vLLM is installed: the engine is checked by benchmarks/gpu_check.py")
