"""Policy losses: the gated surrogate of the paper (token, sequence and sequence-token ratios) and CISPO.

Three independent axes, each a plain argument:

- the **gate** ``f`` (a :class:`softgate.gates.Gate`, any object with ``f(ratio, adv)`` / ``df(ratio, adv)``);
- the **level** of the importance ratio fed to the gate (``token``, ``sequence``, ``sequence-token``);
- the **aggregation** of per-token losses (:mod:`softgate.aggregate`: ``token-mean``, ``seq-mean-token-mean``,
  ``seq-mean-token-sum-norm``) with an explicit whole-batch normalizer for gradient accumulation.

The per-token surrogate is the paper's ``J_{i,t} = f(r_{i,t}, A_{i,t}) * A_{i,t}`` and the loss is ``-J``
aggregated. Since ``d r / d logp = r``, the gradient with respect to ``logp_{i,t}`` is exactly
``-f'(r_{i,t}) * r_{i,t} * A_{i,t} * w_{i,t}`` (``w`` the aggregation weight, ``softgate.aggregate.token_weights``);
this is the paper's "f'(r) * r * grad log pi * A" (section "Objective"). The gate is not detached (a detached
gate would give ``f(r) * grad log pi``, the wrong gradient): the loss is built as ``f(r) + f'(r) * (r - sg(r))``,
whose value is f(r) and whose gradient is f'(r) exactly, so ``Gate.df`` defines the gradient (the gates
guarantee it equals autograd of ``Gate.f``) and each of f, f' is evaluated once per call.

Numerical safety (the same in every loss here):

1. the log-ratio ``logp - old_logp`` is computed in float32 (float64 if an input is float64), whatever the
   dtype of the log-probs (bf16 log-probs lose ~3 significant digits, and exp amplifies that);
2. masked positions are replaced by 0 with ``torch.where`` on the log-ratio *before* ``exp``, so NaN/inf stored
   at masked positions reach neither the loss nor the gradient (the gradient there is exactly 0);
3. the log-ratio is clamped to ``[-log_ratio_bound, +log_ratio_bound]``; a clamped token gets zero gradient
   (the gate would give it (almost) none anyway) and is counted in ``stats["clamped"]``;
4. all-masked rows contribute 0; an empty batch gives a zero loss that is still attached to the graph.

One computation, two uses. :func:`policy_loss_terms` returns the loss and a :class:`LossTerms`: the per-token
tensors the statistics are made of (ratio, f'(r), log-ratio, mask, ...), detached, and the loss terms. Under
gradient accumulation the trainer joins the micro-batches' terms with :meth:`LossTerms.cat` and reduces them once
with :func:`loss_stats`: the statistics come from the very tensors that produced the gradient, with no second pass
(EUR needs whole groups, which a minibatch holds). :func:`policy_loss` is both steps in one call.

Statistics (``stats``, all 0-dim detached tensors in the compute dtype; no ``.item()``): see
:func:`policy_loss`. Keys carry no prefix; the trainer namespaces them (``gate/eur``, ``policy/approx_kl``...).
Diagnostics (EUR, fractions, ratio stats, ``approx_kl``, ``kl_ref``, ``entropy``) describe the tokens reduced;
loss terms (``loss``, ``pg_loss``, ``kl_loss``, ``entropy_loss``) add up over micro-batches when a whole-batch
normalizer is passed (``LossTerms.cat`` sums them). Undefined statistics (no valid token) are NaN.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from softgate.aggregate import AGG_MODES, AggMode, aggregate, masked_mean
from softgate.diagnostics import KL_ESTIMATORS, KLEstimator, LossTerms, kl_estimate, loss_stats

from softgate.choices import LEVELS, Level

__all__ = [
    "LEVELS",
    "GateLike",
    "Level",
    "LossOptions",
    "LossTerms",
    "cispo_loss",
    "compute_dtype",
    "level_ratio",
    "loss_stats",
    "policy_loss",
    "policy_loss_terms",
    "safe_log_ratio",
]


class GateLike(Protocol):
    """What the losses need from a gate (``softgate.gates.Gate`` satisfies it)."""

    name: str
    params: dict[str, float]

    def f(self, ratio: Tensor, advantages: Tensor) -> Tensor: ...

    def df(self, ratio: Tensor, advantages: Tensor) -> Tensor: ...


# --------------------------------------------------------------------------------------------------------------
# Building blocks (public: the trainer and the integrations reuse them)
# --------------------------------------------------------------------------------------------------------------


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 if any given tensor is float64, else float32 (the dtype the log-ratio and the loss use)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def safe_log_ratio(
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    mask_BT: Tensor,
    *,
    bound: float = 20.0,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Token log-ratio ``logp - old_logp``: upcast, masked to 0 before any ``exp``, clamped to +-``bound``.

    Returns ``(log_ratio_BT, clamped)``: the differentiable log-ratio (0 at masked positions, zero gradient
    there and at clamped tokens) and the number of valid tokens whose raw log-ratio exceeded the bound
    (inf counts; NaN at a *valid* position is an upstream bug and is deliberately left to propagate).

    Shapes:
        logp_BT, old_logp_BT: [B, T] float, mask_BT: [B, T] bool -> ([B, T] dtype, [] dtype)
    """
    if bound <= 0:
        raise ValueError(f"log_ratio_bound must be positive, got {bound}")
    dtype = compute_dtype(logp_BT, old_logp_BT) if dtype is None else dtype
    raw_BT = logp_BT.to(dtype) - old_logp_BT.to(dtype)
    zero = torch.zeros((), dtype=dtype, device=raw_BT.device)
    # where() on the log-ratio, before exp: its backward sends exactly 0 (not 0 * nan) to masked positions.
    log_ratio_BT = torch.where(mask_BT, raw_BT, zero)
    with torch.no_grad():
        clamped = (mask_BT & (log_ratio_BT.abs() > bound)).sum().to(dtype)
    return log_ratio_BT.clamp(-bound, bound), clamped


def level_ratio(log_ratio_BT: Tensor, mask_BT: Tensor, level: Level) -> Tensor:
    """The importance ratio fed to the gate at every token, for the chosen level.

    - ``token`` (the paper): ``r_{i,t} = exp(log_ratio_{i,t})``.
    - ``sequence`` (GSPO, arXiv 2507.18071): ``s_i = exp(mean_t log_ratio_{i,t})`` over valid tokens, the same
      value at every token of row i; its gradient reaches every token through the mean (1/|o_i| each).
    - ``sequence-token`` (GSPO-token): value ``s_i`` at every token, but the gradient of token t is that of a
      token ratio of value ``s_i``: ``sg(s_i) * exp(log_ratio - sg(log_ratio))``, so ``d/d logp_{i,t} = s_i``.

    All-masked rows get ratio 1 (log-ratio 0).

    Shapes:
        log_ratio_BT: [B, T] float (already masked and clamped), mask_BT: [B, T] bool -> [B, T]
    """
    match level:
        case "token":
            return log_ratio_BT.exp()
        case "sequence":
            seq_log_ratio_B = masked_mean(log_ratio_BT, mask_BT, dim=1)
            return seq_log_ratio_B.exp()[:, None].expand_as(log_ratio_BT)
        case "sequence-token":
            seq_log_ratio_B1 = masked_mean(log_ratio_BT, mask_BT, dim=1).detach()[:, None]
            return (seq_log_ratio_B1 + log_ratio_BT - log_ratio_BT.detach()).exp()
    raise ValueError(f"unknown ratio level {level!r}; known levels: {', '.join(LEVELS)}")


def _advantages(advantages: Tensor, mask_BT: Tensor, level: Level, dtype: torch.dtype) -> Tensor:
    """Advantages in ``dtype``, shaped to broadcast against [B, T]: [B, 1] for per-sequence advantages (0 on
    all-masked rows, so a NaN placeholder there cannot leak), [B, T] for per-token ones (0 at masked positions).

    Keeping per-sequence advantages as [B, 1] lets the gate pick its temperature per row instead of per token.
    """
    B, T = mask_BT.shape
    zero = torch.zeros((), dtype=dtype, device=mask_BT.device)
    if advantages.shape == (B,):
        return torch.where(mask_BT.any(dim=1), advantages.to(dtype), zero)[:, None]
    if advantages.shape == (B, T):
        if level == "sequence":
            raise ValueError("level='sequence' uses one gate per sequence and needs advantages of shape [B] "
                             f"(B={B}), got per-token advantages of shape {tuple(advantages.shape)}")
        return torch.where(mask_BT, advantages.to(dtype), zero)
    raise ValueError(f"advantages must have shape [B]=({B},) or [B, T]=({B}, {T}), got {tuple(advantages.shape)}")


def _check_inputs(logp: Tensor, old_logp: Tensor, mask: Tensor, level: str, agg: str) -> None:
    if logp.dim() != 2:
        raise ValueError(f"logp must be 2-D [B, T], got shape {tuple(logp.shape)}")
    if old_logp.shape != logp.shape:
        raise ValueError(f"old_logp has shape {tuple(old_logp.shape)}, logp has {tuple(logp.shape)}")
    if mask.shape != logp.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, logp has {tuple(logp.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = the token counts), got dtype {mask.dtype}; "
                        "convert with mask.bool()")
    if level not in LEVELS:
        raise ValueError(f"unknown ratio level {level!r}; known levels: {', '.join(LEVELS)}")
    if agg not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {agg!r}; known modes: {', '.join(AGG_MODES)}")


@dataclass(frozen=True)
class LossOptions:
    """The scalar settings of a loss, apart from the tensors, the gate and the normalizer (see :func:`policy_loss`
    for each). The trainer builds one from its config and passes it to every micro-batch."""

    level: Level = "token"
    agg: AggMode = "seq-mean-token-mean"
    norm_len: int | None = None
    log_ratio_bound: float = 20.0
    kl_coef: float = 0.0
    kl_estimator: KLEstimator = "k3"
    entropy_coef: float = 0.0


# --------------------------------------------------------------------------------------------------------------
# Losses: one core, two per-token objectives
# --------------------------------------------------------------------------------------------------------------


class _Objective(NamedTuple):
    """A loss's per-token part, as the shared core needs it (all [B, T])."""

    objective: Tensor  # J_{i,t}, differentiable: the loss is -agg(J)
    ratio: Tensor  # the ratio the statistics describe, detached
    df: Tensor  # f'(r) or its equivalent, detached
    clipped: Tensor | None = None  # CISPO: weights that were clipped


def _gated_objective(gate: GateLike, logp_BT: Tensor, log_ratio_BT: Tensor, mask_BT: Tensor, adv: Tensor,
                     level: Level) -> _Objective:
    """The paper's ``J = f(r, A) * A``, whose gradient is f'(r) * A * dr = f'(r) * r * A * dlogp.

    f and f' are each evaluated once, without autograd, and combined so that the value is f(r) and the gradient
    w.r.t. r is exactly f'(r) (the term f' * (r - sg(r)) is 0 in value): autograd through f would evaluate f'
    again in its backward, and the stats need f' anyway. First derivatives only (no create_graph).
    """
    ratio_BT = level_ratio(log_ratio_BT, mask_BT, level)
    with torch.no_grad():
        ratio_value_BT = ratio_BT.detach()
        f_BT = gate.f(ratio_value_BT, adv)
        df_BT = gate.df(ratio_value_BT, adv)
    return _Objective((f_BT + df_BT * (ratio_BT - ratio_value_BT)) * adv, ratio_value_BT, df_BT)


def _cispo_objective(eps_low: float, eps_high: float, logp_BT: Tensor, log_ratio_BT: Tensor, mask_BT: Tensor,
                     adv: Tensor, level: Level) -> _Objective:
    """CISPO's ``J = sg(clip(r)) * A * logp``; its equivalent gate derivative is ``clip(r) / r``."""
    # The weight is stop-gradient; sequence and sequence-token levels give the same detached value s_i.
    ratio_BT = level_ratio(log_ratio_BT.detach(), mask_BT, "token" if level == "token" else "sequence")
    weight_BT = ratio_BT.clamp(1.0 - eps_low, 1.0 + eps_high)
    zero = torch.zeros((), dtype=log_ratio_BT.dtype, device=logp_BT.device)
    logp_BT = torch.where(mask_BT, logp_BT.to(log_ratio_BT.dtype), zero)  # masked NaN/inf never enter the product
    return _Objective(weight_BT * adv * logp_BT, ratio_BT, weight_BT / ratio_BT, weight_BT != ratio_BT)


def _loss_terms(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    objective: Callable[..., _Objective],
    options: LossOptions,
    *,
    normalizer: float | Tensor | None,
    ref_logp: Tensor | None,
    entropy: Tensor | None,
) -> tuple[Tensor, LossTerms]:
    """The core both losses share: safe log-ratio, advantages, ``-agg(J)``, penalties, and the terms."""
    _check_inputs(logp, old_logp, mask, options.level, options.agg)
    dtype = compute_dtype(logp, old_logp)
    log_ratio_BT, clamped = safe_log_ratio(logp, old_logp, mask, bound=options.log_ratio_bound, dtype=dtype)
    adv = _advantages(advantages, mask, options.level, dtype)  # [B, 1] or [B, T]
    per_token = objective(logp, log_ratio_BT, mask, adv, options.level)
    pg_loss = aggregate(-per_token.objective, mask, options.agg, normalizer=normalizer, norm_len=options.norm_len)
    extra, penalty_losses, kl_BT, entropy_BT = _penalties(logp, mask, options, dtype=dtype, normalizer=normalizer,
                                                          ref_logp=ref_logp, entropy=entropy)
    loss = pg_loss if extra is None else pg_loss + extra
    terms = LossTerms(
        mask=mask, ratio=per_token.ratio, log_ratio=log_ratio_BT.detach(), df=per_token.df, clamped=clamped,
        losses={**penalty_losses, "pg_loss": pg_loss.detach(), "loss": loss.detach()},
        kl_ref=kl_BT, entropy=entropy_BT, clipped=per_token.clipped,
    )
    return loss, terms


def policy_loss_terms(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    gate: GateLike,
    options: LossOptions = LossOptions(),
    *,
    normalizer: float | Tensor | None = None,
    ref_logp: Tensor | None = None,
    entropy: Tensor | None = None,
) -> tuple[Tensor, LossTerms]:
    """The gated loss of :func:`policy_loss` and its :class:`LossTerms`, without reducing them to statistics.

    For gradient accumulation: call it per micro-batch (with the whole batch's ``normalizer``), backward each
    loss, then ``loss_stats(LossTerms.cat(parts), ...)`` once. Arguments as in :func:`policy_loss`.

    Shapes:
        logp, old_logp: [B, T] float; advantages: [B] or [B, T]; mask: [B, T] bool; ref_logp, entropy: [B, T]
        -> ([], LossTerms of [B, T])
    """
    return _loss_terms(logp, old_logp, advantages, mask, partial(_gated_objective, gate), options,
                       normalizer=normalizer, ref_logp=ref_logp, entropy=entropy)


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    gate: GateLike,
    *,
    level: Level = "token",
    agg: AggMode = "seq-mean-token-mean",
    normalizer: float | Tensor | None = None,
    norm_len: int | None = None,
    group_ids: Tensor | None = None,
    group_size: int | None = None,
    log_ratio_bound: float = 20.0,
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    soft_clip_threshold: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Gated policy-gradient loss ``-agg(f(r, A) * A) [+ kl_coef * agg(KL) - entropy_coef * agg(H)]``.

    Args:
        logp: log pi_theta of the sampled tokens (differentiable), any float dtype.
        old_logp: log pi_old of the same tokens (the sampler's / previous iterate's), no gradient needed.
        advantages: per sequence [B] (broadcast over tokens) or per token [B, T] (not for ``level="sequence"``).
        mask: bool, True where the token counts (response tokens, not prompt or padding).
        gate: the gate f; the temperature is picked per token by the sign of A inside the gate.
        level: ``token`` | ``sequence`` | ``sequence-token``, see :func:`level_ratio`.
        agg: aggregation mode, see :mod:`softgate.aggregate`.
        normalizer: the whole-batch normalizer (``softgate.aggregate.normalizer``); pass it to every micro-batch
            under gradient accumulation. None: this call's own batch.
        norm_len: Dr. GRPO's constant length for ``seq-mean-token-sum-norm`` (default T) when normalizer is None.
        group_ids / group_size: which rows form a group (the G completions of a prompt) for EUR. With neither,
            every sequence is its own group (EUR is then the mean over sequences of each one's mean f').
        log_ratio_bound: clamp of the token log-ratio (and of the reference log-ratio of the KL term).
        ref_logp, kl_coef, kl_estimator: optional KL penalty (k1 | k2 | k3, per token). Each value estimates
            KL(pi_theta || pi_ref); as a loss term k2's gradient is that of KL(pi_theta || pi_ref), k3's that of
            KL(pi_ref || pi_theta), k1's is zero in expectation (it warns) -- docs/losses.md.
            ``ref_logp`` alone (kl_coef = 0) only reports ``kl_ref``.
        entropy, entropy_coef: optional per-token entropies [B, T] and bonus weight; ``entropy`` alone only
            reports its mean.
        soft_clip_threshold: f' below this counts in ``soft_clip_frac`` (0.5 by default).

    Returns:
        ``(loss, stats)``. ``loss`` is a 0-dim tensor in the compute dtype (float32, or float64 for float64
        inputs). ``stats`` (0-dim, detached): ``eur``, ``soft_clip_frac``, ``hard_clip_frac`` (f' == 0 exactly:
        PPO's clip fraction for the ``clip`` gate, underflow-only for smooth gates), ``ratio_mean``,
        ``ratio_min``, ``ratio_max``, ``ratio_p05``, ``ratio_p50``, ``ratio_p95`` (of the ratio fed to the gate,
        over valid tokens), ``approx_kl`` (k3, old vs new, token level), ``clamped``, ``tokens``, ``loss``,
        ``pg_loss``; with ``ref_logp``: ``kl_ref`` (+ ``kl_loss`` if kl_coef != 0); with ``entropy``: ``entropy``
        (+ ``entropy_loss`` if entropy_coef != 0). ``loss = pg_loss + kl_loss + entropy_loss``.

    Shapes:
        logp, old_logp: [B, T] float; advantages: [B] or [B, T]; mask: [B, T] bool;
        group_ids: [B] int; ref_logp, entropy: [B, T] -> ([], dict of [])
    """
    options = LossOptions(level, agg, norm_len, log_ratio_bound, kl_coef, kl_estimator, entropy_coef)
    loss, terms = policy_loss_terms(logp, old_logp, advantages, mask, gate, options, normalizer=normalizer,
                                    ref_logp=ref_logp, entropy=entropy)
    return loss, loss_stats(terms, group_ids=group_ids, group_size=group_size,
                            soft_clip_threshold=soft_clip_threshold)


def cispo_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, eps_low: float = 1.0,
    eps_high: float = 0.28, level: Level = "token", agg: AggMode = "seq-mean-token-mean",
    normalizer: float | Tensor | None = None, norm_len: int | None = None, group_ids: Tensor | None = None,
    group_size: int | None = None, log_ratio_bound: float = 20.0, ref_logp: Tensor | None = None,
    kl_coef: float = 0.0, kl_estimator: KLEstimator = "k3", entropy: Tensor | None = None,
    entropy_coef: float = 0.0, soft_clip_threshold: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO (MiniMax-M1, arXiv 2506.13585): per token ``-sg(clip(r, 1 - eps_low, 1 + eps_high)) * A * logp``.

    The importance weight is clipped and detached, and multiplies ``log pi`` itself, so no token ever loses its
    gradient (unlike PPO's clip); the gradient w.r.t. ``logp_{i,t}`` is ``-clip(r) * A * w_{i,t}``.
    ``eps_low = 1`` (default) means no lower bound, as in MiniMax-M1, which only bounds the weight from above;
    ``eps_high = 0.28`` is DAPO's clip-higher value, a starting point to tune. With ``level="sequence"`` or
    ``"sequence-token"`` the weight is GSPO's ``clip(s_i)``; since the weight is detached, both coincide.

    All other arguments and the returned stats are those of :func:`policy_loss`, with the gate replaced by
    CISPO's *equivalent gate derivative* ``f'_eff(r) = clip(r) / r`` (CISPO's gradient written as
    ``f'_eff(r) * r * A * grad log pi``): ``eur`` and ``soft_clip_frac`` use it, ``hard_clip_frac`` (f'_eff == 0)
    is 0 by construction, and ``is_clip_frac`` is the fraction of valid tokens whose weight is clipped.
    The loss *value* is not a surrogate objective (it contains ``logp``); only its gradient is meaningful.

    Shapes:
        logp, old_logp: [B, T] float; advantages: [B] or [B, T]; mask: [B, T] bool -> ([], dict of [])
    """
    if not 0.0 <= eps_low <= 1.0 or eps_high < 0.0:
        raise ValueError(f"CISPO needs 0 <= eps_low <= 1 and eps_high >= 0, got eps_low={eps_low}, "
                         f"eps_high={eps_high}")
    options = LossOptions(level, agg, norm_len, log_ratio_bound, kl_coef, kl_estimator, entropy_coef)
    loss, terms = _loss_terms(logp, old_logp, advantages, mask, partial(_cispo_objective, eps_low, eps_high),
                              options, normalizer=normalizer, ref_logp=ref_logp, entropy=entropy)
    return loss, loss_stats(terms, group_ids=group_ids, group_size=group_size,
                            soft_clip_threshold=soft_clip_threshold)


@functools.cache
def _warn_k1_loss_term() -> None:
    # E_pi[grad k1] = E_pi[grad log pi] = 0 (docs/losses.md, "What each estimator's gradient is").
    warnings.warn("kl_estimator='k1' as a loss term (kl_coef != 0) has zero expected gradient: it adds noise, "
                  "not a pull towards the reference; use k2 (gradient of KL(pi||ref)) or k3 (gradient of "
                  "KL(ref||pi))", UserWarning, stacklevel=4)


def _penalties(
    logp: Tensor,
    mask: Tensor,
    options: LossOptions,
    *,
    dtype: torch.dtype,
    normalizer: float | Tensor | None,
    ref_logp: Tensor | None,
    entropy: Tensor | None,
) -> tuple[Tensor | None, dict[str, Tensor], Tensor | None, Tensor | None]:
    """Optional KL-to-reference penalty and entropy bonus, aggregated like the policy term.

    Returns ``(extra_loss or None, detached loss terms, kl_BT or None, entropy_BT or None)``. The KL uses
    ``log_ratio = ref_logp - logp`` (KL(pi_theta || pi_ref) from samples of the current policy, as in GRPO),
    masked and clamped like the policy log-ratio.
    """
    o = options
    if o.kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {o.kl_estimator!r}; known estimators: {', '.join(KL_ESTIMATORS)}")
    if o.kl_coef != 0.0 and ref_logp is None:
        raise ValueError(f"kl_coef={o.kl_coef} needs ref_logp (the reference policy's token log-probs)")
    if o.kl_coef != 0.0 and o.kl_estimator == "k1":
        _warn_k1_loss_term()
    if o.entropy_coef != 0.0 and entropy is None:
        raise ValueError(f"entropy_coef={o.entropy_coef} needs entropy (per-token entropies [B, T])")
    extra: Tensor | None = None
    losses: dict[str, Tensor] = {}
    kl_BT = entropy_BT = None
    if ref_logp is not None:
        if ref_logp.shape != logp.shape:
            raise ValueError(f"ref_logp has shape {tuple(ref_logp.shape)}, logp has {tuple(logp.shape)}")
        ref_log_ratio_BT, _ = safe_log_ratio(ref_logp, logp, mask, bound=o.log_ratio_bound, dtype=dtype)
        kl_BT = kl_estimate(ref_log_ratio_BT, o.kl_estimator)
        if o.kl_coef != 0.0:
            extra = o.kl_coef * aggregate(kl_BT, mask, o.agg, normalizer=normalizer, norm_len=o.norm_len)
            losses["kl_loss"] = extra.detach()
    if entropy is not None:
        if entropy.shape != logp.shape:
            raise ValueError(f"entropy has shape {tuple(entropy.shape)}, logp has {tuple(logp.shape)}")
        entropy_BT = entropy.to(dtype)
        if o.entropy_coef != 0.0:
            # A bonus: maximizing entropy lowers the loss.
            entropy_loss = -o.entropy_coef * aggregate(entropy_BT, mask, o.agg, normalizer=normalizer,
                                                       norm_len=o.norm_len)
            losses["entropy_loss"] = entropy_loss.detach()
            extra = entropy_loss if extra is None else extra + entropy_loss
    return (extra, losses, None if kl_BT is None else kl_BT.detach(),
            None if entropy_BT is None else entropy_BT.detach())
