"""LoRA through peft, in one place: the adapter settings (``peft_config``; the native engine wraps with them in
``add_lora``, TRL's trainers in the trl engine and ``softgate sft`` are given them and wrap alike), the base model
without its adapter (the KL reference, no second copy), an adapter checkpoint's files, loading them back
bit-exactly, and merging for export.

peft is an optional dependency (``pip install 'softgate[lora]'``), imported only when LoRA is used. An adapted
model is a ``peft.PeftModel``: ``save_pretrained`` writes the adapter only (``adapter_config.json`` +
``adapter_model.safetensors``), a folder that peft's ``AutoPeftModelForCausalLM.from_pretrained`` loads on top of
its base; ``merge_and_unload`` folds W + (alpha / r) B A into plain weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from softgate.config import LoraConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def require_peft() -> Any:
    """The peft module, or an ImportError saying how to install it (one line from the CLI)."""
    try:
        import peft
    except ImportError:
        raise ImportError("model.lora needs the peft package: pip install 'softgate[lora]' (or set model.lora: null "
                          "for full fine-tuning)") from None
    return peft


def peft_config(lora: LoraConfig) -> Any:
    """``model.lora`` as a ``peft.LoraConfig`` for a causal LM."""
    peft = require_peft()
    return peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                           target_modules=lora.target_modules, task_type="CAUSAL_LM")


def add_lora(model: Any, lora: LoraConfig) -> Any:
    """``model`` wrapped with fresh adapters (B = 0: the wrapped model computes exactly what ``model`` did); only
    the adapter parameters require gradients. A target name the model lacks is a ValueError naming it."""
    peft = require_peft()
    with naming_lora_targets():
        return peft.get_peft_model(model, peft_config(lora))


@contextlib.contextmanager
def naming_lora_targets() -> Iterator[None]:
    """peft's error for a target layer the model lacks, raised inside the block (by ``add_lora``, or by a TRL
    trainer given ``peft_config``), as a ValueError naming the config key."""
    try:
        yield
    except ValueError as err:
        if "Target modules" not in str(err):  # peft: "Target modules {'nope'} not found in the base model. ..."
            raise
        raise ValueError(f"model.lora.target_modules: {err}") from None


def is_adapted(model: Any) -> bool:
    """Whether ``model`` carries LoRA adapters (a peft model)."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


@contextlib.contextmanager
def without_adapter(model: Any) -> Iterator[Any]:
    """Inside the block an adapted model computes as its base model (the adapters are bypassed, not copied);
    a plain model is left as it is."""
    if is_adapted(model):
        with model.disable_adapter():
            yield model
    else:
        yield model


def trainable_parameters(model: Any) -> list:
    """The parameters the optimizer updates: all of a plain model, the adapters of an adapted one."""
    return list(trainable_named_parameters(model).values())


def trainable_named_parameters(model: Any) -> dict[str, Any]:
    """:func:`trainable_parameters` by name (a parameter tied to another, such as ``lm_head.weight`` to the
    embedding, once under its first name): everything of the model that training changes."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def is_adapter_dir(path: Path) -> bool:
    """Whether ``path`` holds a LoRA adapter (a checkpoint of an adapted run) rather than a whole model."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def load_adapter_weights(model: Any, path: Path) -> None:
    """Load the adapter of checkpoint ``path`` into the adapted ``model`` (bit-exact: safetensors, same dtype).
    Raises when the checkpoint's adapter does not fit the model's (another rank or other target layers)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = Path(path) / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint {path} has no {ADAPTER_WEIGHTS}")
    state_dict = load_file(str(weights))
    try:
        result = set_peft_model_state_dict(model, state_dict)
    except RuntimeError as err:  # a shape mismatch: another rank
        raise RuntimeError(f"checkpoint {path}: its adapter does not fit model.lora: {err}") from None
    expected = {k for k in model.state_dict() if "lora_" in k}
    missing = sorted(k for k in result.missing_keys if k in expected)
    if missing or result.unexpected_keys:
        raise RuntimeError(f"checkpoint {path}: its adapter does not fit model.lora: missing {missing[:4]}, "
                           f"unexpected {list(result.unexpected_keys)[:4]}")


def merge(model: Any) -> Any:
    """A plain transformers model whose weights are W + (alpha / r) B A: what the adapted ``model`` computes."""
    return model.merge_and_unload() if is_adapted(model) else model
