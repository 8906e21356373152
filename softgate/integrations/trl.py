"""softgate gates inside TRL's ``GRPOTrainer`` (TRL 1.16): any registered gate, ratio level and aggregation.

Usage::

    from softgate.integrations.trl import SoftGateGRPOConfig, SoftGateGRPOTrainer

    args = SoftGateGRPOConfig(output_dir="out", softgate_gate="erf", softgate_tau_pos=10.0, softgate_tau_neg=12.0,
                              softgate_agg="seq-mean-token-mean", num_iterations=2, ...)  # and any GRPOConfig field
    trainer = SoftGateGRPOTrainer(model=..., reward_funcs=[...], args=args, train_dataset=...)
    trainer.train()

What changes with respect to ``GRPOTrainer``: only the loss. :meth:`SoftGateGRPOTrainer._compute_loss` computes
the per-token log-probs with TRL's own helper, then calls :func:`softgate.losses.policy_loss_terms` with the gate,
the ratio level and the aggregation mode, and with a normalizer that reproduces TRL's gradient-accumulation
semantics for the matching ``loss_type`` (:func:`trl_normalizer`):

==========================  ======================  ==========================================================
``softgate_agg``            TRL ``loss_type`` with   normalizer Z (train; eval drops the accumulation factor)
                            the same aggregation
==========================  ======================  ==========================================================
seq-mean-token-mean         grpo, sapo              rows in the micro-batch * gradient_accumulation_steps
token-mean                  dapo                    tokens of the generation batch / processes / steps per generation
                                                    * gradient_accumulation_steps
seq-mean-token-sum-norm     dr_grpo                 rows * max_completion_length * gradient_accumulation_steps
==========================  ======================  ==========================================================

With ``softgate_gate="sigmoid"`` and the same temperatures this is TRL's ``loss_type="sapo"``; with ``"clip"`` it
is TRL's ``grpo`` / ``dapo`` / ``dr_grpo``, with ``delta`` its two-sided clip (``tests/test_integration_trl.py``
checks loss and gradients to 1e-6). ``loss_type`` chooses the aggregation when ``softgate_agg`` is unset (TRL's
default ``dapo``: token-mean); a ``loss_type`` that disagrees with ``softgate_agg`` is an error.

Kept from TRL: the KL penalty (``beta``, k3 against the reference model, times the importance ratio when
``use_bias_correction_kl``, aggregated like the policy term), ``top_entropy_quantile``, the
off-policy sequence mask, vLLM importance-sampling correction, ``tool_mask``, the MoE router auxiliary loss, and
TRL's ``entropy`` / ``kl`` metrics. Per-token or per-sequence weights (the entropy mask, the off-policy mask and
the vLLM importance ratios) multiply the per-token loss as in TRL; they are non-negative and detached, and a gate
depends on the advantage only through its sign, so ``w * f(r, A) * A == f(r, w A) * (w A)`` and they are folded
into the advantages. A warning is logged when TRL computes no old log-probs (:func:`gate_is_inert`: every ratio
is 1 and the gate is inert). Not supported (a clear error at construction): TRL's entropy bonus
(``entropy_coef``, ``use_adaptive_entropy``); ``delta`` with a gate other than ``clip``.

Metrics added to TRL's log (``self._metrics``): ``gate/eur``, the paper's Eq. 12 exactly, once per optimizer step
(per group numerators and denominators summed over the step's micro-batches and all processes before the ratio;
groups are TRL's, tagged at generation, see :meth:`SoftGateGRPOTrainer._generate_and_score_completions`); averaged
over processes: ``gate/soft_clip_frac``, ``gate/hard_clip_frac``, ``gate/ratio_mean``, ``gate/ratio_p05``,
``gate/ratio_p50``, ``gate/ratio_p95``, ``gate/approx_kl`` (then averaged over the micro-batches of the logging
interval, as TRL does); ``gate/clamped`` (summed over processes and micro-batches), and ``gate/ratio_min`` /
``gate/ratio_max`` (min / max over processes and micro-batches, :meth:`SoftGateGRPOTrainer.log`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

# First: checks the TRL version (and that TRL is installed) before anything reads TRL's internals.
from softgate.integrations.trl_config import (
    SUPPORTED_TRL,
    TRL_LOSS_AGG,
    SoftGateGRPOConfig,
    check_trl_version,
    gate_is_inert,
    trl_loss_type,
    warn_if_gate_is_inert,
)

from trl import GRPOTrainer  # noqa: E402  (after the version check)

from softgate.aggregate import AGG_MODES, AggMode, aggregate
from softgate.diagnostics import kl_estimate, loss_stats
from softgate.integrations.common import StepEUR, reward_functions
from softgate.losses import Level, LossOptions, compute_dtype, level_ratio, policy_loss_terms, safe_log_ratio

__all__ = [
    "GROUP_KEY",
    "SUPPORTED_TRL",
    "TRL_LOSS_AGG",
    "SoftGateGRPOConfig",
    "SoftGateGRPOTrainer",
    "check_trl_version",
    "gate_is_inert",
    "reward_functions",
    "trl_loss_type",
    "trl_normalizer",
    "warn_if_gate_is_inert",
]

logger = logging.getLogger(__name__)

# The group label of every row, added at generation (SoftGateGRPOTrainer._generate_and_score_completions).
GROUP_KEY = "softgate_group"


def trl_normalizer(
    agg: AggMode,
    *,
    num_rows: int,
    train: bool,
    grad_accum_steps: int,
    num_items_in_batch: Tensor | float | None = None,
    num_processes: int = 1,
    steps_per_generation: int = 1,
    max_completion_length: int | None = None,
) -> Tensor | float:
    """The whole-batch normalizer Z that makes ``softgate.aggregate`` reproduce TRL's loss scaling.

    TRL scales each micro-batch loss so that summing ``gradient_accumulation_steps`` micro-batches and averaging
    over processes gives the accumulation window's loss:

    - ``seq-mean-token-mean`` (TRL grpo/sapo): ``mean over rows(token-mean) / grad_accum`` -> Z = rows * grad_accum;
    - ``token-mean`` (TRL dapo): ``token-sum / (tokens of the generation batch / processes * grad_accum /
      steps_per_generation)``; ``num_items_in_batch`` is the generation batch's token count over all processes;
    - ``seq-mean-token-sum-norm`` (TRL dr_grpo): ``token-sum / (rows * max_completion_length) / grad_accum``.

    In evaluation there is no accumulation (factor 1). TRL counts every row, empty ones included.
    """
    accum = grad_accum_steps if train else 1
    match agg:
        case "seq-mean-token-mean":
            return float(num_rows * accum)
        case "seq-mean-token-sum-norm":
            if max_completion_length is None:
                raise ValueError("seq-mean-token-sum-norm needs max_completion_length")
            return float(num_rows * max_completion_length * accum)
        case "token-mean":
            if num_items_in_batch is None:
                raise ValueError("token-mean needs num_items_in_batch (TRL puts it in the inputs)")
            z = torch.as_tensor(num_items_in_batch, dtype=torch.float32).clamp(min=1.0) / num_processes
            if train:
                z = z * grad_accum_steps / steps_per_generation
            return z
    raise ValueError(f"unknown aggregation {agg!r}; known modes: {', '.join(AGG_MODES)}")


class SoftGateGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose policy loss is softgate's gated surrogate (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, SoftGateGRPOConfig):
            raise TypeError(f"SoftGateGRPOTrainer needs args=SoftGateGRPOConfig(...), got {type(self.args).__name__}")
        if self._entropy_bonus_enabled:
            raise ValueError("SoftGateGRPOTrainer does not support TRL's entropy bonus (entropy_coef="
                             f"{self.args.entropy_coef}, use_adaptive_entropy={self.args.use_adaptive_entropy}); "
                             "set entropy_coef=0 and use_adaptive_entropy=False")
        self.softgate_gate = self.args.softgate_gate_object()
        self.softgate_level: Level = self.args.softgate_level
        self.softgate_agg: AggMode = self.args.softgate_agg
        # Eq. 12 over each optimizer step (train) or each evaluation batch; the labels come from generation.
        self._softgate_eur = {"train": StepEUR(), "eval": StepEUR()}
        self._softgate_generations = 0
        warn_if_gate_is_inert(self.args)

    def gate_is_inert(self) -> bool:
        """True when TRL trains fully on-policy (r = 1 for every token): :func:`gate_is_inert` of the config."""
        return gate_is_inert(self.args)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """TRL's generation, plus the EUR group label of every row (``inputs["softgate_group"]``, [B] int64).

        The group is TRL's own: the ``num_generations`` consecutive rows of the generation batch gathered over
        processes (the rows TRL normalizes advantages over; this process holds rows ``process_index * B`` onward).
        Tagging them here keeps the group through TRL's shuffle and split into micro-batches; a generation counter
        keeps groups of different generation batches apart (one optimizer step may span two), and identical prompts
        sampled twice stay two groups, as for TRL's advantages.
        """
        output = super()._generate_and_score_completions(inputs)
        group_size = self.num_generations if self.model.training else self.num_generations_eval
        rows = output["completion_ids"].shape[0]
        first = self.accelerator.process_index * rows
        index = torch.arange(first, first + rows, device=output["completion_ids"].device)
        groups_per_generation = -(-rows * self.accelerator.num_processes // group_size)
        output[GROUP_KEY] = self._softgate_generations * groups_per_generation + index // group_size
        self._softgate_generations += 1
        return output

    def _compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> Tensor:
        """softgate's policy loss on TRL's inputs; mirrors ``GRPOTrainer._compute_loss`` outside the surrogate.

        Shapes (B rows of the micro-batch, P prompt and T completion tokens):
            inputs["prompt_ids"], inputs["prompt_mask"]: [B, P]; inputs["completion_ids"],
            inputs["completion_mask"]: [B, T]; inputs["advantages"]: [B] or [B, T];
            inputs["old_per_token_logps"], inputs["ref_per_token_logps"]: [B, T] (optional) -> []
        """
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits_to_keep = completion_ids.size(1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        mask_BT = mask.bool()

        # TRL's own log-prob pass (same chunking, multimodal inputs and MoE aux loss).
        logp_BT, entropy_BT, aux_loss = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep,
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"),
            num_images=inputs.get("num_images"),
            pixel_attention_mask=inputs.get("pixel_attention_mask"),
            spatial_shapes=inputs.get("spatial_shapes"),
            num_tiles=inputs.get("num_tiles"),
            image_sizes=inputs.get("image_sizes"),
            token_type_ids=inputs.get("token_type_ids"),
            mm_token_type_ids=inputs.get("mm_token_type_ids"),
            image_position_ids=inputs.get("image_position_ids"),
        )
        old_logp_BT = inputs.get("old_per_token_logps")
        # As in TRL: fully on-policy (num_iterations == 1, no vLLM) -> old = current, detached; the gate is inert.
        old_logp_BT = logp_BT.detach() if old_logp_BT is None else old_logp_BT

        advantages = inputs["advantages"]
        weight = self._token_weights(inputs, logp_BT, old_logp_BT, entropy_BT, mask, advantages)
        adv = advantages
        if weight is not None:
            # w * f(r, A) * A == f(r, w A) * (w A) for w >= 0 (the gate reads A only through its sign).
            adv = (advantages[:, None] if advantages.dim() == 1 else advantages) * weight  # [B, 1] or [B, T]
            if adv.shape[-1] == 1:
                adv = adv[:, 0]
            elif self.softgate_level == "sequence":
                raise ValueError("softgate_level='sequence' needs one weight per sequence, but the loss has per-token "
                                 "weights (top_entropy_quantile < 1 or token-level vLLM importance sampling); use "
                                 "softgate_level='sequence-token'")

        mode = "train" if self.model.training else "eval"
        z = trl_normalizer(
            self.softgate_agg,
            num_rows=logp_BT.shape[0],
            train=mode == "train",
            grad_accum_steps=self.current_gradient_accumulation_steps,
            num_items_in_batch=inputs.get("num_items_in_batch"),
            num_processes=self.accelerator.num_processes,
            steps_per_generation=self.args.steps_per_generation,
            max_completion_length=self.args.max_completion_length,
        )
        options = LossOptions(level=self.softgate_level, agg=self.softgate_agg,
                              log_ratio_bound=self.args.softgate_log_ratio_bound)
        loss, terms = policy_loss_terms(logp_BT, old_logp_BT, adv, mask_BT, self.softgate_gate, options, normalizer=z)
        stats = loss_stats(terms, soft_clip_threshold=self.args.softgate_soft_clip_threshold)
        if GROUP_KEY not in inputs:
            raise KeyError(f"inputs lack {GROUP_KEY!r}, the EUR group of each row that "
                           "SoftGateGRPOTrainer._generate_and_score_completions adds")
        self._softgate_eur[mode].add(terms.df, mask_BT, inputs[GROUP_KEY])
        kl_BT = None
        if self.beta != 0.0:
            kl_BT = self._kl_to_reference(inputs["ref_per_token_logps"], logp_BT, old_logp_BT, mask_BT)
            loss = loss + self.beta * aggregate(kl_BT, mask_BT, self.softgate_agg, normalizer=z)

        if self.aux_loss_enabled:
            # Scaled for accumulation like the policy term, as TRL does.
            loss = loss + self.router_aux_loss_coef * aux_loss / (self.current_gradient_accumulation_steps
                                                                  if mode == "train" else 1.0)
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())

        self._log_softgate_metrics(mode, stats, entropy_BT, mask, kl_BT)
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's log, with ``gate/ratio_min`` / ``gate/ratio_max`` / ``gate/clamped`` the min / max / sum over the
        micro-batches of the logging interval (TRL would average the per-micro-batch values)."""
        metrics = self._metrics["train" if self.model.training else "eval"]
        for key, reduce in (("gate/ratio_min", min), ("gate/ratio_max", max), ("gate/clamped", sum)):
            values = [v for v in metrics.get(key, []) if not math.isnan(v)]
            if values:
                metrics[key] = [reduce(values)]
        super().log(logs, start_time)

    def _kl_to_reference(self, ref_logp_BT: Tensor, logp_BT: Tensor, old_logp_BT: Tensor, mask_BT: Tensor) -> Tensor:
        """TRL's per-token KL penalty: k3 of ``ref - logp``, times the importance ratio when
        ``use_bias_correction_kl`` (differentiable, as in TRL: DeepSeek-V3.2's unbiased reverse-KL gradient).

        Shapes:
            ref_logp_BT, logp_BT, old_logp_BT: [B, T] float, mask_BT: [B, T] bool -> [B, T]
        """
        bound = self.args.softgate_log_ratio_bound
        dtype = compute_dtype(logp_BT, old_logp_BT)
        ref_log_ratio_BT, _ = safe_log_ratio(ref_logp_BT, logp_BT, mask_BT, bound=bound, dtype=dtype)
        kl_BT = kl_estimate(ref_log_ratio_BT, "k3")  # exp(ref - logp) - (ref - logp) - 1
        if self.args.use_bias_correction_kl:
            log_ratio_BT, _ = safe_log_ratio(logp_BT, old_logp_BT, mask_BT, bound=bound, dtype=dtype)
            kl_BT = kl_BT * level_ratio(log_ratio_BT, mask_BT, self.softgate_level)
        return kl_BT

    def _token_weights(
        self,
        inputs: dict[str, Any],
        logp_BT: Tensor,
        old_logp_BT: Tensor,
        entropy_BT: Tensor,
        mask: Tensor,
        advantages: Tensor,
    ) -> Tensor | None:
        """Product of TRL's detached multiplicative weights on the per-token loss ([B, T] or [B, 1]), or None.

        Shapes:
            logp_BT, old_logp_BT, entropy_BT, mask: [B, T]; advantages: [B] or [B, T] -> [B, T] / [B, 1] / None
        """
        weight: Tensor | None = None

        def times(w: Tensor) -> None:
            nonlocal weight
            w = w.detach()
            weight = w if weight is None else weight * w

        if self.top_entropy_quantile < 1.0:
            times(self.get_high_entropy_mask(entropy_BT, mask, 1 - self.top_entropy_quantile))
        if self.off_policy_mask_threshold is not None:
            sampling_logp_BT = inputs.get("sampling_per_token_logps", old_logp_BT)
            times(self.get_off_policy_mask(
                advantages=advantages[:, None] if advantages.dim() == 1 else advantages,
                per_token_logps=logp_BT,
                sampling_per_token_logps=sampling_logp_BT,
                mask=mask,
                off_policy_threshold=self.off_policy_mask_threshold,
            ))
        if self.use_vllm and self.vllm_importance_sampling_correction:
            times(inputs["importance_sampling_ratio"])
        return weight

    def _log_softgate_metrics(
        self, mode: str, stats: dict[str, Tensor], entropy_BT: Tensor, mask: Tensor, kl_BT: Tensor | None
    ) -> None:
        """TRL's ``entropy`` / ``kl`` metrics and softgate's gate statistics, reduced over processes."""
        metrics = self._metrics[mode]
        zero = torch.zeros((), dtype=entropy_BT.dtype, device=entropy_BT.device)
        fmask = mask.to(entropy_BT.dtype)
        # TRL's global_masked_mean: token-weighted over all processes.
        sums = torch.stack([torch.where(mask.bool(), entropy_BT, zero).sum(), fmask.sum()]).detach()
        totals = self.accelerator.reduce(sums, reduction="sum")
        metrics["entropy"].append((totals[0] / totals[1].clamp(min=1.0)).item())
        if kl_BT is not None:
            kl_zero = torch.zeros((), dtype=kl_BT.dtype, device=kl_BT.device)
            kl = torch.stack([torch.where(mask.bool(), kl_BT.detach(), kl_zero).sum(), mask.sum().to(kl_BT.dtype)])
            kl_tot = self.accelerator.reduce(kl, reduction="sum")
            metrics["kl"].append((kl_tot[0] / kl_tot[1].clamp(min=1.0)).item())

        eur = self._softgate_eur[mode]
        if mode == "eval" or len(eur) == self.current_gradient_accumulation_steps:
            # The last micro-batch of the optimizer step (an evaluation batch stands alone): Eq. 12 over all of it.
            metrics["gate/eur"].append(eur.compute().item())
        mean_keys = ("soft_clip_frac", "hard_clip_frac", "ratio_mean", "ratio_p05", "ratio_p50",
                     "ratio_p95", "approx_kl")
        local = torch.stack([*(stats[k].float() for k in mean_keys), stats["clamped"].float(),
                             stats["ratio_min"].float(), stats["ratio_max"].float()])
        gathered = self.accelerator.gather(local[None]).reshape(-1, local.numel())  # [processes, K]
        n = len(mean_keys)
        for i, key in enumerate(mean_keys):
            metrics[f"gate/{key}"].append(gathered[:, i].nanmean().item())
        metrics["gate/clamped"].append(gathered[:, n].sum().item())
        metrics["gate/ratio_min"].append(_nan_reduce(gathered[:, n + 1], torch.amin))
        metrics["gate/ratio_max"].append(_nan_reduce(gathered[:, n + 2], torch.amax))


def _nan_reduce(x: Tensor, op: Any) -> float:
    """min / max over the non-NaN entries (NaN if there is none: no valid token anywhere)."""
    valid = x[~torch.isnan(x)]
    return float("nan") if valid.numel() == 0 else op(valid).item()
