"""The shared-prompt forward pass equals the full pass (log-probs, entropies and parameter gradients), and neither
copies the [N, T, V] logits."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import softgate.logprobs
from softgate.forward import completion_logprobs
from softgate.modeling import load_model_and_tokenizer
from softgate.rollout import HFSampler, position_ids_from_mask


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


class VocabAllocations(TorchDispatchMode):
    """Records (dtype, numel, storage) of every tensor an op returns (views left out) whose last dimension is the
    vocabulary: the logits and anything of their size. Some ops re-wrap their input's storage (``_unsafe_view``),
    so new memory is told apart by the storage, not by the op."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.made = vocab, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[-1] == self.vocab:
                    self.made.append((t.dtype, t.numel(), t.untyped_storage().data_ptr()))
        return out


@pytest.fixture(scope="module")
def fresh_model_and_rollout():
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer("embedded:tiny")
    rollout = HFSampler(model, tokenizer).sample(["Question: Ann has 3 apples.\nAnswer:\n", "Question: Bob?\nAnswer:\n"],
                                                 3, temperature=1.0, max_new_tokens=10)
    return model, rollout


@pytest.mark.parametrize("shared", [False, True], ids=["full-pass", "shared-prompt"])
def test_low_precision_logits_are_never_upcast_whole(fresh_model_and_rollout, monkeypatch, shared):
    """bf16 logits go to the chunked log-softmax as they are: neither the forward nor the backward makes a float32
    tensor of the logits' size (the chunks are 4 rows here, so any whole-size float32 tensor is a copy)."""
    import copy

    model, rollout = fresh_model_and_rollout
    model = copy.deepcopy(model).to(torch.bfloat16)
    V = model.config.vocab_size
    monkeypatch.setattr(softgate.logprobs, "DEFAULT_CHUNK_ELEMENTS", 4 * V)
    N, T = rollout.completion_mask.shape
    with VocabAllocations(V) as seen:
        logp, entropy = completion_logprobs(model, rollout.input_ids, rollout.attention_mask, T, temperature=0.7,
                                            with_entropy=True, group_ids=rollout.group_ids if shared else None)
        (logp.sum() + entropy.sum()).backward()
    assert logp.dtype == torch.float32 and entropy.dtype == torch.float32
    assert any(dtype == torch.bfloat16 and n >= N * (T - 1) * V for dtype, n, _ in seen.made)  # the logits
    assert [n for dtype, n, _ in seen.made if dtype == torch.float32 and n >= N * T * V // 2] == []


@pytest.mark.parametrize("shared", [False, True], ids=["full-pass", "shared-prompt"])
def test_the_forward_pass_makes_no_copy_of_the_logits(fresh_model_and_rollout, monkeypatch, shared):
    """At temperature != 1 the only whole-size tensor of the forward pass is the model's own logits output (no
    scaled copy, no concatenation of the shared pass's two pieces); values equal the plain formula."""
    model, rollout = fresh_model_and_rollout
    V = model.config.vocab_size
    monkeypatch.setattr(softgate.logprobs, "DEFAULT_CHUNK_ELEMENTS", 4 * V)
    N, T = rollout.completion_mask.shape
    with torch.no_grad(), VocabAllocations(V) as seen:
        logp, _ = completion_logprobs(model, rollout.input_ids, rollout.attention_mask, T, temperature=0.7,
                                      group_ids=rollout.group_ids if shared else None)
    assert len({ptr for _, n, ptr in seen.made if n >= N * (T - 1) * V}) == 1
    with torch.no_grad():
        logits = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                       position_ids=position_ids_from_mask(rollout.attention_mask)).logits[:, -(T + 1):-1]
    expected = torch.log_softmax(logits / 0.7, -1).gather(-1, rollout.input_ids[:, -T:, None]).squeeze(-1)
    mask = rollout.completion_mask
    torch.testing.assert_close(logp[mask], expected[mask], rtol=1e-5, atol=1e-5)
