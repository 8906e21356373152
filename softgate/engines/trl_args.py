"""From a softgate config to TRL's ``SoftGateGRPOConfig``: the key mapping of the ``trl`` engine, the keys it
refuses, and the batch geometry (how one RL step becomes TRL's micro-batches, accumulation and generation batch).

Pure: nothing here imports TRL until :func:`grpo_config` builds the object. docs/integrations.md shows the same
table; a test keeps :data:`KEY_MAP` and the refusals in step with the schema (every key is mapped, refused or
listed in :data:`NATIVE_ONLY_SPEED`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softgate.config import Config, ConfigError

# softgate key -> the TRL setting it becomes (documentation of grpo_config's mapping; "softgate" = used by the
# engine itself, outside TRL's config).
KEY_MAP: dict[str, str] = {
    "seed": "seed",
    "steps": "max_steps = steps x num_iterations x minibatches",
    "output_dir": "the run directory (TRL's output_dir = <run>/checkpoints)",
    "engine": "softgate (chooses this engine)",
    "model.name_or_path": "softgate (loaded by softgate.lifecycle.load_policy, passed as the model)",
    "model.device": "use_cpu (cpu); auto/cuda/mps: accelerate's device per process",
    "model.compute_dtype": "bf16 / fp16",
    "model.disable_dropout": "disable_dropout",
    "model.gradient_checkpointing": "gradient_checkpointing (use_reentrant=False)",
    "model.threads": "softgate (torch threads of each process)",
    "task.*": "softgate (data and prompts from softgate.data; the train split as TRL's train_dataset)",
    "task.answer_weight, task.format_weight": "softgate (the reward function is softgate.train.score)",
    "rollout.prompts_per_step, rollout.num_generations": "generation batch = prompts x G rows; num_generations",
    "rollout.temperature": "temperature",
    "rollout.top_p": "top_p",
    "rollout.max_new_tokens": "max_completion_length",
    "rollout.backend": "use_vllm (vllm: vllm_mode=colocate)",
    "gate.*": "softgate_gate, softgate_gate_params",
    "loss.level": "softgate_level",
    "loss.agg": "softgate_agg",
    "loss.log_ratio_bound": "softgate_log_ratio_bound",
    "loss.kl_coef": "beta (k3 against the start model)",
    "loss.kl_estimator": "k3 only (refused otherwise when loss.kl_coef > 0)",
    "loss.entropy_coef": "refused unless 0",
    "algo.advantage": "scale_rewards (std: group, mean: none; rloo refused)",
    "algo.num_iterations": "num_iterations",
    "algo.drop_zero_variance": "refused when true",
    "algo.staleness": "refused when > 0",
    "algo.eur_target, algo.eur_rate": "refused when eur_target is set",
    "algo.minibatches": "steps_per_generation = minibatches x gradient_accumulation_steps",
    "algo.minibatch_split": "rows: TRL's own order; groups: the engine orders each process's rows (whole groups)",
    "algo.micro_batch_size": "per_device_train_batch_size (largest divisor of a process's minibatch rows <= it)",
    "optim.lr": "learning_rate",
    "optim.weight_decay": "weight_decay (on every parameter, as softgate's AdamW)",
    "optim.beta1, optim.beta2": "adam_beta1, adam_beta2 (optim=adamw_torch)",
    "optim.schedule, optim.warmup_steps": "softgate's schedule (softgate.lifecycle.lr_lambda) as TRL's scheduler",
    "optim.max_grad_norm": "max_grad_norm",
    "optim.master_weights": "softgate (parameter dtype at load)",
    "eval.*": "softgate (softgate.evaluation on rank 0 at RL-step boundaries)",
    "log.progress": "softgate (the run's progress bar on rank 0; TRL's own bar and log printing are removed)",
    "log.tensorboard, log.wandb_project": "softgate (the same sinks as the native engine)",
    "log.save_every": "save_steps = save_every x updates per RL step",
    "log.samples_every": "refused when > 0",
    "model.lora": "peft_config (softgate.lora.peft_config; TRL wraps the policy, KL reference = adapters off)",
    "sft.*": "not used by RL (the settings of `softgate sft`)",
    "log.keep_checkpoints": "softgate (prunes checkpoints/step_*)",
    "grader.*": "softgate (the reward's grader)",
}

# Keys that only make the native engine faster or leaner; the trl engine computes the same values without them.
NATIVE_ONLY_SPEED = ("model.shared_prompt_pass", "model.logprob_impl")


@dataclass(frozen=True)
class Geometry:
    """One RL step in TRL's terms (per process unless said otherwise).

    Fields:
        rows:                 P x G sequences of the rollout (all processes)
        updates_per_step:     optimizer steps per RL step (num_iterations x minibatches)
        per_device:           rows per micro-batch (per_device_train_batch_size)
        grad_accum:           micro-batches per optimizer step (gradient_accumulation_steps)
        steps_per_generation: micro-batches per rollout (one pass)
        max_steps:            optimizer steps of the run
    """

    rows: int
    updates_per_step: int
    per_device: int
    grad_accum: int
    steps_per_generation: int
    max_steps: int


def geometry(cfg: Config, processes: int) -> Geometry:
    """The batch layout that makes TRL's RL step the native one: the generation batch is the rollout (P x G rows),
    an optimizer step is one minibatch (rows / minibatches, split over processes), a micro-batch at most
    ``algo.micro_batch_size`` rows."""
    rows = cfg.rollout.prompts_per_step * cfg.rollout.num_generations
    mbs = cfg.algo.minibatches
    if rows % mbs:
        raise ConfigError(f"algo.minibatches={mbs}: the trl engine needs rollout.prompts_per_step x "
                          f"rollout.num_generations = {rows} rows to split evenly into minibatches")
    per_step = rows // mbs  # rows of one optimizer step, all processes
    if per_step % processes:
        raise ConfigError(f"--processes {processes}: an optimizer step holds {per_step} rows (prompts_per_step x "
                          f"num_generations / algo.minibatches), which do not split evenly over the processes")
    local = per_step // processes
    G = cfg.rollout.num_generations
    if cfg.algo.minibatch_split == "groups" and local % G:
        raise ConfigError(f"--processes {processes}: algo.minibatch_split=groups needs each process's share of an "
                          f"optimizer step ({local} rows) to hold whole groups of {G} (use fewer processes or "
                          "algo.minibatch_split=rows)")
    per_device = max(d for d in range(1, min(local, cfg.algo.micro_batch_size) + 1) if local % d == 0)
    grad_accum = local // per_device
    updates = cfg.algo.num_iterations * mbs
    return Geometry(rows, updates, per_device, grad_accum, grad_accum * mbs, cfg.steps * updates)


def refusals(cfg: Config) -> list[str]:
    """One message per key the trl engine cannot honour as set (empty: the config runs on TRL)."""
    out = []
    if cfg.algo.advantage == "rloo":
        out.append("algo.advantage=rloo: TRL's GRPOTrainer has no leave-one-out advantage (use std or mean)")
    if cfg.algo.drop_zero_variance:
        out.append("algo.drop_zero_variance=true: TRL trains on every group (set it to false)")
    if cfg.algo.staleness:
        out.append(f"algo.staleness={cfg.algo.staleness}: TRL samples from the current policy (set it to 0)")
    if cfg.log.samples_every:
        out.append(f"log.samples_every={cfg.log.samples_every}: per-token samples are written by the native engine "
                   "only (set it to 0)")
    if cfg.algo.eur_target is not None:
        out.append("algo.eur_target: the EUR temperature controller is the native engine's (unset it)")
    if cfg.loss.entropy_coef != 0:
        out.append("loss.entropy_coef: the plug-in refuses TRL's entropy bonus (set it to 0)")
    if cfg.loss.kl_coef > 0 and cfg.loss.kl_estimator != "k3":
        out.append(f"loss.kl_estimator={cfg.loss.kl_estimator}: TRL's KL penalty is k3 (set loss.kl_estimator=k3)")
    if cfg.loss.agg == "token-mean" and cfg.algo.minibatches > 1:
        out.append("loss.agg=token-mean with algo.minibatches > 1: TRL divides each optimizer step by the rollout's "
                   "mean tokens per minibatch, not by its own tokens (use algo.minibatches=1 or another agg)")
    if cfg.model.device.startswith("cuda:"):
        out.append(f"model.device={cfg.model.device}: accelerate gives each process its GPU (use model.device=cuda "
                   "and CUDA_VISIBLE_DEVICES)")
    return out


def check_trl_engine(cfg: Config, processes: int = 1) -> Geometry:
    """ConfigError naming every refused key (one line), else the batch geometry."""
    refused = refusals(cfg)
    if refused:
        raise ConfigError("engine=trl cannot honour " + "; ".join(refused) + " (or use engine=native)")
    if processes < 1:
        raise ConfigError(f"--processes must be >= 1, got {processes}")
    return geometry(cfg, processes)


def grpo_config(cfg: Config, run_dir: Path, geo: Geometry, *, use_cpu: bool) -> Any:
    """``SoftGateGRPOConfig`` of a softgate config (TRL's own logging, evaluation and checkpoint rotation off:
    the engine writes softgate's run directory)."""
    from softgate.integrations.trl import SoftGateGRPOConfig

    spec = cfg.gate.spec()
    save_steps = (cfg.log.save_every or cfg.steps) * geo.updates_per_step
    with warnings.catch_warnings():
        # transformers 5 renames gradient_checkpointing; TRL 1.16 still reads (and defaults) the old field.
        warnings.filterwarnings("ignore", message="`gradient_checkpointing", category=FutureWarning)
        return _softgate_grpo_config(SoftGateGRPOConfig, cfg, run_dir, geo, spec, save_steps, use_cpu)


def _softgate_grpo_config(config_cls: type, cfg: Config, run_dir: Path, geo: Geometry, spec: Any, save_steps: int,
                          use_cpu: bool) -> Any:
    return config_cls(
        output_dir=str(run_dir / "checkpoints"), seed=cfg.seed, data_seed=cfg.seed, max_steps=geo.max_steps,
        use_cpu=use_cpu, bf16=cfg.model.compute_dtype == "bfloat16", fp16=cfg.model.compute_dtype == "float16",
        disable_dropout=cfg.model.disable_dropout, gradient_checkpointing=cfg.model.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        # the rollout
        num_generations=cfg.rollout.num_generations, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
        top_k=0, min_p=None, repetition_penalty=1.0, max_completion_length=cfg.rollout.max_new_tokens,
        use_vllm=cfg.rollout.backend == "vllm", vllm_mode="colocate",
        per_device_train_batch_size=geo.per_device, gradient_accumulation_steps=geo.grad_accum,
        steps_per_generation=geo.steps_per_generation, num_iterations=cfg.algo.num_iterations,
        scale_rewards="group" if cfg.algo.advantage == "std" else "none",
        # the loss
        softgate_gate=spec.name, softgate_gate_params=dict(spec.params), softgate_level=cfg.loss.level,
        softgate_agg=cfg.loss.agg, softgate_log_ratio_bound=cfg.loss.log_ratio_bound, beta=cfg.loss.kl_coef,
        # the optimizer (the schedule and the weight-decay set are softgate's: see softgate.engines.trl)
        optim="adamw_torch", learning_rate=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
        adam_beta1=cfg.optim.beta1, adam_beta2=cfg.optim.beta2, max_grad_norm=cfg.optim.max_grad_norm,
        # logging and checkpoints: one log per optimizer step, read by the engine's callback
        logging_steps=1, report_to=[], disable_tqdm=not cfg.log.progress, log_completions=False,
        save_strategy="steps", save_steps=save_steps, save_total_limit=None, eval_strategy="no",
        remove_unused_columns=False, dataloader_num_workers=0,
    )
