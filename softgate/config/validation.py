"""Validation of a built config: one check per rule, each error naming the key (and file:line when known)."""

from __future__ import annotations

import math
from pathlib import Path

from softgate.config.schema import Config, ConfigError


def validate(cfg: Config, locate=lambda key: "") -> None:
    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{locate(key)}{key}: {message}")

    def positive(key: str, value: float) -> None:
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            fail(key, f"must be > 0, got {value!r}")

    from softgate import gates  # light import: maths only

    known = [*gates.names(), *gates.aliases()]
    if cfg.gate.name not in known:
        fail("gate.name", f"unknown gate {cfg.gate.name!r}; known gates: {', '.join(known)}")
    accepted = gates.defaults(cfg.gate.name)
    for key, value in cfg.gate.params.items():
        if key not in accepted:
            fail(f"gate.{key}", f"gate {cfg.gate.name!r} has no parameter {key} (set to {value:g}); it accepts "
                 f"{', '.join(accepted) or 'none'} (set gate.{key}=null to drop it)")
    try:
        spec = cfg.gate.spec()
    except (ValueError, TypeError) as err:
        fail("gate", str(err))
    # From here on the config holds the resolved gate: canonical name, every parameter (what config.yaml saves).
    cfg.gate.name, cfg.gate.params = spec.name, dict(spec.params)

    positive("steps", cfg.steps)
    for key in ("prompts_per_step", "num_generations", "max_new_tokens"):
        positive(f"rollout.{key}", getattr(cfg.rollout, key))
    if cfg.rollout.temperature <= 0:
        fail("rollout.temperature", f"must be > 0, got {cfg.rollout.temperature}")
    if not 0 < cfg.rollout.top_p <= 1:
        fail("rollout.top_p", f"must be in (0, 1], got {cfg.rollout.top_p}")
    if cfg.algo.advantage in ("std", "rloo") and cfg.rollout.num_generations < 2:
        fail("rollout.num_generations", f"must be >= 2 with algo.advantage={cfg.algo.advantage!r} "
             "(a group of one has no spread to normalize by)")
    for key in ("num_iterations", "minibatches", "micro_batch_size"):
        positive(f"algo.{key}", getattr(cfg.algo, key))
    if cfg.rollout.prompts_per_step % cfg.algo.minibatches:
        fail("algo.minibatches", f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} is not divisible by "
             f"algo.minibatches={cfg.algo.minibatches} (minibatches keep groups whole)")
    minibatch_seqs = cfg.rollout.prompts_per_step // cfg.algo.minibatches * cfg.rollout.num_generations
    if minibatch_seqs % cfg.algo.micro_batch_size:
        fail("algo.micro_batch_size", f"a minibatch holds {minibatch_seqs} sequences, not divisible by "
             f"algo.micro_batch_size={cfg.algo.micro_batch_size}")
    if cfg.algo.eur_target is not None and not 0 < cfg.algo.eur_target < 1:
        fail("algo.eur_target", f"must be in (0, 1), got {cfg.algo.eur_target}")
    positive("algo.eur_rate", cfg.algo.eur_rate)
    positive("optim.lr", cfg.optim.lr)
    positive("loss.log_ratio_bound", cfg.loss.log_ratio_bound)
    for key in ("kl_coef", "entropy_coef"):
        if getattr(cfg.loss, key) < 0:
            fail(f"loss.{key}", f"must be >= 0, got {getattr(cfg.loss, key)}")
    if cfg.optim.warmup_steps < 0:
        fail("optim.warmup_steps", f"must be >= 0, got {cfg.optim.warmup_steps}")
    if cfg.optim.max_grad_norm < 0:
        fail("optim.max_grad_norm", f"must be >= 0, got {cfg.optim.max_grad_norm}")
    if cfg.eval.every < 0 or cfg.eval.size < 0:
        fail("eval", "every and size must be >= 0")
    positive("eval.temperature", cfg.eval.temperature)
    positive("eval.batch_size", cfg.eval.batch_size)
    for i, entry in enumerate(cfg.task.train_mix or []):
        if not isinstance(entry, dict) or not {"task", "source"} <= entry.keys() or \
                set(entry) - {"task", "source", "weight"}:
            fail(f"task.train_mix[{i}]", f"expected {{task: NAME, source: FILE|hf, weight: W}}, got {entry!r}")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            fail(f"task.train_mix[{i}].weight", f"must be a number >= 0, got {weight!r}")
    for key in ("train_file", "test_file"):
        value = getattr(cfg.task, key)
        if value and _looks_like_path(value) and not Path(value).exists():
            fail(f"task.{key}", f"file {value} does not exist")
    if cfg.model.threads < 0:
        fail("model.threads", f"must be >= 0, got {cfg.model.threads}")
    from softgate.device import check_device_name

    try:
        check_device_name(cfg.model.device)
    except ValueError as err:
        fail("model.device", str(err))
    positive("grader.timeout_s", cfg.grader.timeout_s)
    positive("grader.workers", cfg.grader.workers)
    positive("grader.max_answer_chars", cfg.grader.max_answer_chars)
    if cfg.grader.memory_mb < 0:
        fail("grader.memory_mb", f"must be >= 0 (0 = no cap), got {cfg.grader.memory_mb}")


def _looks_like_path(value: str) -> bool:
    """Local files end in a data suffix; anything else may be a hub dataset name."""
    return value.endswith((".jsonl", ".json", ".parquet")) or value.startswith((".", "/"))
