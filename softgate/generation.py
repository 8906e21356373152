"""Sampling exactly from pi_old: a generation config that holds only what the policy is.

The importance ratio r = pi / pi_old assumes the completions were drawn from pi_old, the distribution the log-prob
passes compute: softmax(logits / temperature), optionally top-p truncated. A checkpoint's
``generation_config.json`` often ships more (a repetition penalty, ``no_repeat_ngram_size``, ``min_p``, suppressed
tokens, ...), and transformers applies the model's generation config to every value a ``generate`` call leaves
unset, even when a fresh ``GenerationConfig`` is passed. So softgate replaces the model's generation config by a
clean one that keeps only the special-token ids, and passes the policy's own settings (do_sample, temperature,
top_p, top_k = 0, max_new_tokens, eos, pad) on every call. What a checkpoint shipped and would have changed the
distribution is named once in a warning.
"""

from __future__ import annotations

import warnings
from typing import Any

# Special-token ids describe the vocabulary, not the distribution: they are kept.
_KEPT = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
# Set by softgate on every generate call (the policy itself), or irrelevant to which tokens are drawn.
_HARMLESS = ("do_sample", "temperature", "top_p", "top_k", "max_length", "max_new_tokens", "use_cache",
             "cache_implementation", "transformers_version", "num_return_sequences")
_HARMLESS_PREFIXES = ("output_", "return_", "_")  # what generate returns, not what it draws


def shipped_overrides(generation_config: Any) -> dict[str, Any]:
    """Fields of a model's generation config that differ from transformers' defaults and would change the sampled
    distribution (everything except special-token ids and the settings softgate passes itself)."""
    from transformers import GenerationConfig

    if generation_config is None:
        return {}
    default = GenerationConfig().to_dict()
    shipped = generation_config.to_dict()
    return {key: value for key, value in shipped.items()
            if key not in _KEPT and key not in _HARMLESS and not key.startswith(_HARMLESS_PREFIXES)
            and value != default.get(key) and value is not None}


def use_clean_generation_config(model, *, warn: bool = True) -> dict[str, Any]:
    """Replace ``model.generation_config`` by one with only the special-token ids; return what was dropped.

    Idempotent: a second call finds nothing to drop. Checkpoints saved afterwards carry the clean config.
    """
    from transformers import GenerationConfig

    old = getattr(model, "generation_config", None)
    dropped = shipped_overrides(old)
    ids = {key: getattr(old, key, None) for key in _KEPT} if old is not None else {}
    model.generation_config = GenerationConfig(**{k: v for k, v in ids.items() if v is not None})
    if dropped and warn:
        listed = ", ".join(f"{key}={value!r}" for key, value in sorted(dropped.items()))
        warnings.warn(f"the checkpoint's generation_config.json sets {listed}; softgate ignores it so that "
                      "samples come from exactly the policy the log-probs describe (pi_old)", stacklevel=2)
    return dropped


def policy_generate_kwargs(*, do_sample: bool, temperature: float, top_p: float, max_new_tokens: int,
                           eos_token_ids: list[int], pad_token_id: int) -> dict[str, Any]:
    """The keyword arguments of one ``generate`` call that draws from softmax(logits / temperature), top-p
    truncated: top_k = 0 turns off transformers' default top-k of 50."""
    sampling = {"temperature": temperature, "top_p": top_p, "top_k": 0} if do_sample else \
        {"temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": do_sample, **sampling, "max_new_tokens": max_new_tokens, "eos_token_id": eos_token_ids,
            "pad_token_id": pad_token_id}
