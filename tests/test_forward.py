"""The shared-prompt forward pass equals the full pass: log-probs, entropies and parameter gradients."""

import pytest
import torch

from softgate.forward import completion_logprobs
from softgate.modeling import load_model_and_tokenizer
from softgate.rollout import HFSampler


@pytest.fixture(scope="module")
def model_and_rollout():
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer("embedded:tiny")
    prompts = ["Question: Ann has 3 apples and buys 5 more. How many apples does Ann have now?\nAnswer:\n",
               "Question: Bob has 7 pens and loses 2. How many pens does Bob have?\nAnswer:\n",
               "Question: Eve has 4 cups.\nAnswer:\n"]  # different lengths: left padding in the prompt part
    rollout = HFSampler(model, tokenizer).sample(prompts, 4, temperature=1.0, max_new_tokens=16)
    # float64, although Llama's RMSNorm computes in float32 whatever the input dtype: values then agree to ~1e-15
    # and gradients to float32 rounding (~1e-7 relative), which is the tolerance below.
    return model.double(), rollout


def grads_and_values(model, rollout, rows, group_ids):
    model.zero_grad(set_to_none=True)
    T = rollout.completion_mask.shape[1]
    mask = rollout.completion_mask[rows]
    logp, entropy = completion_logprobs(model, rollout.input_ids[rows], rollout.attention_mask[rows], T,
                                        temperature=0.8, with_entropy=True, group_ids=group_ids)
    weights = torch.linspace(-1, 1, mask.numel(), dtype=torch.float64).view_as(mask)
    ((logp * weights).masked_fill(~mask, 0).sum() + (entropy * mask).sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach().masked_fill(~mask, 0), entropy.detach().masked_fill(~mask, 0), grads


@pytest.mark.parametrize("rows", [slice(None), [1, 2, 5, 6, 11]], ids=["whole-groups", "partial-groups"])
def test_shared_prompt_pass_equals_full_pass(model_and_rollout, rows):
    model, rollout = model_and_rollout
    rows = torch.arange(rollout.input_ids.shape[0])[rows]
    full = grads_and_values(model, rollout, rows, None)
    shared = grads_and_values(model, rollout, rows, rollout.group_ids[rows])
    torch.testing.assert_close(shared[0], full[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(shared[1], full[1], rtol=1e-10, atol=1e-10)
    assert shared[2].keys() == full[2].keys()
    for name, g in full[2].items():
        assert (shared[2][name] - g).norm() <= 1e-6 * g.norm(), name
    assert any(g.abs().max() > 1e-3 for g in full[2].values())


def test_group_ids_must_mark_identical_prompts(model_and_rollout):
    """Sanity of the test itself: mislabelled groups give different log-probs (the shared path is not a no-op)."""
    model, rollout = model_and_rollout
    T = rollout.completion_mask.shape[1]
    with torch.no_grad():
        full, _ = completion_logprobs(model, rollout.input_ids, rollout.attention_mask, T)
        wrong, _ = completion_logprobs(model, rollout.input_ids, rollout.attention_mask, T,
                                       group_ids=torch.zeros_like(rollout.group_ids))
    mask = rollout.completion_mask
    assert not torch.allclose(full[mask], wrong[mask], atol=1e-3)
