"""Sampling: EOS masks, layout of a rollout batch, and shared-prompt prefill giving the very same samples."""

import pytest
import torch

from softgate.modeling import load_model_and_tokenizer
from softgate.rollout import HFSampler, completion_mask_from_ids, position_ids_from_mask


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 5, 5, 5, 5], [2, 9, 9, 9, 9]])
    mask, truncated = completion_mask_from_ids(ids, eos_token_ids=[2])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return load_model_and_tokenizer("embedded:tiny")


def test_shared_prompt_prefill_samples_the_same_tokens(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = ["Question: Ann has 3 apples and buys 5 more. How many apples does Ann have now?\nAnswer:\n",
               "Question: Eve has 4 cups.\nAnswer:\n"]
    out = {}
    for shared in (False, True):
        torch.manual_seed(7)
        out[shared] = HFSampler(model, tokenizer, shared_prompt=shared).sample(prompts, 4, temperature=1.0,
                                                                               max_new_tokens=20)
    assert torch.equal(out[True].input_ids, out[False].input_ids)
    assert torch.equal(out[True].completion_mask, out[False].completion_mask)
    assert out[True].completions == out[False].completions


def test_rollout_layout(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    torch.manual_seed(0)
    rollout = HFSampler(model, tokenizer).sample(["Question: Bob has 7 pens.\nAnswer:\n"] * 3, 2, temperature=1.0,
                                                 max_new_tokens=16)
    N, T = rollout.completion_mask.shape
    assert N == 6 and rollout.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert rollout.input_ids.shape == (6, rollout.prompt_len + T)
    assert torch.equal(rollout.attention_mask[:, rollout.prompt_len:].bool(), rollout.completion_mask)
    assert len(rollout.completions) == 6
    assert rollout.completion_lengths.tolist() == rollout.completion_mask.sum(-1).tolist()


def test_vllm_backend_without_vllm_says_how_to_install(model_and_tokenizer):
    import importlib.util

    from softgate.rollout import make_sampler

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here; this checks the message given without it")
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ImportError, match=r"pip install 'softgate\[vllm\]'"):
        make_sampler("vllm", model, tokenizer)
    with pytest.raises(ValueError, match="rollout.backend"):
        make_sampler("jax", model, tokenizer)
