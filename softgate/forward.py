"""Forward passes of a causal LM over rollout sequences: per-token log-probs (and entropy) of the completion.

Two exact ways to run the model over the same tokens:

- ``completion_logprobs(..., group_ids=None)``: one pass over [prompt | completion] for every sequence; only the
  last T + 1 positions are scored (``logits_to_keep``).
- ``completion_logprobs(..., group_ids=g)``: the G completions of a prompt share it, so the prompt is run **once
  per group** (with gradient) and its key/value cache is indexed out to the group's rows; then only the completion
  tokens are run against that cache. Autograd sums the G rows' gradients into the shared prompt pass, so values
  and gradients are those of the full pass (tests check both), for about (P / G + T) / (P + T) of the tokens.

And two exact ways to score the completion positions (``impl``, the config's ``model.logprob_impl``):

- ``"logits"``: the model returns its [N, T, V] logits and :mod:`softgate.logprobs` reduces them chunk by chunk.
  The logits (and, in training, their gradient) exist in full once each.
- ``"hidden"``: the base model returns the last hidden state [N, T, H] and :func:`softgate.logprobs.hidden_logprobs`
  applies the LM head one tile of logits at a time, recomputing the tiles in the backward: no [N, T, V] tensor
  ever exists. Needs an LM head that is a plain linear layer without bias, softcapping or logit scaling.
- ``"auto"`` (the default): ``hidden`` when the vocabulary has at least ``HIDDEN_VOCAB_THRESHOLD`` entries and the
  head allows it, else ``logits``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import torch
from torch import Tensor

from softgate.choices import LOGPROB_IMPLS, LogprobImpl
from softgate.logprobs import hidden_logprobs, hidden_logprobs_and_entropy, logprobs_and_entropy, token_logprobs
from softgate.rollout import cache_kwarg, position_ids_from_mask

HIDDEN_VOCAB_THRESHOLD = 32_768
"""``auto`` scores from the hidden state from this vocabulary size on. The hidden path pays one extra LM-head matmul
(recomputing the tiles in the backward) to never hold the [N, T, V] logits and their gradient: measured on CPU at
H = 576 and 1,024 tokens, the head + log-softmax take 0.99x the logits path's time at V = 8,192 and 1.18x at
32,768, and at V = 151,936 0.6-0.9x the plain log-softmax's time for 1/20 of its memory (benchmarks/bench_loss.py).
From 32k entries on the logits are the largest activation of a training pass, worth a few percent of step time."""

# Config fields with which a model's logits are not ``hidden @ lm_head.weight.T`` (Gemma's softcapping, Cohere's
# logit scale, Granite's logits scaling): the hidden path would compute another distribution.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")

Run = Callable[..., Tensor]  # run(keep, **model inputs) -> [n, keep (or all positions if keep == 0), V or H]


def completion_logprobs(model, input_ids: Tensor, attention_mask: Tensor, completion_len: int, *,
                        temperature: float = 1.0, with_entropy: bool = False,
                        group_ids: Tensor | None = None, impl: LogprobImpl = "auto") -> tuple[Tensor, Tensor | None]:
    """Log-probs of the completion tokens under ``model`` (at the sampling temperature).

    ``group_ids`` marks rows whose prompt part is identical (the G samples of one prompt): with it the prompt is
    computed once per group. Rows with equal ids must have equal prompt ids and prompt mask. ``impl`` chooses how
    the positions are scored (module docstring); both give the same values and gradients.

    The logits go to :mod:`softgate.logprobs` as the model returned them (e.g. bf16) together with the
    temperature: it upcasts and scales them chunk by chunk, so no float32 or scaled copy of the [N, T, V] logits
    is ever made.

    Shapes:
        input_ids, attention_mask: [N, P + T]; group_ids: [N] or None
        returns logp [N, T] (float32, or float64 for a float64 model) and entropy [N, T] or None
    """
    T = completion_len
    if group_ids is not None and cache_is_dropped(model):
        _notice_full_pass()
        group_ids = None
    hidden = resolve_logprob_impl(model, impl) == "hidden"
    run = _hidden_run(model) if hidden else _logits_run(model)
    if group_ids is None:
        pieces = [_full_pass(run, input_ids, attention_mask, T)]
    else:
        pieces = _shared_prompt_pass(run, cache_kwarg(model), input_ids, attention_mask, T, group_ids)
    if hidden:  # [N, T, H] is small: one piece
        return _hidden_scores(model, torch.cat(pieces, dim=1), input_ids[:, -T:], temperature, with_entropy)
    targets = input_ids[:, -T:].split([piece.shape[1] for piece in pieces], dim=1)  # [N, t] per piece
    if with_entropy:
        scored = [logprobs_and_entropy(piece, ids, temperature=temperature) for piece, ids in zip(pieces, targets)]
        return torch.cat([lp for lp, _ in scored], dim=1), torch.cat([ent for _, ent in scored], dim=1)
    return torch.cat([token_logprobs(piece, ids, temperature=temperature) for piece, ids in zip(pieces, targets)],
                     dim=1), None


def resolve_logprob_impl(model, impl: LogprobImpl) -> str:
    """``"logits"`` or ``"hidden"`` for this model; ``"hidden"`` on a model whose head does not allow it is an
    error naming the reason."""
    if impl not in LOGPROB_IMPLS:
        raise ValueError(f"unknown logprob_impl {impl!r}; known: {', '.join(LOGPROB_IMPLS)}")
    if impl == "logits":
        return "logits"
    reason = hidden_path_unsupported(model)
    if impl == "hidden":
        if reason is not None:
            raise ValueError(f"model.logprob_impl=hidden: {reason}; use logits (or auto)")
        return "hidden"
    return "hidden" if reason is None and model.get_output_embeddings().out_features >= HIDDEN_VOCAB_THRESHOLD \
        else "logits"


def hidden_path_unsupported(model) -> str | None:
    """Why the logits of ``model`` are not ``base_model(...) @ lm_head.weight.T``, or None when they are."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        return "the model has no linear LM head (get_output_embeddings)"
    if head.bias is not None:
        return "the LM head has a bias"
    if getattr(model, "base_model", model) is model:
        return "the model has no separate base model to return hidden states"
    transforms = [k for k in _LOGIT_TRANSFORMS if getattr(model.config, k, None) not in (None, 1, 1.0)]
    if transforms:
        return f"the model transforms its logits ({', '.join(transforms)})"
    return None


def cache_is_dropped(model) -> bool:
    """True for a model with gradient checkpointing on: transformers keeps no KV cache inside checkpointed layers in
    training, so the shared prompt pass would score completion tokens without their prompt there. Every pass of
    such a model then uses the full pass (exact as well; the prompt is just run once per row) -- the no-grad passes
    too, so that the old log-probs come from the very computation the on-policy update repeats: in bf16 the two
    exact passes differ by rounding (~0.1 nats on SmolLM2-135M), which would make r != 1 on-policy."""
    # transformers 5.24 renamed is_gradient_checkpointing (now a deprecated alias) to is_activation_checkpointing.
    flag = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") \
        else "is_gradient_checkpointing"
    return bool(getattr(model, flag, False))


@functools.cache
def _notice_full_pass() -> None:
    print("softgate: gradient checkpointing keeps no KV cache in training passes; every log-prob pass uses the full "
          "pass instead of the shared prompt pass (old and new log-probs from the same computation)", file=sys.stderr)


def _logits_run(model) -> Run:
    return lambda keep, **inputs: model(**inputs, logits_to_keep=keep).logits  # keep = 0: every position


def _hidden_run(model) -> Run:
    base = model.base_model

    def run(keep: int, **inputs) -> Tensor:
        hidden = base(**inputs).last_hidden_state  # [n, L, H], after the final norm: what the LM head reads
        return hidden[:, -keep:] if keep else hidden

    return run


def _hidden_scores(model, hidden_NTH: Tensor, ids_NT: Tensor, temperature: float,
                   with_entropy: bool) -> tuple[Tensor, Tensor | None]:
    """The LM head and the log-softmax in tiles. Under autocast the head's matmul runs in the autocast dtype, as
    ``lm_head`` would; the softmax maths stay float32."""
    weight_VH = model.get_output_embeddings().weight
    device = hidden_NTH.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight_VH.dtype
    hidden_NTH, weight_VH = hidden_NTH.to(dtype), weight_VH.to(dtype)
    if with_entropy:
        return hidden_logprobs_and_entropy(hidden_NTH, weight_VH, ids_NT, temperature=temperature)
    return hidden_logprobs(hidden_NTH, weight_VH, ids_NT, temperature=temperature), None


def _full_pass(run: Run, input_ids: Tensor, attention_mask: Tensor, T: int) -> Tensor:
    out = run(T + 1, input_ids=input_ids, attention_mask=attention_mask,
              position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    # Position t predicts token t + 1: the T + 1 kept positions end one past the last completion token.
    return out[:, :-1]  # [N, T, V or H], a view


def _shared_prompt_pass(run: Run, cache_arg: str, input_ids: Tensor, attention_mask: Tensor, T: int,
                        group_ids: Tensor) -> list[Tensor]:
    """The completion positions' outputs in two pieces, [N, 1, D] (from the prompt pass) and [N, T - 1, D], left
    apart so that logits are never concatenated into one more [N, T, V] copy."""
    from transformers import DynamicCache

    P = input_ids.shape[1] - T
    groups, row_to_group = torch.unique(group_ids, return_inverse=True)  # row_to_group: [N] in 0..U-1
    # One representative row per group (the first one).
    first_row = torch.full((len(groups),), input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    first_row = first_row.scatter_reduce(0, row_to_group, torch.arange(len(row_to_group), device=input_ids.device),
                                         reduce="amin")
    positions = position_ids_from_mask(attention_mask)  # [N, P + T]
    cache = DynamicCache()
    prompt = run(1, input_ids=input_ids[first_row, :P], attention_mask=attention_mask[first_row, :P],
                 position_ids=positions[first_row, :P], use_cache=True, **{cache_arg: cache})
    first = prompt[row_to_group]  # [N, 1, D]: predicts completion token 0
    if T == 1:
        return [first]
    cache.batch_select_indices(row_to_group)  # differentiable indexing: the G rows share the prompt's K/V
    rest = run(0, input_ids=input_ids[:, P:P + T - 1], attention_mask=attention_mask[:, :P + T - 1],
               position_ids=positions[:, P:P + T - 1], use_cache=True, **{cache_arg: cache})
    return [first, rest]  # [N, 1, D] and [N, T - 1, D]
