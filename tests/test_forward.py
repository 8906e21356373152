"""The shared-prompt forward pass equals the full pass (log-probs, entropies and parameter gradients), and neither
copies the [N, T, V] logits; the hidden-state path (``impl="hidden"``) equals the logits path and never makes a
vocabulary-sized tensor; ``auto`` picks by vocabulary size and LM head; the trainer runs on the hidden path."""

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


def grads_and_values(model, rollout, rows, group_ids, impl="logits"):
    model.zero_grad(set_to_none=True)
    T = rollout.completion_mask.shape[1]
    mask = rollout.completion_mask[rows]
    logp, entropy = completion_logprobs(model, rollout.input_ids[rows], rollout.attention_mask[rows], T,
                                        temperature=0.8, with_entropy=True, group_ids=group_ids, impl=impl)
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


# --------------------------------------------------------------------------------------------------------------
# The hidden-state path
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 8 rows x 64 vocabulary entries: the tiny model's 310-entry vocabulary spans 5 tiles (the last
    one partial), and a rollout's rows several row tiles."""
    monkeypatch.setattr(softgate.logprobs, "DEFAULT_VOCAB_TILE", 64)
    monkeypatch.setattr(softgate.logprobs, "DEFAULT_CHUNK_ELEMENTS", 8 * 64)


# float32 entropies: the logits path takes H = lse - E_p[x], which loses ~2e-5 to cancellation on near-certain
# tokens (|x| ~ 20); the hidden path's H = log S - A / S (module docstring of softgate.logprobs) is ~10x closer to
# the float64 value. Hence the looser entropy tolerance, set by the logits path's error.
@pytest.mark.parametrize("dtype, vtol, etol, gtol", [(torch.float64, 1e-10, 1e-10, 1e-6),
                                                     (torch.float32, 2e-5, 5e-5, 2e-4)], ids=["float64", "float32"])
@pytest.mark.parametrize("shared", [False, True], ids=["full-pass", "shared-prompt"])
def test_hidden_path_equals_logits_path(model_and_rollout, small_tiles, dtype, vtol, etol, gtol, shared):
    """Log-probs, entropies (at temperature 0.8) and every parameter gradient of an objective that weights both
    are those of the logits path. float64: Llama's RMSNorm computes in float32, hence gradients to ~1e-7 relative."""
    import copy

    model, rollout = model_and_rollout
    model = copy.deepcopy(model).to(dtype)
    rows = torch.arange(rollout.input_ids.shape[0])
    group_ids = rollout.group_ids if shared else None
    want = grads_and_values(model, rollout, rows, group_ids, impl="logits")
    got = grads_and_values(model, rollout, rows, group_ids, impl="hidden")
    assert got[0].dtype == want[0].dtype == torch.promote_types(dtype, torch.float32)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=vtol)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=etol)
    assert got[2].keys() == want[2].keys() and "model.embed_tokens.weight" in want[2]  # the tied LM head
    for name, g in want[2].items():
        assert (got[2][name] - g).norm() <= gtol * g.norm(), name


def test_hidden_path_under_bf16_autocast_follows_the_lm_head(fresh_model_and_rollout):
    """Under bf16 autocast the tiles' matmul runs in bf16 as the LM head's does: the two paths then agree to bf16
    rounding of the logits, return float32 log-probs, and give the float32 parameters nearly the same gradient."""
    model, rollout = fresh_model_and_rollout
    T, mask = rollout.completion_mask.shape[1], rollout.completion_mask
    out, grads = {}, {}
    for impl in ("logits", "hidden"):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logp, _ = completion_logprobs(model, rollout.input_ids, rollout.attention_mask, T, impl=impl,
                                          temperature=0.7, group_ids=rollout.group_ids)
        logp[mask].sum().backward()
        out[impl] = logp.detach()[mask]
        grads[impl] = torch.cat([p.grad.flatten() for p in model.parameters()])
    with torch.no_grad():
        fp32, _ = completion_logprobs(model, rollout.input_ids, rollout.attention_mask, T, impl="hidden",
                                      temperature=0.7)
    assert out["hidden"].dtype == torch.float32 and grads["hidden"].dtype == torch.float32
    torch.testing.assert_close(out["hidden"], out["logits"], rtol=0, atol=0.05)
    assert not torch.equal(out["hidden"], fp32[mask])  # autocast did change the numerics
    cosine = torch.nn.functional.cosine_similarity(grads["hidden"], grads["logits"], dim=0)
    assert cosine > 0.999


@pytest.mark.parametrize("shared", [False, True], ids=["full-pass", "shared-prompt"])
def test_hidden_path_makes_no_vocabulary_sized_tensor(fresh_model_and_rollout, small_tiles, shared):
    """Forward and backward of the hidden path: no tensor whose last dimension is the vocabulary is ever made."""
    model, rollout = fresh_model_and_rollout
    V = model.config.vocab_size
    T = rollout.completion_mask.shape[1]
    model.zero_grad(set_to_none=True)
    with VocabAllocations(V) as seen:
        logp, entropy = completion_logprobs(model, rollout.input_ids, rollout.attention_mask, T, temperature=0.7,
                                            with_entropy=True, impl="hidden",
                                            group_ids=rollout.group_ids if shared else None)
        (logp.sum() + entropy.sum()).backward()
    assert seen.made == []
    assert model.get_output_embeddings().weight.grad.abs().max() > 0


def test_auto_picks_hidden_for_large_vocabularies_and_plain_heads(fresh_model_and_rollout, monkeypatch):
    import copy

    import softgate.forward as forward

    model, _ = fresh_model_and_rollout
    assert model.config.vocab_size < forward.HIDDEN_VOCAB_THRESHOLD
    assert forward.resolve_logprob_impl(model, "auto") == "logits"
    assert forward.resolve_logprob_impl(model, "hidden") == "hidden"
    monkeypatch.setattr(forward, "HIDDEN_VOCAB_THRESHOLD", model.config.vocab_size)
    assert forward.resolve_logprob_impl(model, "auto") == "hidden"

    capped = copy.deepcopy(model)
    capped.config.final_logit_softcapping = 30.0
    biased = copy.deepcopy(model)
    biased.lm_head.bias = torch.nn.Parameter(torch.zeros(model.config.vocab_size))
    for other, reason in ((capped, "final_logit_softcapping"), (biased, "bias")):
        assert forward.resolve_logprob_impl(other, "auto") == "logits"
        with pytest.raises(ValueError, match=reason):
            forward.resolve_logprob_impl(other, "hidden")
    with pytest.raises(ValueError, match="unknown logprob_impl"):
        forward.resolve_logprob_impl(model, "chunked")


@pytest.mark.slow
def test_trainer_runs_on_the_hidden_path(tmp_path, monkeypatch):
    """Two RL steps with logprob_impl=hidden, an entropy bonus (so the entropy gradient flows) and the shared prompt
    pass: every pass went through the hidden path and every on-policy update has r = 1 exactly."""
    import softgate.forward as forward
    from softgate.config import load_config
    from softgate.rundir import read_jsonl
    from softgate.train import train

    calls = []
    original = forward._hidden_scores
    monkeypatch.setattr(forward, "_hidden_scores", lambda *a, **k: calls.append(a[4]) or original(*a, **k))
    out = tmp_path / "run"
    train(load_config(None, [
        f"output_dir={out}", "steps=2", "rollout.prompts_per_step=2", "rollout.num_generations=4",
        "rollout.max_new_tokens=8", "algo.minibatches=2", "algo.micro_batch_size=4", "eval.size=0",
        "log.save_every=0", "log.progress=false", "model.threads=1", "model.logprob_impl=hidden",
        "loss.entropy_coef=0.01"]))
    metrics = read_jsonl(out / "metrics.jsonl")
    assert len(metrics) == 2 * 2 * 2
    on_policy = [m for m in metrics if m["policy/on_policy"]]
    assert len(on_policy) == 2
    assert all(m["gate/ratio_min"] == m["gate/ratio_max"] == 1.0 for m in on_policy)
    assert calls.count(True) == len(metrics) and calls.count(False) == 2 * 2  # one micro-batch per update; old logp


def test_a_checkpointed_model_uses_the_full_pass_in_no_grad_passes_too(fresh_model_and_rollout, monkeypatch):
    """With gradient checkpointing the training passes must use the full pass (no KV cache in checkpointed layers);
    the old log-probs (eval mode, no grad) then use it too, so that the on-policy update repeats their computation
    exactly (in bf16 the shared and the full pass differ by ~0.1 nats on SmolLM2-135M: r != 1 on-policy)."""
    import copy

    import softgate.forward as forward

    model, rollout = fresh_model_and_rollout
    model = copy.deepcopy(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    calls = []
    original = forward._shared_prompt_pass
    monkeypatch.setattr(forward, "_shared_prompt_pass", lambda *a, **k: calls.append(1) or original(*a, **k))
    T = rollout.completion_mask.shape[1]
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        old, _ = completion_logprobs(model, rollout.input_ids, rollout.attention_mask, T, group_ids=rollout.group_ids)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        new, _ = completion_logprobs(model, rollout.input_ids, rollout.attention_mask, T, group_ids=rollout.group_ids)
    assert calls == []
    assert torch.equal(old, new.detach())
    model.gradient_checkpointing_disable()
    with torch.no_grad():
        completion_logprobs(model, rollout.input_ids, rollout.attention_mask, T, group_ids=rollout.group_ids)
    assert calls == [1]  # without checkpointing the shared pass serves
