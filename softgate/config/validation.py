"""Validation of a built config: one check per rule, each error naming the key (and file:line when known)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from softgate.config.schema import Config, ConfigError


class _Rules:
    """``fail`` and ``positive`` with the file:line locator of the config being checked."""

    def __init__(self, locate: Callable[[str], str]):
        self.locate = locate

    def fail(self, key: str, message: str) -> NoReturn:
        raise ConfigError(f"{self.locate(key)}{key}: {message}")

    def positive(self, key: str, value: float) -> None:
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            self.fail(key, f"must be > 0, got {value!r}")

    def non_negative(self, key: str, value: float) -> None:
        if value < 0:
            self.fail(key, f"must be >= 0, got {value!r}")


def validate(cfg: Config, locate: Callable[[str], str] = lambda key: "") -> None:
    """Check every rule; the first broken one raises ConfigError naming its key. Resolves the gate in place."""
    rules = _Rules(locate)
    _check_gate(cfg, rules)
    _check_batching(cfg, rules)
    _check_optimization(cfg, rules)
    _check_task(cfg, rules)
    _check_runtime(cfg, rules)
    _check_lora(cfg, rules)
    _check_sft(cfg, rules)


def _check_gate(cfg: Config, rules: _Rules) -> None:
    from softgate import gates  # light import: maths only

    known = [*gates.names(), *gates.aliases()]
    if cfg.gate.name not in known:
        rules.fail("gate.name", f"unknown gate {cfg.gate.name!r}; known gates: {', '.join(known)}")
    accepted = gates.defaults(cfg.gate.name)
    for key, value in cfg.gate.params.items():
        if key not in accepted:
            rules.fail(f"gate.{key}", f"gate {cfg.gate.name!r} has no parameter {key} (set to {value:g}); it "
                       f"accepts {', '.join(accepted) or 'none'} (set gate.{key}=null to drop it)")
    try:
        spec = cfg.gate.spec()
    except (ValueError, TypeError) as err:
        rules.fail("gate", str(err))
    # From here on the config holds the resolved gate: canonical name, every parameter (what config.yaml saves).
    cfg.gate.name, cfg.gate.params = spec.name, dict(spec.params)
    if cfg.algo.eur_target is not None and not {"tau_pos", "tau_neg"} <= spec.params.keys():
        rules.fail("algo.eur_target", f"the EUR controller adapts the gate's temperatures, and gate "
                   f"{spec.name!r} has none; unset algo.eur_target or choose a temperature gate")


def _check_batching(cfg: Config, rules: _Rules) -> None:
    rollout, algo = cfg.rollout, cfg.algo
    rules.positive("steps", cfg.steps)
    for key in ("prompts_per_step", "num_generations", "max_new_tokens"):
        rules.positive(f"rollout.{key}", getattr(rollout, key))
    rules.positive("rollout.temperature", rollout.temperature)
    if not 0 < rollout.top_p <= 1:
        rules.fail("rollout.top_p", f"must be in (0, 1], got {rollout.top_p}")
    if algo.advantage in ("std", "rloo") and rollout.num_generations < 2:
        rules.fail("rollout.num_generations", f"must be >= 2 with algo.advantage={algo.advantage!r} "
                   "(a group of one has no spread to normalize by)")
    for key in ("num_iterations", "minibatches", "micro_batch_size"):
        rules.positive(f"algo.{key}", getattr(algo, key))
    if rollout.prompts_per_step % algo.minibatches:
        rules.fail("algo.minibatches", f"rollout.prompts_per_step={rollout.prompts_per_step} is not divisible by "
                   f"algo.minibatches={algo.minibatches} (minibatches keep groups whole)")
    minibatch_seqs = rollout.prompts_per_step // algo.minibatches * rollout.num_generations
    # A micro-batch at least as large as the minibatch means "the whole minibatch in one pass".
    if algo.micro_batch_size < minibatch_seqs and minibatch_seqs % algo.micro_batch_size:
        rules.fail("algo.micro_batch_size", f"a minibatch holds {minibatch_seqs} sequences, not divisible by "
                   f"algo.micro_batch_size={algo.micro_batch_size}")


def _check_optimization(cfg: Config, rules: _Rules) -> None:
    algo, optim, loss = cfg.algo, cfg.optim, cfg.loss
    if algo.eur_target is not None and not 0 < algo.eur_target < 1:
        rules.fail("algo.eur_target", f"must be in (0, 1), got {algo.eur_target}")
    rules.positive("algo.eur_rate", algo.eur_rate)
    rules.positive("optim.lr", optim.lr)
    rules.positive("loss.log_ratio_bound", loss.log_ratio_bound)
    rules.non_negative("loss.kl_coef", loss.kl_coef)
    rules.non_negative("loss.entropy_coef", loss.entropy_coef)
    rules.non_negative("optim.warmup_steps", optim.warmup_steps)
    rules.non_negative("optim.max_grad_norm", optim.max_grad_norm)
    rules.non_negative("algo.staleness", algo.staleness)


def _check_task(cfg: Config, rules: _Rules) -> None:
    from softgate.tasks import names as task_names

    if cfg.task.name not in task_names():
        rules.fail("task.name", f"unknown task {cfg.task.name!r}; known tasks: {', '.join(task_names())}")
    for i, entry in enumerate(cfg.task.train_mix or []):
        if not isinstance(entry, dict) or not {"task", "source"} <= entry.keys() or \
                set(entry) - {"task", "source", "weight"}:
            rules.fail(f"task.train_mix[{i}]", f"expected {{task: NAME, source: FILE|hf, weight: W}}, got {entry!r}")
        if entry["task"] not in task_names():
            rules.fail(f"task.train_mix[{i}].task", f"unknown task {entry['task']!r}; known tasks: "
                       f"{', '.join(task_names())}")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            rules.fail(f"task.train_mix[{i}].weight", f"must be a number >= 0, got {weight!r}")
    for key in ("train_file", "test_file"):
        value = getattr(cfg.task, key)
        if value and _looks_like_path(value) and not Path(value).exists():
            rules.fail(f"task.{key}", f"file {value} does not exist")


def _check_runtime(cfg: Config, rules: _Rules) -> None:
    from softgate.device import check_device_name

    if cfg.eval.every < 0 or cfg.eval.size < 0:
        rules.fail("eval", "every and size must be >= 0")
    rules.positive("eval.temperature", cfg.eval.temperature)
    rules.positive("eval.batch_size", cfg.eval.batch_size)
    rules.non_negative("model.threads", cfg.model.threads)
    rules.non_negative("log.samples_every", cfg.log.samples_every)
    try:
        check_device_name(cfg.model.device)
    except ValueError as err:
        rules.fail("model.device", str(err))
    rules.positive("grader.timeout_s", cfg.grader.timeout_s)
    rules.positive("grader.workers", cfg.grader.workers)
    rules.positive("grader.max_answer_chars", cfg.grader.max_answer_chars)
    if cfg.grader.memory_mb < 0:
        rules.fail("grader.memory_mb", f"must be >= 0 (0 = no cap), got {cfg.grader.memory_mb}")


def _looks_like_path(value: str) -> bool:
    """Local files end in a data suffix; anything else may be a hub dataset name."""
    return value.endswith((".jsonl", ".json", ".parquet")) or value.startswith((".", "/"))


def _check_lora(cfg: Config, rules: _Rules) -> None:
    lora = cfg.model.lora
    if lora is None:
        return
    if cfg.rollout.backend == "vllm":  # the vLLM sampler pushes plain weights by name; adapters have none there
        rules.fail("model.lora", "LoRA runs sample with rollout.backend=hf only; set model.lora: null for vLLM")
    rules.positive("model.lora.r", lora.r)
    rules.positive("model.lora.alpha", lora.alpha)
    if not 0 <= lora.dropout < 1:
        rules.fail("model.lora.dropout", f"must be in [0, 1), got {lora.dropout!r}")
    targets = lora.target_modules
    if not (isinstance(targets, str) and targets) and not (
            isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)):
        rules.fail("model.lora.target_modules", f"expected a list of module names or 'all-linear', got {targets!r}")


def _check_sft(cfg: Config, rules: _Rules) -> None:
    sft = cfg.sft
    for key in ("steps", "lr", "batch_size", "max_length", "log_every"):
        rules.positive(f"sft.{key}", getattr(sft, key))
    rules.non_negative("sft.warmup_steps", sft.warmup_steps)
    rules.non_negative("sft.weight_decay", sft.weight_decay)
