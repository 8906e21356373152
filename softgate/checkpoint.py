"""Atomic checkpoints: model + tokenizer (safetensors), optimizer, scheduler, RNG states, trainer state and, with
``algo.staleness``, the ring of lagged policy states (``policy_ring.pt``).

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

from softgate.rundir import RunDir

POLICY_RING_FILE = "policy_ring.pt"

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
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    # RNG states hold numpy arrays and tuples: store them as plain tensors/lists so weights_only loading works.
    rng = rng_state()
    torch.save({**rng, "python": _py_state_to_list(rng["python"]), "numpy": _np_state_to_list(rng["numpy"])},
               tmp / "rng.pt")
    if policy_ring is not None:
        torch.save(policy_ring, tmp / POLICY_RING_FILE)
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
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
    """Restore model weights, optimizer, scheduler and RNG states; return the saved trainer state (with the lagged
    policy states under ``"policy_ring"`` when the checkpoint holds them)."""
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
    # map_location: optimizer state follows the parameters' device (load_state_dict casts to it); RNG states are
    # CPU tensors whatever device saved them.
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True, map_location="cpu"))
    rng = torch.load(path / "rng.pt", weights_only=True, map_location="cpu")
    set_rng_state({**rng, "python": _py_state_from_list(rng["python"]), "numpy": _np_state_from_list(rng["numpy"])})
    state = json.loads((path / "state.json").read_text())
    if (path / POLICY_RING_FILE).is_file():
        state["policy_ring"] = torch.load(path / POLICY_RING_FILE, weights_only=True, map_location="cpu")
    return state


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
