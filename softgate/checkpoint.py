"""Atomic checkpoints: model + tokenizer (safetensors), optimizer, scheduler, RNG states, trainer state and, with
``algo.staleness``, the ring of lagged policy states (``policy_ring.pt``).

Each checkpoint is a Hugging Face folder: ``from_pretrained`` loads it (full fine-tuning: ``model.safetensors``;
LoRA: the adapter alone, ``adapter_model.safetensors``, which peft's ``AutoPeftModelForCausalLM`` loads on its
base, or ``softgate export RUN --merge`` turns into a plain model).

A checkpoint is written into ``checkpoints/.tmp-step_XXXXXX`` and renamed to ``checkpoints/step_XXXXXX`` only when
complete, so a run killed mid-write leaves no half checkpoint that resume could pick up.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softgate.lora import is_adapted, is_adapter_dir, load_adapter_weights
from softgate.rundir import RunDir

POLICY_RING_FILE = "policy_ring.pt"  # algo.staleness: the lagged policy states
# The training state beside the Hugging Face files of a checkpoint (what `softgate export` leaves out): the native
# engine's, then the trl engine's (transformers' Trainer: trainer state, arguments, AMP scaler, RNG states of each
# process; DeepSpeed's sharded state). Glob patterns.
OPTIMIZER, SCHEDULER, RNG, STATE = "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"
TRAINING_STATE = (OPTIMIZER, SCHEDULER, RNG, STATE, POLICY_RING_FILE,
                  "trainer_state.json", "training_args.bin", "scaler.pt", "rng_state*.pth",
                  "global_step*", "latest", "zero_to_fp32.py")


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():  # sampling on the GPU draws from the CUDA generators
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(run_dir: Path, step: int, *, model, tokenizer, optimizer, scheduler, state: dict[str, Any],
                    keep: int = 2, policy_ring: list[dict[str, torch.Tensor]] | None = None) -> Path:
    """Write checkpoint ``step`` atomically and prune all but the ``keep`` newest. ``policy_ring``: the lagged
    policy states of ``softgate.staleness.BehaviourPolicy`` (oldest first), saved when given."""
    root = RunDir(run_dir).checkpoints
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with no_progress_bars():  # transformers draws a "Writing model shards" bar per save: noise under the run's bar
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
    torch.save(scheduler.state_dict(), tmp / SCHEDULER)
    # RNG states hold numpy arrays and tuples: store them as plain tensors/lists so weights_only loading works.
    rng = rng_state()
    torch.save({**rng, "python": _py_state_to_list(rng["python"]), "numpy": _np_state_to_list(rng["numpy"])},
               tmp / RNG)
    if policy_ring is not None:
        torch.save(policy_ring, tmp / POLICY_RING_FILE)
    (tmp / STATE).write_text(json.dumps({"step": step, **state}, indent=2))
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. the final save after a periodic one)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in RunDir(run_dir).list_checkpoints()[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers' progress bars off inside the block, restored after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_checkpoint(path: Path, *, model, optimizer, scheduler) -> dict[str, Any]:
    """Restore model weights (or the LoRA adapter of an adapted model), optimizer, scheduler and RNG states;
    return the saved trainer state (with the lagged policy states under ``"policy_ring"`` when the checkpoint
    holds them)."""
    if is_adapted(model) != is_adapter_dir(path):
        held, wanted = ("a LoRA adapter", "full weights") if is_adapter_dir(path) else ("full weights", "an adapter")
        raise ValueError(f"checkpoint {path} holds {held} but the config trains {wanted}: model.lora must be what "
                         "the run was started with")
    if is_adapted(model):
        load_adapter_weights(model, path)
    else:
        _load_full_weights(model, path)
    # map_location: optimizer state follows the parameters' device (load_state_dict casts to it); RNG states are
    # CPU tensors whatever device saved them.
    optimizer.load_state_dict(torch.load(path / OPTIMIZER, weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / SCHEDULER, weights_only=True, map_location="cpu"))
    rng = torch.load(path / RNG, weights_only=True, map_location="cpu")
    set_rng_state({**rng, "python": _py_state_from_list(rng["python"]), "numpy": _np_state_from_list(rng["numpy"])})
    state = json.loads((path / STATE).read_text())
    if (path / POLICY_RING_FILE).is_file():
        state["policy_ring"] = torch.load(path / POLICY_RING_FILE, weights_only=True, map_location="cpu")
    return state


def _load_full_weights(model, path: Path) -> None:
    from safetensors.torch import load_file

    weights = path / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint {path} has no model.safetensors")
    state_dict = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    # Tied embeddings are saved once; anything else missing is a real mismatch.
    missing = [k for k in missing if k not in _tied_keys(model)]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {path} does not match the model: missing {missing}, unexpected {unexpected}")


def export_checkpoint(source: Path, out: Path, *, merge: bool = False, step: int | None = None) -> Path:
    """Write the Hugging Face files of a checkpoint to ``out``, without the training state; returns the checkpoint
    exported. ``source`` is a run directory (its newest checkpoint, or checkpoint ``step``) or a checkpoint folder.

    A LoRA checkpoint is written as its adapter folder (peft's ``AutoPeftModelForCausalLM`` loads it on its base),
    or with ``merge`` as a plain model: the base model its ``adapter_config.json`` names with the adapter folded in,
    which ``AutoModelForCausalLM.from_pretrained`` loads. A full checkpoint is already plain.
    """
    source, out = Path(source), Path(out)
    ckpt = _find_checkpoint(source, step)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not empty; choose a new directory")
    if merge and is_adapter_dir(ckpt):
        model, tokenizer = _merged_model(ckpt)
        out.mkdir(parents=True, exist_ok=True)
        with no_progress_bars():
            model.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
    else:
        shutil.copytree(ckpt, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*TRAINING_STATE))
    return ckpt


def _find_checkpoint(source: Path, step: int | None) -> Path:
    """The checkpoint folder ``source`` names: itself, or a run directory's newest checkpoint (or ``step``)."""
    if (source / STATE).is_file():
        if step is not None:
            raise ValueError(f"{source} is a checkpoint folder; --step applies to a run directory")
        return source
    run = RunDir(source)
    found = run.list_checkpoints()
    if not found:
        raise FileNotFoundError(f"{source} holds no checkpoint (neither a run directory with checkpoints/ nor a "
                                "checkpoint folder)")
    if step is None:
        return found[-1]
    for ckpt in found:
        if run.checkpoint_step(ckpt) == step:
            return ckpt
    raise FileNotFoundError(f"{source} has no checkpoint of step {step}; it has steps "
                            f"{', '.join(str(run.checkpoint_step(c)) for c in found)}")


def _merged_model(ckpt: Path):
    """(plain model, tokenizer): the base model of adapter checkpoint ``ckpt`` with the adapter folded in, and
    the generation config the policy sampled with (``softgate.lifecycle.load_policy``)."""
    from softgate.generation import use_clean_generation_config
    from softgate.modeling import load_model_and_tokenizer

    with no_progress_bars():
        model, tokenizer = load_model_and_tokenizer(str(ckpt))
    use_clean_generation_config(model, warn=False)
    return model, tokenizer


def _tied_keys(model) -> set[str]:
    keys = getattr(model, "_tied_weights_keys", None) or []
    if isinstance(keys, dict):
        keys = list(keys)
    return set(keys) | {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set(keys)


def _py_state_to_list(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_state_from_list(state) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _np_state_to_list(state) -> list:
    name, keys, pos, has_gauss, cached = state
    return [name, torch.from_numpy(np.asarray(keys).astype(np.int64)), int(pos), int(has_gauss), float(cached)]


def _np_state_from_list(state) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
