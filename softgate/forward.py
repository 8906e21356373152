"""Forward passes of a causal LM over rollout sequences: per-token log-probs (and entropy) of the completion.

Only the last T + 1 positions' logits are computed (``logits_to_keep``): the prompt's logits are never needed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from softgate.logprobs import logprobs_and_entropy, token_logprobs
from softgate.rollout import position_ids_from_mask


def completion_logprobs(model, input_ids: Tensor, attention_mask: Tensor, completion_len: int, *,
                        temperature: float = 1.0, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """Log-probs of the completion tokens under ``model`` (at the sampling temperature).

    Shapes:
        input_ids, attention_mask: [N, P + T]
        returns logp [N, T] (float32) and entropy [N, T] or None
    """
    T = completion_len
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=T + 1,
        use_cache=False,
    )
    # logits[:, t] predicts token t + 1: the T + 1 kept positions end one past the last completion token.
    logits = out.logits[:, -(T + 1):-1, :].float()  # [N, T, V]
    if temperature != 1.0:
        logits = logits / temperature
    targets = input_ids[:, -T:]  # [N, T]
    if with_entropy:
        return logprobs_and_entropy(logits, targets)
    return token_logprobs(logits, targets), None
