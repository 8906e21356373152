"""The RL loop: sample G completions per prompt, score them, compute group advantages, then make
``num_iterations x minibatches`` gated policy-gradient updates on the batch (paper Section 3). Top to bottom:

    run-directory check -> setup -> [resume] -> eval at start -> for each RL step:
        rollout -> rewards -> advantages -> old log-probs ->
        update phase (for each pass, for each minibatch: micro-batches (forward, gated loss, backward) -> clip ->
        step -> [EUR controller]) -> logging phase -> [eval] -> [checkpoint] -> [stop if Ctrl-C/SIGTERM came]
    -> final eval, checkpoint, summary, plots

The set-up, resume and run status around the loop live in ``softgate.lifecycle``.

The gate only acts when r = pi / pi_old differs from 1, i.e. after the first optimizer step made on a rollout.
With one pass and one minibatch every update is on-policy and every admissible gate is the plain policy gradient
(paper, SAPO facts); the trainer warns about it once. With ``algo.staleness = k`` the rollouts and their old
log-probs come from the policy as it was k optimizer steps earlier (``softgate.staleness``), as in an asynchronous
pipeline: then even the first update of a rollout is off-policy.
"""

from __future__ import annotations

import functools
import math
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from softgate import gates
from softgate.advantages import group_advantages, zero_variance_groups
from softgate.aggregate import normalizer as batch_normalizer
from softgate.checkpoint import save_checkpoint
from softgate.config import Config, save_config, to_dict
from softgate.data import TrainingData
from softgate.device import autocast
from softgate.diagnostics import LossTerms, loss_stats
from softgate.evaluation import evaluate_policy
from softgate.forward import completion_logprobs
from softgate.grading import Grader, GraderStats
from softgate.inspect import LastUpdate, sample_records
from softgate.lifecycle import build_summary, interrupt_message, prepare_run_dir, restore, setup, write_run_json
from softgate.lifecycle import load_policy as load_policy  # public as softgate.train.load_policy
from softgate.lora import without_adapter
from softgate.losses import LossOptions, policy_loss_terms
from softgate.rollout import Rollout
from softgate.rundir import JsonlWriter, RunDir, RunInterrupted
from softgate.staleness import BehaviourPolicy
from softgate.stopping import GracefulStop
from softgate.threads import apply_threads
from softgate.tracking import TrackingSinks, check_trackers

# --------------------------------------------------------------------------------------------------------------
# Small helpers the loop calls. Each is a plain function; the loop below reads top to bottom.


def make_gate(cfg: Config, tau_scale: float = 1.0) -> gates.Gate:
    """The configured gate, with both temperatures multiplied by ``tau_scale`` (the EUR controller's knob)."""
    spec = cfg.gate.spec()
    scaled = {key: spec.params[key] * tau_scale for key in ("tau_pos", "tau_neg") if key in spec.params}
    return spec.build(**scaled)


def eur_controller_step(tau_scale: float, eur: float, target: float, rate: float) -> float:
    """One multiplicative update of the temperature scale, like PPO's adaptive-KL controller.

    EUR above the target (too much gradient gets through) raises tau, which narrows the gate; below it lowers tau.
    The scale stays within [1e-3, 1e3] so that one bad batch cannot run it away.
    """
    return min(max(tau_scale * math.exp(rate * (eur - target)), 1e-3), 1e3)


def step_seed(seed: int, step: int) -> int:
    """Sampling seed of RL step ``step``: a run killed and resumed draws the same completions."""
    return (seed * 1_000_003 + step * 7919) % (2**31 - 1)


class PromptStream:
    """Endless shuffled pass over the training examples; its position is saved in checkpoints."""

    def __init__(self, n: int, seed: int, cursor: int = 0):
        self.n, self.seed, self.cursor = n, seed, cursor
        self._epoch, self._order = -1, None

    def take(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            epoch, pos = divmod(self.cursor, self.n)
            if epoch != self._epoch:  # a new shuffle per pass over the data, a function of (seed, epoch) only
                self._epoch = epoch
                self._order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            out.append(int(self._order[pos]))
            self.cursor += 1
        return out


def score(tasks: list, rollout: Rollout, references: list[str], cfg: Config,
          grader: Grader) -> tuple[dict[str, torch.Tensor], GraderStats]:
    """Reward components per completion and their weighted total, and the grader's counters for this batch;
    ``tasks[i]`` grades completion i (mixed data can hold several tasks). Shapes: each [N]."""
    answer = torch.zeros(len(references))
    fmt = torch.zeros(len(references))
    graded = GraderStats()
    for task in {id(t): t for t in tasks}.values():
        rows = [i for i, t in enumerate(tasks) if t is task]
        texts = [rollout.completions[i] for i in rows]
        grades = task.grade_answers(texts, [references[i] for i in rows], grader)
        answer[rows] = torch.tensor(grades.verdicts, dtype=torch.float32)
        fmt[rows] = torch.tensor(task.format_rewards(texts), dtype=torch.float32)
        graded += grades.stats
    total = cfg.task.answer_weight * answer + cfg.task.format_weight * fmt
    return {"total": total, "answer": answer, "format": fmt}, graded


def grader_metrics(graded: GraderStats) -> dict[str, float]:
    """Grader events of one scoring call: timeouts and errors give reward 0 and are counted, never hidden."""
    return {f"grader/{k}": float(getattr(graded, k)) for k in ("timeouts", "errors", "too_long", "no_answer")}


@torch.no_grad()
def rollout_logprobs(model, rollout: Rollout, *, micro: int, temperature: float, shared_prompt: bool,
                     impl: str = "auto") -> torch.Tensor:
    """Log-probs of every completion token of ``rollout`` under ``model``, in micro-batches: the old log-probs
    (``model`` = the policy that sampled) or the reference log-probs (``model`` = the reference). Shape: [N, T]."""
    T = rollout.completion_mask.shape[1]
    out = []
    for i in range(0, rollout.input_ids.shape[0], micro):
        rows = slice(i, i + micro)
        logp, _ = completion_logprobs(model, rollout.input_ids[rows], rollout.attention_mask[rows], T,
                                      temperature=temperature, impl=impl,
                                      group_ids=rollout.group_ids[rows] if shared_prompt else None)
        out.append(logp)
    return torch.cat(out)


def reference_logprobs(model, ref_model, rollout: Rollout, **kwargs) -> torch.Tensor:
    """Log-probs of ``rollout`` under the KL reference: ``ref_model``, the frozen copy of the start policy, or
    when it is None (LoRA) the policy with its adapters switched off, i.e. the base model without a second copy.
    ``kwargs`` as for :func:`rollout_logprobs`. Shape: [N, T]."""
    if ref_model is not None:
        return rollout_logprobs(ref_model, rollout, **kwargs)
    with without_adapter(model):
        return rollout_logprobs(model, rollout, **kwargs)


@dataclass
class RolloutBatch:
    """What the updates of one RL step read. N = prompts x G sequences, T = completion length.

    Fields:
        rollout:  the sampled sequences
        old_logp: [N, T] log-probs under the policy that sampled them (pi_old)
        ref_logp: [N, T] log-probs under the reference policy, or None (no KL term)
        adv:      [N] group advantages
        keep:     [N] bool, False for the rows of groups dropped for zero reward variance
        policy_lag: optimizer steps between the policy that sampled and the policy the updates start from
    """

    rollout: Rollout
    old_logp: torch.Tensor
    ref_logp: torch.Tensor | None
    adv: torch.Tensor
    keep: torch.Tensor
    policy_lag: int = 0


def update_on_minibatch(model, rollout: Rollout, idx: torch.Tensor, *, old_logp, ref_logp, adv, gate,
                        cfg: Config, keep: LastUpdate | None = None) -> dict[str, float]:
    """Forward/backward over the micro-batches of one minibatch, gradients accumulated (no optimizer step);
    returns the minibatch's loss statistics. ``keep`` (``log.samples_every``) receives this update's per-token terms.

    Every micro-batch loss uses the whole minibatch's normalizer, so the accumulated gradient equals the gradient
    of the minibatch loss whatever the micro-batch size. The statistics are reduced once, over the whole minibatch
    (groups intact, for EUR), from the per-token tensors of the very loss computations that were backpropagated.
    """
    T = rollout.completion_mask.shape[1]
    norm = batch_normalizer(rollout.completion_mask[idx], cfg.loss.agg, norm_len=cfg.rollout.max_new_tokens)
    options = LossOptions(level=cfg.loss.level, agg=cfg.loss.agg, norm_len=cfg.rollout.max_new_tokens,
                          log_ratio_bound=cfg.loss.log_ratio_bound, kl_coef=cfg.loss.kl_coef,
                          kl_estimator=cfg.loss.kl_estimator, entropy_coef=cfg.loss.entropy_coef)
    parts = []
    device = rollout.input_ids.device
    for chunk in idx.split(cfg.algo.micro_batch_size):
        with autocast(device, cfg.model.compute_dtype):  # forward in the compute dtype; log-softmax in float32
            logp, entropy = completion_logprobs(
                model, rollout.input_ids[chunk], rollout.attention_mask[chunk], T,
                temperature=cfg.rollout.temperature, with_entropy=True, impl=cfg.model.logprob_impl,
                group_ids=rollout.group_ids[chunk] if cfg.model.shared_prompt_pass else None,
            )
            # The entropy is always passed: with entropy_coef = 0 it is only reported, and costs no backward.
            loss, terms = policy_loss_terms(logp, old_logp[chunk], adv[chunk], rollout.completion_mask[chunk], gate,
                                            options, normalizer=norm, entropy=entropy,
                                            ref_logp=None if ref_logp is None else ref_logp[chunk])
        loss.backward()  # outside autocast, as torch.amp recommends
        parts.append(terms)
    terms = LossTerms.cat(parts)
    if keep is not None:  # the very tensors behind this gradient; a later update of the RL step overwrites them
        keep.idx, keep.terms, keep.gate = idx, terms, gate
    stats = loss_stats(terms, group_ids=rollout.group_ids[idx])
    return {k: float(v) for k, v in stats.items()}


def minibatch_plan(P: int, G: int, minibatches: int, passes: int, split: str) -> list[list[torch.Tensor]]:
    """The row indices of each minibatch of each pass over a rollout of ``P`` groups of ``G`` rows (group g holds
    rows g*G .. g*G+G-1), by ``algo.minibatch_split``:

    - ``groups``: minibatches of whole groups, the first pass in order, every later pass in a new random order of
      the groups (each minibatch holds whole groups, as Eq. 12's EUR is defined).
    - ``rows``: TRL GRPOTrainer's (``_prepare_inputs``: ``shuffle_sequence_dict`` then ``split_tensor_dict``): the
      rows shuffled once per rollout and cut into minibatches that every pass reuses in the same order, so each
      minibatch holds part of every group.

    Shapes: ``passes`` lists of ``minibatches`` int64 tensors of P*G/minibatches row indices each.
    """
    if split == "rows":
        return [list(torch.randperm(P * G).split(P * G // minibatches))] * passes
    plan = []
    for iteration in range(passes):
        order = torch.randperm(P) if iteration > 0 else torch.arange(P)
        plan.append([(chunk[:, None] * G + torch.arange(G)).reshape(-1) for chunk in order.split(P // minibatches)])
    return plan


def update_phase(model, optimizer, scheduler, batch: RolloutBatch, tau_scale: float, cfg: Config,
                 behaviour: BehaviourPolicy | None = None,
                 keep: LastUpdate | None = None) -> tuple[list[dict[str, Any]], float]:
    """The updates of one RL step: ``algo.num_iterations`` passes over the batch, each split into
    ``algo.minibatches`` minibatches (:func:`minibatch_plan`: whole groups by default), one optimizer step per
    minibatch.

    Each minibatch is one slot of the learning-rate schedule: a minibatch whose groups were all dropped
    (``algo.drop_zero_variance``) makes no update but still advances the schedule, so that linear and cosine
    schedules end with the run. An update is on-policy when no optimizer step was made since the rollout was
    sampled (r = 1 exactly, EUR = 1 whatever the gate): the EUR controller skips those. With a lagged rollout
    (``batch.policy_lag > 0``) no update is. ``behaviour`` (``algo.staleness > 0``) records the policy before
    each optimizer step. ``keep`` ends up holding the terms of the last update made.

    Returns one record per update made, and the EUR controller's temperature scale after them.
    """
    plan = minibatch_plan(cfg.rollout.prompts_per_step, cfg.rollout.num_generations, cfg.algo.minibatches,
                          cfg.algo.num_iterations, cfg.algo.minibatch_split)
    records, stepped = [], False
    for iteration, minibatches in enumerate(plan):
        for mb, idx in enumerate(minibatches):
            idx = idx[batch.keep[idx]]
            if idx.numel() == 0:  # every group here had zero reward variance and was dropped
                _advance_schedule(scheduler)
                continue
            gate = make_gate(cfg, tau_scale)
            stats = update_on_minibatch(model, batch.rollout, idx, old_logp=batch.old_logp, ref_logp=batch.ref_logp,
                                        adv=batch.adv, gate=gate, cfg=cfg, keep=keep)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else float("inf"))
            lr = scheduler.get_last_lr()[0]
            if behaviour is not None:
                behaviour.record(model)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            # pi = pi_old only when no optimizer step separates them: none since the rollout, and none before it.
            on_policy = not stepped and batch.policy_lag == 0
            stepped = True
            if cfg.algo.eur_target is not None and not on_policy:
                tau_scale = eur_controller_step(tau_scale, stats["eur"], cfg.algo.eur_target, cfg.algo.eur_rate)
            records.append(_update_record(stats, gate, float(grad_norm), lr, iteration, mb, on_policy))
    return records, tau_scale


def _advance_schedule(scheduler) -> None:
    """Step the LR schedule over a minibatch that makes no update."""
    with warnings.catch_warnings():
        # torch warns when a run's first scheduler step comes before any optimizer step; here that is the rule.
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        scheduler.step()


def _update_record(stats: dict[str, float], gate, grad_norm: float, lr: float, iteration: int, mb: int,
                   on_policy: bool) -> dict[str, Any]:
    record = {f"gate/{k}": stats[k] for k in ("eur", "soft_clip_frac", "hard_clip_frac", "ratio_mean", "ratio_min",
                                              "ratio_max", "ratio_p05", "ratio_p50", "ratio_p95", "clamped")}
    record.update({
        "gate/tau_pos": gate.params.get("tau_pos", float("nan")),
        "gate/tau_neg": gate.params.get("tau_neg", float("nan")),
        "policy/entropy": stats["entropy"], "policy/approx_kl": stats["approx_kl"], "policy/loss": stats["loss"],
        "policy/grad_norm": grad_norm, "policy/lr": lr, "policy/on_policy": on_policy,
        "policy/iteration": iteration, "policy/minibatch": mb,
    })
    if "kl_ref" in stats:
        record["policy/kl_ref"] = stats["kl_ref"]
    return record


def log_phase(log: JsonlWriter, sinks: TrackingSinks, bar, step: int, records: list[dict[str, Any]],
              rollout_figures: dict[str, float], timing: dict[str, float], updates_per_step: int) -> None:
    """One metrics line per update of RL step ``step`` (rollout figures and timing repeated, gate figures per
    update), and the progress bar's figures."""
    first_update = step * updates_per_step
    for k, rec in enumerate(records):
        line = {"step": first_update + k + 1, "rl_step": step + 1, **rollout_figures, **rec, **timing,
                "time": time.time()}
        log.write(line)
        sinks.log(line, line["step"])
    last = records[-1] if records else {}
    bar.set_postfix(reward=f"{rollout_figures['reward/total']:.2f}", acc=f"{rollout_figures['train/accuracy']:.2f}",
                    fmt=f"{rollout_figures['train/format_rate']:.2f}",
                    eur=f"{last.get('gate/eur', float('nan')):.3f}",
                    ent=f"{last.get('policy/entropy', float('nan')):.2f}")


def rollout_metrics(rewards: dict[str, torch.Tensor], rollout: Rollout) -> dict[str, float]:
    lengths = rollout.completion_lengths.float()
    return {
        "reward/total": rewards["total"].mean().item(),
        "reward/answer": rewards["answer"].mean().item(),
        "reward/format": rewards["format"].mean().item(),
        "train/accuracy": (rewards["answer"] == 1.0).float().mean().item(),
        "train/format_rate": (rewards["format"] == 1.0).float().mean().item(),
        "response/length_mean": lengths.mean().item(),
        "response/length_max": lengths.max().item(),
        "response/truncated_frac": rollout.truncated.float().mean().item(),
    }


def step_timing(t0: float, t_gen: float, t_logp: float, t_train: float, tokens: int) -> dict[str, float]:
    return {"time/generate": t_gen - t0, "time/logprobs": t_logp - t_gen, "time/train": t_train - t_logp,
            "time/step": t_train - t0, "perf/tokens_per_s": tokens / (t_train - t0)}


def run_eval(model, tokenizer, data: TrainingData, cfg: Config, step: int, run: RunDir, sinks: TrackingSinks,
             grader: Grader) -> dict[str, Any]:
    """Held-out evaluation after RL step ``step``, written to eval.jsonl and the trackers; returns its line.

    eval.jsonl holds one line per (step, task). A line already there for this step is the evaluation of the same
    weights: a run that failed after its final evaluation (in its summary or plots) and is resumed from its final
    checkpoint comes back here. Made with the same settings, that line is returned as it is, without evaluating
    again; made with others (``eval.*`` changed on resume), it is moved to eval.orphaned.jsonl and the evaluation
    is made anew.
    """
    how = dict(temperature=cfg.eval.temperature, seed=cfg.seed + 12345,
               max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens)
    first_update = step * cfg.algo.num_iterations * cfg.algo.minibatches
    held = run.find_eval(first_update, data.task.name)
    if held is not None and held.get("eval/n") == len(data.test) and \
            all(held.get(f"eval/{k}") == v for k, v in how.items()):
        return held
    with autocast(next(model.parameters()).device, cfg.model.compute_dtype):
        result = evaluate_policy(model, tokenizer, data.task, data.test, batch_size=cfg.eval.batch_size,
                                 grader=grader, **how)
    record = {"rl_step": step, "step": first_update, "eval/task": data.task.name,
              **{f"eval/{k}": v for k, v in result.summary.items()}}
    run.write_eval(record)
    sinks.log(record, first_update)
    return record


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict[str, Any]


# --------------------------------------------------------------------------------------------------------------
# The loop.


def train(cfg: Config, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Run RL as configured. ``resume`` continues the run in ``cfg.output_dir`` from its newest checkpoint;
    ``overwrite`` moves a run found there aside first. Ctrl-C or SIGTERM stops at the next RL-step boundary with a
    checkpoint (``RunInterrupted``); a second one aborts at once. (Longer than 80 lines: the loop reads top to
    bottom in one place, as nanoGPT's does.)"""
    if cfg.engine != "native":
        raise ValueError(f"engine={cfg.engine!r}: softgate.train.train is the native engine; use softgate.engines.run "
                         f"or `softgate train --engine {cfg.engine}`")
    run = RunDir(cfg.output_dir)
    check_trackers(tensorboard=cfg.log.tensorboard, wandb_project=cfg.log.wandb_project)  # before the model loads
    if not prepare_run_dir(run, cfg, resume=resume, overwrite=overwrite):
        return TrainResult(run.path, run.read_summary() or {})
    torch.manual_seed(cfg.seed)
    apply_threads(cfg.model.threads)
    if cfg.algo.num_iterations == 1 and cfg.algo.minibatches == 1 and cfg.algo.staleness == 0:
        warnings.warn(
            "algo.num_iterations=1 and algo.minibatches=1: every update is on-policy (r = 1 exactly), so every "
            "admissible gate gives the plain policy gradient and the gate has no effect. Reuse rollouts "
            "(num_iterations > 1) or split them into minibatches for the gate to act.", stacklevel=2)
    with GracefulStop() as stop:
        s = setup(cfg)  # nothing is written to the run directory before the model and data loaded
        model, data, grader = s.model, s.data, s.grader
        start_step, tau_scale, cursor = restore(run, s) if resume else (0, 1.0, 0)
        run.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config_yaml)  # on resume: the saved config with the changes --resume allowed
        precision = functools.partial(autocast, s.device, cfg.model.compute_dtype)
        behaviour_model = model if s.behaviour is None else s.behaviour.model  # pi_old: samples and old log-probs
        G, P = cfg.rollout.num_generations, cfg.rollout.prompts_per_step
        updates_per_step = cfg.algo.num_iterations * cfg.algo.minibatches  # update slots per RL step
        logprob_args = dict(micro=cfg.algo.micro_batch_size, temperature=cfg.rollout.temperature,
                            shared_prompt=cfg.model.shared_prompt_pass, impl=cfg.model.logprob_impl)
        stream = PromptStream(len(data.train), cfg.seed, cursor)
        log = run.metrics_writer()
        sinks = TrackingSinks(run.path, tensorboard=cfg.log.tensorboard, wandb_project=cfg.log.wandb_project,
                              config=to_dict(cfg))
        write_run_json(run.path, cfg, "running", start_step)

        def checkpoint(step: int) -> None:
            save_checkpoint(run.path, step, model=model, tokenizer=s.tokenizer, optimizer=s.optimizer,
                            scheduler=s.scheduler, state={"tau_scale": tau_scale, "cursor": stream.cursor},
                            keep=cfg.log.keep_checkpoints,
                            policy_ring=s.behaviour.state() if s.behaviour is not None else None)

        bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc="RL", unit="step",
                   disable=not cfg.log.progress, dynamic_ncols=True)
        done = start_step
        try:
            if start_step == 0 and cfg.eval.size != 0:
                run_eval(model, s.tokenizer, data, cfg, 0, run, sinks, grader)
            for step in bar:
                if stop.requested:
                    break
                t0 = time.perf_counter()
                torch.manual_seed(step_seed(cfg.seed, step))
                batch_idx = stream.take(P)

                # 1. rollout: G completions per prompt from the behaviour policy: the current policy, or with
                # algo.staleness = k the policy as it was k optimizer steps earlier (fewer at the start of a run).
                lag = s.behaviour.sync(model) if s.behaviour is not None else 0
                with precision():  # samples and old log-probs from the same numerics: exactly pi_old
                    rollout = s.sampler.sample([data.prompts[i] for i in batch_idx], G,
                                               temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                               max_new_tokens=cfg.rollout.max_new_tokens)
                t_gen = time.perf_counter()

                # 2. rewards and group advantages (paper Section 2: A_i = (R_i - mean R) / std R).
                rewards, graded = score([data.graders[i] for i in batch_idx for _ in range(G)], rollout,
                                        [data.train[i].reference for i in batch_idx for _ in range(G)], cfg, grader)
                adv = group_advantages(rewards["total"], G, cfg.algo.advantage).to(s.device)
                keep = (~zero_variance_groups(rewards["total"], G) if cfg.algo.drop_zero_variance
                        else torch.ones(len(adv), dtype=torch.bool))

                # 3. old log-probs once per rollout batch (and reference log-probs for the KL penalty).
                model.eval()
                with precision():
                    old_logp = rollout_logprobs(behaviour_model, rollout, **logprob_args)
                    ref_logp = (reference_logprobs(model, s.ref_model, rollout, **logprob_args)
                                if cfg.loss.kl_coef > 0 else None)
                model.train()
                t_logp = time.perf_counter()

                # 4. update phase, then 5. logging phase: one metrics line per optimizer step (and with
                # log.samples_every, a few completions with the per-token r and f'(r) of the last update).
                last = LastUpdate() if cfg.log.samples_every > 0 and (step + 1) % cfg.log.samples_every == 0 else None
                records, tau_scale = update_phase(model, s.optimizer, s.scheduler,
                                                  RolloutBatch(rollout, old_logp, ref_logp, adv, keep, lag), tau_scale,
                                                  cfg, s.behaviour, keep=last)
                if last is not None:
                    run.write_samples(sample_records(last, rollout, adv, s.tokenizer, step + 1))
                timing = step_timing(t0, t_gen, t_logp, time.perf_counter(), int(rollout.completion_lengths.sum()))
                log_phase(log, sinks, bar, step, records,
                          {**rollout_metrics(rewards, rollout), **grader_metrics(graded), "rollout/policy_lag": lag},
                          timing, updates_per_step)

                done = step + 1
                if cfg.eval.every and done % cfg.eval.every == 0 and done < cfg.steps and cfg.eval.size != 0:
                    run_eval(model, s.tokenizer, data, cfg, done, run, sinks, grader)
                if done < cfg.steps and (stop.requested or (cfg.log.save_every and done % cfg.log.save_every == 0)):
                    checkpoint(done)
                write_run_json(run.path, cfg, "running", done)
            bar.close()
            log.close()
            if stop.requested and done < cfg.steps:
                write_run_json(run.path, cfg, "interrupted", done)
                raise RunInterrupted(interrupt_message(run, cfg, done, aborted=False), 128 + stop.signum)

            # --- the end: final eval, checkpoint, summary, plots ---
            final_eval = run_eval(model, s.tokenizer, data, cfg, cfg.steps, run, sinks, grader) \
                if cfg.eval.size != 0 else {}
            checkpoint(cfg.steps)
            summary = build_summary(run.path, cfg)
            run.write_summary(summary)
            from softgate.plots import plot_run

            plot_run(run.path)
            write_run_json(run.path, cfg, "finished", cfg.steps, final_eval_accuracy=final_eval.get("eval/accuracy"))
        except RunInterrupted:
            raise
        except KeyboardInterrupt:  # a second Ctrl-C: the newest checkpoint is the state to resume from
            write_run_json(run.path, cfg, "interrupted", done)
            raise RunInterrupted(interrupt_message(run, cfg, done, aborted=True),
                                 128 + (stop.signum or signal.SIGINT)) from None
        except BaseException:
            write_run_json(run.path, cfg, "failed", done)
            raise
        finally:  # closing twice is harmless; these must close on every path
            bar.close()
            log.close()
            sinks.close()
    return TrainResult(run.path, summary)
