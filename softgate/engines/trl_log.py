"""The ``trl`` engine's side of the run directory: TRL's log of each optimizer step becomes a ``metrics.jsonl``
line with the native engine's keys, held-out evaluations go to ``eval.jsonl`` at RL-step boundaries, and a
Ctrl-C / SIGTERM stops the run at the next boundary with a checkpoint. Only rank 0 writes.

Keys (docs/integrations.md has the table): ``step``, ``rl_step``, ``time``; the rollout figures (``reward/*``,
``train/*``, ``response/*``, ``grader/*``) from the engine trainer's gathered rollout, repeated on every update of
the RL step as the native engine does; ``gate/*`` from the plug-in (``gate/eur`` is Eq. 12 over the optimizer step
and all processes); ``policy/entropy`` (TRL's ``entropy``), ``policy/approx_kl`` (``gate/approx_kl``),
``policy/kl_ref`` (TRL's ``kl``, with a KL penalty), ``policy/loss`` (TRL's ``loss``), ``policy/grad_norm``
(``grad_norm``), ``policy/lr`` (the schedule's value for the update), ``policy/on_policy``, ``policy/iteration``,
``policy/minibatch`` (the update's place in the RL step); ``time/step`` and ``perf/tokens_per_s`` (wall time of
the RL step). Absent, because TRL does not time them apart: ``time/generate``, ``time/logprobs``, ``time/train``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from softgate.config import Config, to_dict
from softgate.engines.trl_args import Geometry
from softgate.lifecycle import lr_lambda, write_run_json
from softgate.rundir import JsonlWriter, RunDir
from softgate.tracking import TrackingSinks
from softgate.train import run_eval

# TRL's log key -> the native engine's key (gate/* keep their names, except the plug-in's gate/approx_kl).
TRL_KEYS = {"entropy": "policy/entropy", "gate/approx_kl": "policy/approx_kl", "kl": "policy/kl_ref",
            "loss": "policy/loss", "grad_norm": "policy/grad_norm"}


def update_record(logs: dict[str, Any], *, slot: int, minibatches: int, lr: float,
                  gate_params: dict[str, float]) -> dict[str, Any]:
    """The per-update part of a metrics line from TRL's log of one optimizer step; ``slot`` is the update's index
    within its RL step (0 = the first, on-policy: no optimizer step yet on this rollout)."""
    record = {k: v for k, v in logs.items() if k.startswith("gate/") and k not in TRL_KEYS}
    record.update({new: logs[old] for old, new in TRL_KEYS.items() if old in logs})
    record.update({
        "gate/tau_pos": gate_params.get("tau_pos", float("nan")),
        "gate/tau_neg": gate_params.get("tau_neg", float("nan")),
        "policy/lr": lr, "policy/on_policy": slot == 0,
        "policy/iteration": slot // minibatches, "policy/minibatch": slot % minibatches,
    })
    return record


class RunDirLog(TrainerCallback):
    """Writes the run directory during ``trainer.train()`` (rank 0) and stops at an RL-step boundary on a signal
    (every rank, agreed by an all-reduce)."""

    def __init__(self, cfg: Config, run: RunDir):
        self.cfg, self.run = cfg, run
        self.stop: Any = None  # softgate.stopping.GracefulStop, set by the engine
        self.stopped = False
        self.done = 0  # RL steps finished
        self._pending: list[dict[str, Any]] = []
        self._writers: tuple[JsonlWriter, TrackingSinks] | None = None
        self._bar: Any = None
        self._t0 = time.perf_counter()

    def attach(self, trainer: Any) -> None:
        self.trainer = trainer
        self.geometry: Geometry = trainer.geometry
        self.main = trainer.accelerator.is_main_process
        self._lr = lr_lambda(self.cfg.optim.schedule, self.cfg.optim.warmup_steps, self.geometry.max_steps)
        self._gate_params = self.cfg.gate.spec().params

    def open(self, start: int) -> None:
        """Open the logs (rank 0) at RL step ``start``."""
        self.done = start
        if self.main:
            self._bar = tqdm(total=self.cfg.steps, initial=start, desc="RL (trl)", unit="step",
                             disable=not self.cfg.log.progress, dynamic_ncols=True)
            self._writers = (self.run.metrics_writer(),
                             TrackingSinks(self.run.path, tensorboard=self.cfg.log.tensorboard,
                                           wandb_project=self.cfg.log.wandb_project, config=to_dict(self.cfg)))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._writers is not None:
            for writer in self._writers:
                writer.close()
            self._writers = None

    def evaluate(self, model: Any, rl_step: int) -> dict[str, Any]:
        """Held-out evaluation after ``rl_step`` (rank 0), written by the native engine's ``run_eval``."""
        _, sinks = self._writers
        return run_eval(model, self.trainer.processing_class, self.trainer.scorer.data, self.cfg, rl_step, self.run,
                        sinks, self.trainer.scorer.grader)

    # -- TrainerCallback --
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.done == 0 and self.cfg.eval.size != 0 and self.main:
            self.evaluate(model, 0)
        self.trainer.accelerator.wait_for_everyone()

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step % self.geometry.updates_per_step == 0:
            self._t0 = time.perf_counter()  # a new RL step: generation happens in its first micro-batch

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not logs or "loss" not in logs:  # TRL's end-of-training summary
            return control
        step, per = state.global_step, self.geometry.updates_per_step
        self._pending.append(update_record(logs, slot=(step - 1) % per, minibatches=self.cfg.algo.minibatches,
                                           lr=self.cfg.optim.lr * self._lr(step - 1), gate_params=self._gate_params))
        if step % per:
            return control
        self.done = step // per
        records, self._pending = self._pending, []
        if self.main:
            self._write_rl_step(step, records, model)
        if self._stop_agreed() and self.done < self.cfg.steps:
            control.should_save, control.should_training_stop, self.stopped = True, True, True
        self.trainer.accelerator.wait_for_everyone()  # rank 0 evaluated; nobody runs ahead into the next rollout
        return control

    def _write_rl_step(self, step: int, records: list[dict[str, Any]], model: Any) -> None:
        """The metrics lines of the RL step that ended at optimizer step ``step``, then its evaluation if due."""
        seconds = time.perf_counter() - self._t0
        timing = {"time/step": seconds, "perf/tokens_per_s": self.trainer.rollout_tokens / seconds}
        metrics, sinks = self._writers
        first = step - len(records) + 1
        for k, record in enumerate(records):
            line = {"step": first + k, "rl_step": self.done, **self.trainer.rollout_figures, **record, **timing,
                    "time": time.time()}
            metrics.write(line)
            sinks.log(line, line["step"])
        figures = self.trainer.rollout_figures
        self._bar.update(1)
        self._bar.set_postfix(reward=f"{figures['reward/total']:.2f}", acc=f"{figures['train/accuracy']:.2f}",
                              eur=f"{records[-1].get('gate/eur', float('nan')):.3f}")
        every = self.cfg.eval.every
        if every and self.done % every == 0 and self.done < self.cfg.steps and self.cfg.eval.size != 0:
            self.evaluate(model, self.done)
        write_run_json(self.run.path, self.cfg, "running", self.done)

    def _stop_agreed(self) -> bool:
        """True on every rank when a signal reached any rank (the ranks must stop at the same step)."""
        flag = torch.tensor([1.0 if self.stop is not None and self.stop.requested else 0.0],
                            device=self.trainer.accelerator.device)
        return bool(self.trainer.accelerator.reduce(flag, reduction="sum").item() > 0)
