"""Forward passes of a causal LM over rollout sequences: per-token log-probs (and entropy) of the completion.

Two exact ways to get the same numbers:

- ``completion_logprobs(..., group_ids=None)``: one pass over [prompt | completion] for every sequence; only the
  last T + 1 positions' logits are computed (``logits_to_keep``).
- ``completion_logprobs(..., group_ids=g)``: the G completions of a prompt share it, so the prompt is run **once
  per group** (with gradient) and its key/value cache is indexed out to the group's rows; then only the completion
  tokens are run against that cache. Autograd sums the G rows' gradients into the shared prompt pass, so values
  and gradients are those of the full pass (tests check both), for about (P / G + T) / (P + T) of the tokens.
"""

from __future__ import annotations

import functools
import sys

import torch
from torch import Tensor

from softgate.logprobs import logprobs_and_entropy, token_logprobs
from softgate.rollout import cache_kwarg, position_ids_from_mask


def completion_logprobs(model, input_ids: Tensor, attention_mask: Tensor, completion_len: int, *,
                        temperature: float = 1.0, with_entropy: bool = False,
                        group_ids: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Log-probs of the completion tokens under ``model`` (at the sampling temperature).

    ``group_ids`` marks rows whose prompt part is identical (the G samples of one prompt): with it the prompt is
    computed once per group. Rows with equal ids must have equal prompt ids and prompt mask.

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
    if group_ids is None:
        pieces = [_full_pass_logits(model, input_ids, attention_mask, T)]
    else:
        pieces = _shared_prompt_logits(model, input_ids, attention_mask, T, group_ids)
    targets = input_ids[:, -T:].split([piece.shape[1] for piece in pieces], dim=1)  # [N, t] per piece
    if with_entropy:
        scored = [logprobs_and_entropy(piece, ids, temperature=temperature) for piece, ids in zip(pieces, targets)]
        return torch.cat([lp for lp, _ in scored], dim=1), torch.cat([ent for _, ent in scored], dim=1)
    return torch.cat([token_logprobs(piece, ids, temperature=temperature) for piece, ids in zip(pieces, targets)],
                     dim=1), None


def cache_is_dropped(model) -> bool:
    """True when transformers will drop the KV cache inside the layers: gradient checkpointing, in train mode, with
    gradients on. The shared prompt pass would then score completion tokens without their prompt, so the full pass
    is used instead (exact as well; the prompt is just run once per row)."""
    return bool(getattr(model, "is_gradient_checkpointing", False) and model.training and torch.is_grad_enabled())


@functools.cache
def _notice_full_pass() -> None:
    print("softgate: gradient checkpointing keeps no KV cache in training passes; those use the full pass "
          "(the shared prompt pass still serves the no-grad log-prob passes)", file=sys.stderr)


def _full_pass_logits(model, input_ids: Tensor, attention_mask: Tensor, T: int) -> Tensor:
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), logits_to_keep=T + 1, use_cache=False)
    # logits[:, t] predicts token t + 1: the T + 1 kept positions end one past the last completion token.
    return out.logits[:, -(T + 1):-1, :]  # [N, T, V], a view


def _shared_prompt_logits(model, input_ids: Tensor, attention_mask: Tensor, T: int,
                          group_ids: Tensor) -> list[Tensor]:
    """The completion logits in two pieces, [N, 1, V] (from the prompt pass) and [N, T - 1, V], left apart so
    that they are never concatenated into one more [N, T, V] copy."""
    from transformers import DynamicCache

    P = input_ids.shape[1] - T
    groups, row_to_group = torch.unique(group_ids, return_inverse=True)  # row_to_group: [N] in 0..U-1
    # One representative row per group (the first one).
    first_row = torch.full((len(groups),), input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    first_row = first_row.scatter_reduce(0, row_to_group, torch.arange(len(row_to_group), device=input_ids.device),
                                         reduce="amin")
    positions = position_ids_from_mask(attention_mask)  # [N, P + T]
    cache = DynamicCache()
    cache_arg = {cache_kwarg(model): cache}
    prompt = model(input_ids=input_ids[first_row, :P], attention_mask=attention_mask[first_row, :P],
                   position_ids=positions[first_row, :P], use_cache=True, logits_to_keep=1, **cache_arg)
    first_logits = prompt.logits[row_to_group, -1:, :]  # [N, 1, V]: predicts completion token 0
    if T == 1:
        return [first_logits]
    cache.batch_select_indices(row_to_group)  # differentiable indexing: the G rows share the prompt's K/V
    rest = model(input_ids=input_ids[:, P:P + T - 1], attention_mask=attention_mask[:, :P + T - 1],
                 position_ids=positions[:, P:P + T - 1], use_cache=True, **cache_arg)
    return [first_logits, rest.logits]  # [N, 1, V] and [N, T - 1, V]
