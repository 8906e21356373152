"""The ``trl`` engine: one softgate config trained by TRL's ``GRPOTrainer`` (with softgate's loss, the
``SoftGateGRPOTrainer`` plug-in) under accelerate, writing the same run directory as the native engine.

What is softgate's and what is TRL's:

- softgate: the policy and tokenizer (``lifecycle.load_policy``), the data and rendered prompts (``softgate.data``),
  the reward (``softgate.train.score``: the task's graders, answer/format weights), the gated loss (the plug-in),
  the learning-rate schedule (``lifecycle.lr_lambda``) and AdamW's weight-decay set (every parameter), the held-out
  evaluation (``softgate.train.run_eval``), the run directory (``softgate.rundir``), summary and plots.
- TRL/accelerate: sampling, advantages, the micro-batch loop, gradient accumulation, data parallelism
  (DDP / DeepSpeed), optimizer steps and checkpoint contents (renamed to ``checkpoints/step_XXXXXX``), and with
  ``model.lora`` the peft wrapping of the policy from softgate's adapter settings (``softgate.lora.peft_config``).

The batch geometry and the key mapping are in :mod:`softgate.engines.trl_args`; the metrics in
:mod:`softgate.engines.trl_log`. Several processes: ``softgate train --engine trl --processes N``
(:mod:`softgate.engines.launch`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from trl.trainer.utils import split_tensor_dict

from softgate.config import Config, save_config
from softgate.data import TrainingData, load_training_data
from softgate.device import resolve_device
from softgate.engines.trl_args import Geometry, check_trl_engine, grpo_config
from softgate.grading import Grader, GraderStats
from softgate.integrations.common import completion_text
from softgate.integrations.trl import SoftGateGRPOTrainer
from softgate.lifecycle import build_summary, interrupt_message, load_policy, lr_lambda, prepare_run_dir, \
    write_run_json
from softgate.lora import naming_lora_targets, peft_config
from softgate.rundir import RunDir, RunInterrupted
from softgate.stopping import GracefulStop
from softgate.threads import apply_threads
from softgate.tracking import check_trackers
from softgate.train import TrainResult, grader_metrics, minibatch_plan, rollout_metrics, score

ENGINE = "trl"
INDEX_COLUMN = "softgate_index"  # the dataset column that names each prompt's training example


class RolloutScorer:
    """softgate's reward (:func:`softgate.train.score`) as TRL's one reward function.

    TRL calls it on each process with that process's completions; it keeps the reward parts and grader counters of
    the last call for the rollout figures (:meth:`EngineTrainer._generate_and_score_completions`).
    """

    __name__ = "softgate"  # TRL logs rewards/<name>/mean

    def __init__(self, data: TrainingData, cfg: Config, grader: Grader):
        self.data, self.cfg, self.grader = data, cfg, grader
        self.last: tuple[dict[str, torch.Tensor], GraderStats] | None = None

    def __call__(self, completions: list[Any], **columns: Any) -> list[float]:
        rows = [int(i) for i in columns[INDEX_COLUMN]]
        texts = SimpleNamespace(completions=[completion_text(c) for c in completions])
        self.last = score([self.data.graders[i] for i in rows], texts,
                          [self.data.train[i].reference for i in rows], self.cfg, self.grader)
        return self.last[0]["total"].tolist()


class EngineTrainer(SoftGateGRPOTrainer):
    """The plug-in trainer with what makes a TRL run a softgate run: rendered prompts tokenized as the native
    sampler does, the rollout figures of ``metrics.jsonl``, softgate's schedule and weight-decay set, and
    checkpoints in ``checkpoints/step_XXXXXX`` (RL steps)."""

    def __init__(self, *args: Any, softgate_cfg: Config, geometry: Geometry, scorer: RolloutScorer,
                 run_dir: Path, **kwargs: Any) -> None:
        super().__init__(*args, reward_funcs=[scorer], **kwargs)
        self.softgate_cfg, self.geometry, self.scorer, self.run_dir = softgate_cfg, geometry, scorer, run_dir
        self.rollout_figures: dict[str, float] = {}  # of the newest rollout, all processes
        self._rollout: dict[str, Any] = {}  # with algo.minibatch_split=groups: this process's rollout and its
        self._plan: list[list[torch.Tensor]] = []  # minibatches per pass (softgate.train.minibatch_plan)

    def _tokenize_prompts(self, prompts: list) -> tuple[list, None, dict]:
        """softgate's prompts are rendered text (chat template applied): no special tokens added, as the native
        sampler tokenizes them (TRL's default adds them)."""
        return self.processing_class(text=prompts, add_special_tokens=False)["input_ids"], None, {}

    def _prepare_inputs(self, generation_batch: Any) -> dict[str, Any]:
        """The micro-batch of this accumulation step, with the minibatches of ``algo.minibatch_split``: ``rows`` is
        TRL's own buffering (TRL 1.16 grpo_trainer.py L1538-1546: rows shuffled once per rollout, the same
        micro-batches on every pass); ``groups`` orders this process's rows by ``softgate.train.minibatch_plan``
        at the start of every pass, so each optimizer step holds whole groups as in the native engine."""
        split = self.softgate_cfg.algo.minibatch_split
        if not self.model.training or split == "rows":
            return super()._prepare_inputs(generation_batch)
        per_pass, G = self.args.steps_per_generation, self.num_generations
        if self._step % (per_pass * self.num_iterations) == 0 or self._buffered_inputs is None:
            self._rollout = whole_groups(self._generate_and_score_completions(generation_batch), G)
            rows = len(self._rollout["prompt_ids"])
            self._plan = minibatch_plan(rows // G, G, self.softgate_cfg.algo.minibatches, self.num_iterations, split)
        if self._step % per_pass == 0 or self._buffered_inputs is None:
            order = torch.cat(self._plan[self._step // per_pass % self.num_iterations])
            self._buffered_inputs = split_tensor_dict(take_rows(self._rollout, order), per_pass)
        return self._buffered_inputs[self._step % per_pass]

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """TRL's generation and scoring, plus the native engine's rollout figures over all processes
        (``softgate.train.rollout_metrics`` and ``grader_metrics`` on the gathered rows)."""
        output = super()._generate_and_score_completions(inputs)
        if not self.model.training or self.scorer.last is None:
            return output
        rewards, graded = self.scorer.last
        mask_BT = output["completion_mask"].bool()
        eos_BT = torch.isin(output["completion_ids"], torch.tensor(self.eos_token_ids, device=mask_BT.device))
        local = torch.stack([rewards["total"], rewards["answer"], rewards["format"]]).to(mask_BT.device)
        local = torch.cat([local, mask_BT.sum(1)[None].float(), (~(eos_BT & mask_BT).any(1))[None].float()]).T
        rows = self.accelerator.gather(local.contiguous()).cpu()  # [N, 5] over processes
        counts = torch.tensor([float(v) for v in dataclasses.asdict(graded).values()], device=mask_BT.device)
        counts = self.accelerator.reduce(counts, reduction="sum").cpu()
        stats = GraderStats(**{k: type(getattr(graded, k))(v) for k, v in zip(dataclasses.asdict(graded),
                                                                               counts.tolist())})
        batch = SimpleNamespace(completion_lengths=rows[:, 3], truncated=rows[:, 4].bool())
        self.rollout_figures = {**rollout_metrics({"total": rows[:, 0], "answer": rows[:, 1], "format": rows[:, 2]},
                                                  batch), **grader_metrics(stats),
                                "rollout/policy_lag": 0}  # TRL samples from the current policy (staleness refused)
        self.rollout_tokens = int(rows[:, 3].sum())
        return output

    def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
        """Weight decay on every parameter, as the native engine's AdamW (transformers exempts biases and norms)."""
        return [name for name, _ in model.named_parameters()]

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        """The native engine's schedule (``lifecycle.lr_lambda``: warmup from 1/warmup, then constant, linear or
        cosine over the run's optimizer steps)."""
        if self.lr_scheduler is None:
            optim = self.softgate_cfg.optim
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer, lr_lambda(optim.schedule, optim.warmup_steps, num_training_steps))
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """TRL's checkpoint, then renamed to ``checkpoints/step_<RL step>`` with ``state.json`` (what
        ``softgate.rundir`` counts as a complete checkpoint) and pruned to ``log.keep_checkpoints``."""
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()  # every rank has written its part (DeepSpeed shards, RNG states)
        if self.accelerator.is_main_process:
            publish_checkpoint(RunDir(self.run_dir), Path(self._get_output_dir(trial)), self.state.global_step,
                               self.geometry.updates_per_step, keep=self.softgate_cfg.log.keep_checkpoints)
        self.accelerator.wait_for_everyone()


def whole_groups(batch: dict[str, Any], G: int) -> dict[str, Any]:
    """``batch`` (TRL's rollout on this process) after checking that its rows are whole groups of ``G``
    consecutive rows of one prompt each, as TRL's RepeatSampler lays them out."""
    prompts_NGL = batch["prompt_ids"].reshape(-1, G, batch["prompt_ids"].shape[-1])
    if len(batch["prompt_ids"]) % G or not (prompts_NGL == prompts_NGL[:, :1]).all():
        raise RuntimeError(f"algo.minibatch_split=groups: this process's rollout is not whole groups of {G} "
                           "consecutive rows (use algo.minibatch_split=rows)")
    return batch


def take_rows(batch: dict[str, Any], order: torch.Tensor) -> dict[str, Any]:
    """The rows ``order`` of every per-row entry of TRL's rollout dict (tensors and lists; scalars and None kept),
    as TRL's ``shuffle_sequence_dict`` permutes them."""
    def take(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            return v[order.to(v.device)]
        return [v[i] for i in order.tolist()] if isinstance(v, list) else v
    return {key: take(v) for key, v in batch.items()}


def publish_checkpoint(run: RunDir, trl_dir: Path, global_step: int, updates_per_step: int, *, keep: int) -> Path:
    """Move TRL's ``checkpoint-<optimizer step>`` to ``step_<RL step>``; ``state.json`` is written before the rename,
    so a killed save leaves nothing that resume would pick up. Returns the new directory."""
    rl_step = global_step // updates_per_step
    source = trl_dir / f"checkpoint-{global_step}"
    (source / "state.json").write_text(json.dumps({"step": rl_step, "engine": ENGINE, "global_step": global_step}))
    final = run.checkpoints / f"step_{rl_step:06d}"
    if final.exists():  # the same step saved again (a resumed run's final save)
        shutil.rmtree(final)
    os.replace(source, final)
    for old in run.list_checkpoints()[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _training_data(cfg: Config, tokenizer: Any, model: Any) -> TrainingData:
    return load_training_data(cfg.task, tokenizer, seed=cfg.seed, eval_size=cfg.eval.size,
                              max_new_tokens=cfg.rollout.max_new_tokens,
                              eval_max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
                              context=getattr(model.config, "max_position_embeddings", None))


def build_trainer(cfg: Config, *, processes: int = 1, callbacks: list | None = None) -> EngineTrainer:
    """The engine's trainer for ``cfg`` on this process (the distributed state is accelerate's). Writes nothing."""
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import PrinterCallback, ProgressCallback

    geo = check_trl_engine(cfg, processes)
    use_cpu = resolve_device(cfg.model.device).type == "cpu"
    args = grpo_config(cfg, Path(cfg.output_dir), geo, use_cpu=use_cpu)
    device = PartialState(cpu=use_cpu).device  # this process's device: each rank loads onto its own
    device = "cpu" if device.type == "cpu" else str(device)
    # LoRA: TRL wraps the base policy from softgate's adapter settings, with peft's get_peft_model as
    # softgate.lora.add_lora does (TRL 1.16 grpo_trainer.py L433-476): the same adapters, the same trainable
    # parameters. Given peft_config, TRL keeps no reference model (L987-990) and computes the KL reference with the
    # adapters off (L2722-2727: use_adapter(model, None) -> model.disable_adapter()), the base model without a
    # second copy; a model passed already wrapped would get a second, "ref" adapter when beta > 0 (L478-508).
    # TRL's disable_dropout runs after the wrapping (L1006-1007), so the adapters' dropout is off as in load_policy.
    policy = dataclasses.replace(cfg.model, device=device, lora=None)
    model, tokenizer, _ = load_policy(dataclasses.replace(cfg, model=policy))

    data = _training_data(cfg, tokenizer, model)
    dataset = Dataset.from_dict({"prompt": data.prompts, INDEX_COLUMN: list(range(len(data.prompts)))})
    scorer = RolloutScorer(data, cfg, Grader.from_config(cfg.grader))
    with naming_lora_targets():
        trainer = EngineTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                callbacks=callbacks, softgate_cfg=cfg, geometry=geo, scorer=scorer,
                                run_dir=Path(cfg.output_dir),
                                peft_config=peft_config(cfg.model.lora) if cfg.model.lora is not None else None)
    # transformers prints every log dict (or writes it under its bar); the run's own bar is RunDirLog's.
    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    return trainer


def train_trl(cfg: Config, *, resume: bool = False, overwrite: bool = False, prepared: bool = False) -> TrainResult:
    """Run ``cfg`` on TRL in this process (one of ``WORLD_SIZE`` under ``accelerate launch``). ``prepared``: the
    launcher already checked the run directory (resume / overwrite), as ``softgate.train.train`` does first."""
    from softgate.engines.trl_log import RunDirLog

    run = RunDir(cfg.output_dir)
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    check_trl_engine(cfg, processes)  # refused keys before anything loads
    check_trackers(tensorboard=cfg.log.tensorboard, wandb_project=cfg.log.wandb_project)
    if not prepared and not prepare_run_dir(run, cfg, resume=resume, overwrite=overwrite):
        return TrainResult(run.path, run.read_summary() or {})
    apply_threads(cfg.model.threads)
    torch.manual_seed(cfg.seed)
    log = RunDirLog(cfg, run)
    trainer = build_trainer(cfg, processes=processes, callbacks=[log])
    log.attach(trainer)
    main = trainer.accelerator.is_main_process
    ckpt = run.latest_checkpoint() if resume else None
    start = run.checkpoint_step(ckpt) if ckpt is not None else 0
    if main:
        if resume:
            run.truncate_logs_after(start)
        run.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config_yaml)
        write_run_json(run.path, cfg, "running", start)
    trainer.accelerator.wait_for_everyone()
    summary: dict[str, Any] = {}
    with GracefulStop() as stop:
        log.stop = stop
        try:
            log.open(start)
            trainer.train(resume_from_checkpoint=str(ckpt) if ckpt is not None else None)
            done = trainer.state.global_step // log.geometry.updates_per_step
            if log.stopped and done < cfg.steps:
                if main:
                    write_run_json(run.path, cfg, "interrupted", done)
                raise RunInterrupted(interrupt_message(run, cfg, done, aborted=False), 128 + (stop.signum or 2))
            if main:
                summary = _finish(trainer, log, run, cfg)
            trainer.accelerator.wait_for_everyone()
        except RunInterrupted:
            raise
        except BaseException as err:
            if main:
                status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
                write_run_json(run.path, cfg, status, log.done)
            raise
        finally:
            log.close()
    return TrainResult(run.path, summary)


def _finish(trainer: EngineTrainer, log: Any, run: RunDir, cfg: Config) -> dict[str, Any]:
    """Rank 0 after the last step: final held-out evaluation, summary, plots, run.json ``finished``."""
    from softgate.plots import plot_run

    final_eval = log.evaluate(trainer.model, cfg.steps) if cfg.eval.size != 0 else {}
    log.close()
    summary = build_summary(run.path, cfg)
    run.write_summary(summary)
    plot_run(run.path)
    write_run_json(run.path, cfg, "finished", cfg.steps,
                   final_eval_accuracy=final_eval.get("eval/accuracy"))
    return summary
