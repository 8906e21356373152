"""The life of a training run around the RL loop: the run-directory check before any work, set-up (policy, data,
optimizer, schedule, sampler, grader), resume, the status in run.json, the line printed on interruption, and the
summary written at the end. ``softgate.train`` holds the loop itself.

Run status (``run.json``): ``running`` while the loop runs (also what a killed run leaves), ``interrupted`` after
Ctrl-C/SIGTERM, ``failed`` after an error, ``finished`` at the end. ``softgate train`` into a directory holding a
run says in one line what to do for each (``RunDir.advice``).
"""

from __future__ import annotations

import copy
import math
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import softgate
from softgate.checkpoint import POLICY_RING_FILE, load_checkpoint, no_progress_bars
from softgate.config import Config
from softgate.data import TrainingData, load_training_data
from softgate.device import check_compute_dtype, resolve_device
from softgate.generation import use_clean_generation_config
from softgate.grading import Grader
from softgate.lora import add_lora, is_adapted, trainable_parameters
from softgate.modeling import disable_dropout, load_model_and_tokenizer
from softgate.rollout import make_sampler
from softgate.rundir import RunDir, RunInfo, is_on_policy, resume_command
from softgate.staleness import BehaviourPolicy


def lr_lambda(schedule: str, warmup: int, total: int):
    """Multiplier of the peak learning rate at update slot ``s`` (linear warmup, then the schedule)."""

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        match schedule:
            case "constant":
                return 1.0
            case "linear":
                return max(0.0, 1.0 - progress)
            case "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        raise ValueError(f"optim.schedule: unknown schedule {schedule!r}")

    return f



def write_run_json(run_dir: Path, cfg: Config, status: str, last_step: int, **extra: Any) -> None:
    RunDir(run_dir).write_info(RunInfo(status=status, gate=cfg.gate.spec().to_dict(), seed=cfg.seed, steps=cfg.steps,
                                       last_step=last_step, task=cfg.task.name, model=cfg.model.name_or_path,
                                       engine=cfg.engine, extra=extra))


def load_policy(cfg: Config):
    """The policy to train, on its device, in train mode: float32 master weights unless opted out, LoRA adapters
    when ``model.lora`` is set (only they require gradients), no dropout, a generation config that holds only the
    policy (samples from exactly pi_old), gradient checkpointing if asked. Returns (model, tokenizer, device)."""
    device = resolve_device(cfg.model.device)
    check_compute_dtype(device, cfg.model.compute_dtype)
    param_dtype = "float32" if cfg.optim.master_weights else cfg.model.compute_dtype
    if param_dtype != "float32":
        warnings.warn(f"optim.master_weights=false: parameters and AdamW state in {param_dtype}; small updates "
                      "round away (at lr 1e-6 most parameters do not move). Prefer master weights.", stacklevel=3)
    with no_progress_bars():  # transformers' "Loading weights" bar: noise before the run's own bar
        model, tokenizer = load_model_and_tokenizer(cfg.model.name_or_path, dtype=param_dtype, device=str(device))
    use_clean_generation_config(model)  # on the base model: a peft wrapper would keep the attribute to itself
    if cfg.model.lora is not None:
        model = add_lora(model, cfg.model.lora)
    if cfg.model.disable_dropout:  # after wrapping: the adapters' dropout too
        disable_dropout(model)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model, tokenizer, device


def prepare_run_dir(run: RunDir, cfg: Config, *, resume: bool, overwrite: bool) -> bool:
    """Check the run directory before any work: a directory holding a run is resumed (``resume``), moved aside into
    ``.old-<time>/`` (``overwrite``) or refused with one line saying what to do. Returns False when there is
    nothing to do (resuming a finished run without more steps)."""
    if resume and overwrite:
        raise ValueError("--resume continues the run, --overwrite starts it over: choose one")
    if overwrite:
        moved = run.move_aside(".old")
        if moved is not None:
            print(f"--overwrite: the earlier run in {run.path} was moved to {moved}")
    elif not resume and run.holds_run():
        raise FileExistsError(run.advice())
    elif resume:
        run.require_resumable()
        info = run.read_info()
        if info is not None and info.status == "finished" and cfg.steps <= info.last_step:
            print(f"{run.path}: finished (steps={info.last_step}): nothing to do (--set steps=N extends it)")
            return False
    return True


@dataclass
class Setup:
    """What the loop works with, built before anything is written to the run directory."""

    model: Any
    tokenizer: Any
    device: torch.device
    ref_model: Any  # frozen copy of the start policy for the KL term, or None (no KL term, or LoRA)
    behaviour: BehaviourPolicy | None  # the lagged policy that samples (algo.staleness > 0), or None
    data: TrainingData
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: Any
    grader: Grader


FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def adamw(params: list[torch.nn.Parameter], cfg: Config) -> torch.optim.AdamW:
    """AdamW over ``params`` with ``cfg.optim``'s settings, on torch's fused kernel when every parameter is a
    floating-point tensor on CPU or CUDA (else the default implementation).

    The fused kernel updates each tensor in one pass instead of a dozen elementwise ones: measured 0.33 s against
    1.52 s per step on SmolLM2-135M's parameters on one CPU thread (docs/benchmarks.md), ~4 steps per RL step. It
    is also what Hugging Face's Trainer, and so TRL, uses by default since torch 2.8 (``adamw_torch_fused``). Its
    result equals the loop's up to float rounding; checkpoints hold the same state either way."""
    fused = all(p.is_floating_point() and p.device.type in FUSED_ADAMW_DEVICES for p in params)
    return torch.optim.AdamW(params, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                             weight_decay=cfg.optim.weight_decay, fused=fused or None)


def setup(cfg: Config) -> Setup:
    """Load the policy and data (prompts checked against the model's context) and build the optimizer, schedule,
    sampler and grader. Writes nothing."""
    model, tokenizer, device = load_policy(cfg)
    # The KL reference: a frozen copy of the start policy; with LoRA none is needed, the reference is the policy
    # with its adapters switched off (softgate.lora.without_adapter).
    copy_ref = cfg.loss.kl_coef > 0 and not is_adapted(model)
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if copy_ref else None
    data = load_training_data(cfg.task, tokenizer, seed=cfg.seed, eval_size=cfg.eval.size,
                              max_new_tokens=cfg.rollout.max_new_tokens,
                              eval_max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
                              context=getattr(model.config, "max_position_embeddings", None))
    optimizer = adamw(trainable_parameters(model), cfg)
    updates = cfg.steps * cfg.algo.num_iterations * cfg.algo.minibatches  # update slots of the whole run
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim.schedule, cfg.optim.warmup_steps,
                                                                       updates))
    # With staleness the sampler holds the behaviour policy's model: rollouts come from the lagged weights.
    behaviour = BehaviourPolicy(model, cfg.algo.staleness) if cfg.algo.staleness > 0 else None
    sampler = make_sampler(cfg.rollout.backend, behaviour.model if behaviour else model, tokenizer,
                           shared_prompt=cfg.model.shared_prompt_pass)
    grader = Grader.from_config(cfg.grader)  # its workers stop when train() returns and the grader is collected
    return Setup(model, tokenizer, device, ref_model, behaviour, data, optimizer, scheduler, sampler, grader)


def restore(run: RunDir, s: Setup) -> tuple[int, float, int]:
    """Resume: load the newest checkpoint (or start again from step 0 when there is none yet) and move log lines
    past it aside. Returns (start step, EUR-controller scale, data cursor)."""
    ckpt = run.latest_checkpoint()
    if ckpt is None:
        moved = run.truncate_logs_after(-1)
        print(f"resume: {run.path} has no checkpoint yet; starting again from step 0 with its saved config"
              + (f" ({moved} metric lines moved to metrics.orphaned.jsonl)" if moved else ""))
        return 0, 1.0, 0
    state = load_checkpoint(ckpt, model=s.model, optimizer=s.optimizer, scheduler=s.scheduler)
    if s.behaviour is not None:
        s.behaviour.load(state.get("policy_ring", []), where=str(ckpt / POLICY_RING_FILE))
    moved = run.truncate_logs_after(state["step"])
    if moved:
        print(f"resume: {moved} metric lines past step {state['step']} moved to metrics.orphaned.jsonl")
    return state["step"], state["tau_scale"], state["cursor"]



def interrupt_message(run: RunDir, cfg: Config, done: int, *, aborted: bool) -> str:
    """The one line printed when a signal stops a run: where it stopped and the exact command that resumes it."""
    ckpt = run.latest_checkpoint()
    start = run.checkpoint_step(ckpt) if ckpt is not None else 0
    if aborted:
        where = f"aborted during step {done + 1} of {cfg.steps}"
    else:
        where = f"interrupted after step {done} of {cfg.steps}"
    saved = f"checkpoint {ckpt.name}" if ckpt is not None else "no checkpoint yet: it starts again from step 0"
    return f"{where} ({saved}); resume from step {start} with: {resume_command(run.path)}"



def build_summary(run_dir: Path, cfg: Config) -> dict[str, Any]:
    """Start vs end held-out figures and the gate/entropy figures of the first and last 10% of updates."""
    evals = RunDir(run_dir).read_evals()
    metrics = RunDir(run_dir).read_metrics()

    def window(records, key, first: bool) -> float:
        values = [r[key] for r in records if r.get(key) is not None]
        if not values:
            return float("nan")
        k = max(1, len(values) // 10)
        chunk = values[:k] if first else values[-k:]
        return sum(chunk) / len(chunk)

    def pick(record: dict, key: str) -> float:
        return record.get(f"eval/{key}", float("nan")) if record else float("nan")

    start, end = (evals[0], evals[-1]) if evals else ({}, {})
    return {
        "run_dir": str(run_dir), "gate": cfg.gate.spec().to_dict(), "seed": cfg.seed, "steps": cfg.steps,
        "softgate_version": softgate.__version__, "python": platform.python_version(),
        "torch": torch.__version__,
        "eval_start": {k: pick(start, k) for k in ("accuracy", "accuracy_ci_low", "accuracy_ci_high",
                                                    "format_rate", "length_mean")},
        "eval_end": {k: pick(end, k) for k in ("accuracy", "accuracy_ci_low", "accuracy_ci_high",
                                                "format_rate", "length_mean")},
        "train_start": {k: window(metrics, k, True) for k in ("reward/total", "policy/entropy", "gate/eur")},
        "train_end": {k: window(metrics, k, False) for k in ("reward/total", "policy/entropy", "gate/eur")},
        "eur_mean": _mean(metrics, "gate/eur"),
        "eur_mean_off_policy": _mean([m for m in metrics if not is_on_policy(m)], "gate/eur"),
        "seconds_per_step": _mean(metrics, "time/step"),
    }


def _mean(records, key) -> float:
    values = [r[key] for r in records if r.get(key) is not None]
    return sum(values) / len(values) if values else float("nan")
