"""Sampling completions from the current policy: Hugging Face ``generate`` (default) or vLLM (optional, GPU).

A rollout batch holds N = prompts x G sequences laid out as [left-padded prompt | right-padded completion], so
that every completion starts at the same column P and the trainer's forward pass only needs the last T logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from softgate.generation import policy_generate_kwargs, use_clean_generation_config


@dataclass
class Rollout:
    """One batch of sampled completions. N = number of prompts x G, P = padded prompt length, T = completion length.

    Fields:
        input_ids:       [N, P + T]  prompt (left-padded) followed by completion (right-padded)
        attention_mask:  [N, P + T]  1 for real tokens (prompt and completion up to and including EOS)
        completion_mask: [N, T] bool True for completion tokens that count (up to and including the first EOS)
        truncated:       [N] bool    True when the completion hit max_new_tokens without EOS
        group_ids:       [N] long    index of the prompt each completion answers (0..prompts-1)
        completions:     N decoded completion texts (special tokens removed)
    """

    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    truncated: Tensor
    group_ids: Tensor
    completions: list[str]

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1] - self.completion_mask.shape[1]

    @property
    def completion_lengths(self) -> Tensor:
        return self.completion_mask.sum(-1)


class Sampler(Protocol):
    def sample(self, prompts: list[str], num_generations: int, *, temperature: float, top_p: float,
               max_new_tokens: int) -> Rollout: ...


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding, as ``generate`` uses them: [N, L] -> [N, L]."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def cache_kwarg(model) -> str:
    """transformers >= 5.24 names the KV-cache argument ``cache``; earlier versions ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def completion_mask_from_ids(completion_ids: Tensor, eos_token_ids: list[int]) -> tuple[Tensor, Tensor]:
    """Mask of tokens up to and including the first EOS, and which rows never produced EOS.

    Shapes: completion_ids [N, T] -> (mask [N, T] bool, truncated [N] bool)
    """
    is_eos = torch.isin(completion_ids, torch.tensor(eos_token_ids, device=completion_ids.device))
    # Count of EOS strictly before each position: a token counts while no EOS came before it.
    eos_before = is_eos.long().cumsum(-1) - is_eos.long()
    mask = eos_before == 0
    truncated = ~is_eos.any(-1)
    return mask, truncated


def eos_token_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    if ids is None:
        ids = tokenizer.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids)
    if not ids:
        raise ValueError("the tokenizer and generation config define no EOS token; generation could never stop")
    return ids


class HFSampler:
    """Batched sampling with ``model.generate`` and its KV cache.

    With ``shared_prompt`` (and all sequences in one call), each distinct prompt is prefilled once and its cache
    repeated for its G samples, instead of prefilling the same prompt G times; the sampled tokens are the same.
    """

    def __init__(self, model, tokenizer, *, batch_size: int | None = None, shared_prompt: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        use_clean_generation_config(model)  # the checkpoint's penalties etc. would make samples differ from pi_old
        self.batch_size = batch_size  # max sequences per generate call (None = all at once)
        self.shared_prompt = shared_prompt
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    @torch.no_grad()
    def sample(self, prompts: list[str], num_generations: int, *, temperature: float, top_p: float = 1.0,
               max_new_tokens: int = 64, do_sample: bool = True) -> Rollout:
        tok = self.tokenizer
        tok.padding_side = "left"
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        device = next(self.model.parameters()).device
        unique_ids, unique_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)  # [prompts, P]
        prompt_ids = unique_ids.repeat_interleave(num_generations, 0)  # [N, P]
        prompt_mask = unique_mask.repeat_interleave(num_generations, 0)
        n = prompt_ids.shape[0]
        chunk = self.batch_size or n
        was_training = self.model.training
        self.model.eval()
        prefilled = {}
        if self.shared_prompt and chunk == n and num_generations > 1 and prompt_ids.shape[1] > 1:
            prefilled = _prefill_cache(self.model, unique_ids, unique_mask, num_generations)
        pieces = []
        for start in range(0, n, chunk):
            out = self.model.generate(
                input_ids=prompt_ids[start:start + chunk],
                attention_mask=prompt_mask[start:start + chunk],
                **prefilled,
                **policy_generate_kwargs(do_sample=do_sample, temperature=temperature, top_p=top_p,
                                         max_new_tokens=max_new_tokens, eos_token_ids=self.eos_ids,
                                         pad_token_id=self.pad_id),
            )
            pieces.append(out[:, prompt_ids.shape[1]:])
        self.model.train(was_training)
        width = max(p.shape[1] for p in pieces)
        completion_ids = torch.cat(
            [torch.nn.functional.pad(p, (0, width - p.shape[1]), value=self.pad_id) for p in pieces]
        )
        return assemble_rollout(prompt_ids, prompt_mask, completion_ids, self.eos_ids, self.pad_id, tok,
                         num_generations)


def _prefill_cache(model, prompt_ids: Tensor, prompt_mask: Tensor, repeats: int) -> dict:
    """KV cache of all prompt tokens but the last, computed once per distinct prompt and repeated ``repeats`` times
    (``generate`` then feeds the last prompt token itself and samples from there)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    model(input_ids=prompt_ids[:, :-1], attention_mask=prompt_mask[:, :-1],
          position_ids=position_ids_from_mask(prompt_mask)[:, :-1], use_cache=True, logits_to_keep=1,
          **{cache_kwarg(model): cache})
    cache.batch_repeat_interleave(repeats)
    return {cache_kwarg(model): cache}


def assemble_rollout(prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, eos_ids: list[int], pad_id: int,
              tokenizer, num_generations: int) -> Rollout:
    completion_mask, truncated = completion_mask_from_ids(completion_ids, eos_ids)
    completion_ids = completion_ids.masked_fill(~completion_mask, pad_id)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    n = prompt_ids.shape[0]
    return Rollout(
        input_ids=torch.cat([prompt_ids, completion_ids], 1),
        attention_mask=torch.cat([prompt_mask, completion_mask.long()], 1),
        completion_mask=completion_mask,
        truncated=truncated,
        group_ids=torch.arange(n, device=prompt_ids.device) // num_generations,
        completions=texts,
    )


def make_sampler(backend: str, model, tokenizer, *, shared_prompt: bool = True) -> Sampler:
    match backend:
        case "hf":
            return HFSampler(model, tokenizer, shared_prompt=shared_prompt)
        case "vllm":
            from softgate.vllm_sampler import VLLMSampler

            return VLLMSampler(model, tokenizer)
    raise ValueError(f"rollout.backend: unknown backend {backend!r}; choose 'hf' or 'vllm'")
