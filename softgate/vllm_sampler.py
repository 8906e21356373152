"""Sampling with a colocated vLLM engine (GPU): the same Rollout as the Hugging Face sampler, drawn faster.

Follows TRL 1.16's colocate mode (``trl/generation/vllm_generation.py``): one in-process engine per trainer process
(``distributed_executor_backend="external_launcher"``, so that the engine's model lives in this process), the
policy's weights pushed before every rollout through the engine model's own ``load_weights``, and prompts passed
as token ids (``{"prompt_token_ids": ...}``), never as text, so that a chat template that already carries BOS does
not get a second one. Sampling is seeded per call: a resumed run draws the same completions.

vLLM cannot be installed on a CPU-only machine: every piece that does not need the engine (inputs, sampling
parameters, the weight stream, assembling the Rollout) is a plain function tested without it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from softgate.rollout import Rollout, assemble_rollout, eos_token_ids


def prompt_inputs(tokenizer, prompts: list[str]) -> list[dict[str, list[int]]]:
    """vLLM inputs as token ids, tokenized exactly as the Hugging Face sampler does (no special tokens added: the
    rendered prompt already holds what the chat template puts there)."""
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    return [{"prompt_token_ids": list(row)} for row in ids]


def sampling_kwargs(*, num_generations: int, temperature: float, top_p: float, max_new_tokens: int,
                    eos_ids: list[int], seed: int) -> dict[str, Any]:
    """``SamplingParams`` of the policy itself: softmax(logits / temperature), top-p, and nothing else
    (top_k = -1 and min_p = 0 turn those off; repetition penalty 1 is none), seeded."""
    return {"n": num_generations, "temperature": temperature, "top_p": top_p, "top_k": -1, "min_p": 0.0,
            "repetition_penalty": 1.0, "max_tokens": max_new_tokens, "stop_token_ids": list(eos_ids),
            "seed": seed, "skip_special_tokens": False}


def named_weights(model) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) pairs of the policy, detached, in the Hugging Face names that vLLM's model ``load_weights``
    maps onto its own (fused) layers. One pair at a time: no second full copy of the weights."""
    for name, tensor in model.state_dict().items():
        yield name, tensor.detach()


def completions_to_rollout(tokenizer, prompt_rows: list[list[int]], completion_rows: list[list[int]],
                           num_generations: int, eos_ids: list[int], pad_id: int, device: torch.device) -> Rollout:
    """Left-pad the prompts, right-pad the completions, and build the Rollout the trainer expects.

    Shapes: prompt_rows has one list per prompt; completion_rows ``num_generations`` lists per prompt, in order.
    """
    width_p = max(len(r) for r in prompt_rows)
    width_c = max(1, max(len(r) for r in completion_rows))
    prompt_ids = torch.full((len(prompt_rows), width_p), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(prompt_rows), width_p), dtype=torch.long)
    for i, row in enumerate(prompt_rows):
        if row:
            prompt_ids[i, width_p - len(row):] = torch.tensor(row)
            prompt_mask[i, width_p - len(row):] = 1
    completion_ids = torch.full((len(completion_rows), width_c), pad_id, dtype=torch.long)
    for i, row in enumerate(completion_rows):
        completion_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    prompt_ids = prompt_ids.repeat_interleave(num_generations, 0).to(device)
    prompt_mask = prompt_mask.repeat_interleave(num_generations, 0).to(device)
    return assemble_rollout(prompt_ids, prompt_mask, completion_ids.to(device), eos_ids, pad_id, tokenizer,
                            num_generations)


class VLLMSampler:
    """Colocated vLLM engine; ``sample`` pushes the current weights, then draws G completions per prompt."""

    def __init__(self, model, tokenizer, *, gpu_memory_utilization: float = 0.4, seed: int = 0,
                 max_model_len: int | None = None):
        try:
            import vllm
        except ImportError as err:
            raise ImportError("rollout.backend='vllm' needs vLLM: pip install 'softgate[vllm]' (GPU only). "
                              "Use rollout.backend=hf on CPU.") from err
        self.model, self.tokenizer, self._vllm = model, tokenizer, vllm
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        # external_launcher needs a torch.distributed rendezvous even for one process (as TRL sets up).
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "localhost"),
                           ("MASTER_PORT", "29533")):
            os.environ.setdefault(key, value)
        self.llm = vllm.LLM(model=model.name_or_path, dtype="bfloat16" if model.dtype == torch.float32 else
                            str(model.dtype).removeprefix("torch."), gpu_memory_utilization=gpu_memory_utilization,
                            distributed_executor_backend="external_launcher", seed=seed,
                            max_model_len=max_model_len, enable_prefix_caching=True)

    def sync_weights(self) -> None:
        """Push the policy's current weights into the engine (TRL's colocate path), then drop cached prefixes
        computed with the old weights."""
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        for name, tensor in named_weights(self.model):
            engine_model.load_weights([(name, tensor)])
        self.llm.reset_prefix_cache()

    @torch.no_grad()
    def sample(self, prompts: list[str], num_generations: int, *, temperature: float, top_p: float = 1.0,
               max_new_tokens: int = 64, seed: int = 0) -> Rollout:
        self.sync_weights()
        inputs = prompt_inputs(self.tokenizer, prompts)
        params = self._vllm.SamplingParams(**sampling_kwargs(
            num_generations=num_generations, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
            eos_ids=self.eos_ids, seed=seed))
        outputs = self.llm.generate(inputs, sampling_params=params, use_tqdm=False)
        completions = [list(c.token_ids) for out in outputs for c in out.outputs]
        device = next(self.model.parameters()).device
        return completions_to_rollout(self.tokenizer, [row["prompt_token_ids"] for row in inputs], completions,
                                      num_generations, self.eos_ids, self.pad_id, device)
