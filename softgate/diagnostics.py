"""Gate diagnostics: EUR (the paper's Eq. 12), soft/hard clip fractions, ratio quantiles, KL estimators.

Every function takes tensors and returns 0-dim (or small 1-D) tensors, without host synchronisation: no
``.item()``, no boolean indexing. Statistics over an empty selection (no valid token) are NaN: "undefined" is
reported as such rather than as a made-up 0.

KL estimators (Schulman, "Approximating KL Divergence", 2020). With samples ``x ~ p`` and
``log_ratio = log q(x) - log p(x)``, each ``k`` below is a per-sample estimate of KL(p || q):

- ``k1 = -log_ratio``                          unbiased, high variance, can be negative;
- ``k2 = log_ratio ** 2 / 2``                  biased (exact to second order), low variance, >= 0;
- ``k3 = exp(log_ratio) - 1 - log_ratio``      unbiased, low variance, >= 0.

In softgate: ``approx_kl`` uses samples from pi_old and ``log_ratio = logp - old_logp`` (KL(pi_old || pi_theta));
the reference penalty uses ``log_ratio = ref_logp - logp`` (KL(pi_theta || pi_ref), as in GRPO).

:class:`LossTerms` is what a loss computation (``softgate.losses``) leaves for its statistics; :func:`loss_stats`
reduces it, once per minibatch in the trainer, to the figures every loss reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from softgate.aggregate import masked_sum

from softgate.choices import KL_ESTIMATORS, KLEstimator

__all__ = [
    "KL_ESTIMATORS",
    "KLEstimator",
    "LossTerms",
    "eur",
    "eur_from_group_sums",
    "eur_group_sums",
    "group_ids",
    "hard_clip_frac",
    "kl_estimate",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "loss_stats",
    "masked_max",
    "masked_min",
    "masked_quantiles",
    "soft_clip_frac",
]


def group_ids(batch_size: int, group_size: int, *, device: torch.device | str | None = None) -> Tensor:
    """Group index of every row for the usual layout (the G completions of a prompt are consecutive rows).

    Shapes:
        -> [B] int64, ``[0]*G + [1]*G + ...``
    """
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if batch_size % group_size != 0:
        raise ValueError(f"batch size B={batch_size} is not divisible by group_size={group_size}")
    return torch.arange(batch_size, device=device) // group_size


def eur(df_BT: Tensor, mask_BT: Tensor, group_ids_B: Tensor) -> Tensor:
    """Effective Update Ratio, the paper's Eq. 12.

    ``EUR = mean over groups g of [ sum_{i in g, t valid} f'(r_{i,t}) / sum_{i in g} |o_i| ]``: per group (the G
    completions of one prompt), the token-weighted mean of the gate derivative over all its valid tokens; then
    the plain mean over groups. Groups without any valid token are left out of the mean. NaN if no group has a
    valid token. For the ``clip`` gate this is 1 - (clip-active fraction), group-weighted.

    ``group_ids_B`` may hold any integer labels (they need not be contiguous or sorted). When a group's rows are
    spread over several calls (micro-batches, processes), add up :func:`eur_group_sums` and reduce once with
    :func:`eur_from_group_sums` instead: EUR itself does not average.

    Shapes:
        df_BT: [B, T] float, mask_BT: [B, T] bool, group_ids_B: [B] int -> [] (dtype of df_BT)
    """
    return eur_from_group_sums(*eur_group_sums(df_BT, mask_BT, group_ids_B))


def eur_group_sums(df_BT: Tensor, mask_BT: Tensor, group_ids_B: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 12's per-group numerator (sum of f' over the group's valid tokens) and denominator (its valid-token
    count), one entry per distinct label. Unlike EUR these add up: concatenate the sums of several micro-batches
    or processes and pass them to :func:`eur_from_group_sums`.

    Shapes:
        df_BT: [B, T] float, mask_BT: [B, T] bool, group_ids_B: [B] int
        -> (labels [G] int64, numerators [G], denominators [G]) (dtype of df_BT)
    """
    if df_BT.dim() != 2 or group_ids_B.shape != df_BT.shape[:1]:
        raise ValueError(f"eur expects df_BT [B, T] and group_ids_B [B], got {tuple(df_BT.shape)} and "
                         f"{tuple(group_ids_B.shape)}")
    if group_ids_B.is_floating_point() or group_ids_B.dtype == torch.bool:
        raise TypeError(f"group_ids_B must be an integer tensor, got dtype {group_ids_B.dtype}")
    row_sum_B = masked_sum(df_BT, mask_BT, dim=1)
    row_len_B = mask_BT.sum(dim=1).to(df_BT.dtype)
    return _sum_by_label(group_ids_B.to(torch.int64), row_sum_B, row_len_B)


def eur_from_group_sums(labels_G: Tensor, numerators_G: Tensor, denominators_G: Tensor) -> Tensor:
    """Eq. 12 from per-group sums (:func:`eur_group_sums`); entries sharing a label are parts of one group and
    are summed before the ratio. Groups with no valid token are left out; NaN if none is left.

    Shapes:
        labels_G: [G] int64, numerators_G, denominators_G: [G] float -> [] (dtype of numerators_G)
    """
    _, num_G, den_G = _sum_by_label(labels_G, numerators_G, denominators_G)
    has_tokens = den_G > 0
    per_group = num_G / den_G.clamp_min(1)
    count = has_tokens.sum().to(num_G.dtype)
    mean = torch.where(has_tokens, per_group, 0.0).sum() / count.clamp_min(1)
    return torch.where(count > 0, mean, torch.full_like(mean, float("nan")))


def _sum_by_label(labels_N: Tensor, num_N: Tensor, den_N: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sum ``num_N`` and ``den_N`` over equal labels.  Shapes: [N] each -> [G] each (G distinct labels)."""
    labels_G, inverse_N = torch.unique(labels_N, return_inverse=True)
    zeros_G = torch.zeros(labels_G.shape[0], dtype=num_N.dtype, device=num_N.device)
    return labels_G, zeros_G.index_add(0, inverse_N, num_N), zeros_G.index_add(0, inverse_N, den_N.to(num_N.dtype))


def _masked_fraction(cond_BT: Tensor, mask_BT: Tensor, dtype: torch.dtype) -> Tensor:
    count = mask_BT.sum().to(dtype)
    hits = (cond_BT & mask_BT).sum().to(dtype)
    return torch.where(count > 0, hits / count.clamp_min(1), torch.full_like(count, float("nan")))


def soft_clip_frac(df_BT: Tensor, mask_BT: Tensor, threshold: float = 0.5) -> Tensor:
    """Fraction of valid tokens whose gate derivative f'(r) is below ``threshold`` (0.5: the gate passes less
    than half of the plain policy gradient). NaN if no token is valid.

    Shapes:
        df_BT: [*] float, mask_BT: [*] bool -> [] (dtype of df_BT)
    """
    return _masked_fraction(df_BT < threshold, mask_BT, df_BT.dtype)


def hard_clip_frac(df_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """Fraction of valid tokens with f'(r) == 0 exactly, i.e. tokens that get no gradient at all.

    For the ``clip`` gate this is PPO/GRPO's clip fraction (the clip is active on the side that matters for the
    sign of A). For smooth gates it counts only tokens whose f' underflowed to 0, which is usually 0: an honest
    number, not a stand-in. NaN if no token is valid.

    Shapes:
        df_BT: [*] float, mask_BT: [*] bool -> [] (dtype of df_BT)
    """
    return _masked_fraction(df_BT == 0, mask_BT, df_BT.dtype)


def masked_min(x: Tensor, mask: Tensor) -> Tensor:
    """Minimum of ``x`` over valid positions; NaN if none.  Shapes: x [*], mask [*] bool -> []."""
    valid = mask.any()
    big = torch.full((), float("inf"), dtype=x.dtype, device=x.device)
    low = torch.where(mask, x, big).amin() if x.numel() else big
    return torch.where(valid, low, torch.full_like(low, float("nan")))


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Maximum of ``x`` over valid positions; NaN if none.  Shapes: x [*], mask [*] bool -> []."""
    valid = mask.any()
    small = torch.full((), float("-inf"), dtype=x.dtype, device=x.device)
    high = torch.where(mask, x, small).amax() if x.numel() else small
    return torch.where(valid, high, torch.full_like(high, float("nan")))


def masked_quantiles(x: Tensor, mask: Tensor, qs: Sequence[float] = (0.05, 0.5, 0.95)) -> Tensor:
    """Quantiles of ``x`` over valid positions, with linear interpolation (same as ``torch.quantile``).

    Works without boolean indexing (so without a host sync, and without ``torch.quantile``'s input size
    limit): invalid entries are set to +inf, sorted to the end, and the quantile positions are computed from
    the valid count. NaN for every quantile if no position is valid. Values must be finite (ratios are, after
    the log-ratio clamp).

    Shapes:
        x: [*] float, mask: [*] bool -> [len(qs)] (dtype of x)
    """
    if any(not 0.0 <= q <= 1.0 for q in qs):
        raise ValueError(f"quantiles must lie in [0, 1], got {list(qs)}")
    q_Q = torch.tensor(list(qs), dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return torch.full_like(q_Q, float("nan"))
    big = torch.full((), float("inf"), dtype=x.dtype, device=x.device)
    sorted_N = torch.where(mask, x, big).reshape(-1).sort().values
    n = mask.sum()
    pos_Q = q_Q * (n - 1).clamp_min(0).to(x.dtype)
    lo_Q = pos_Q.floor().long()
    hi_Q = pos_Q.ceil().long()
    frac_Q = pos_Q - lo_Q.to(x.dtype)
    lo_v, hi_v = sorted_N[lo_Q], sorted_N[hi_Q]
    # pos <= n - 1, so both indices stay inside the valid (finite) part of the sorted values.
    out_Q = torch.lerp(lo_v, hi_v, frac_Q)
    return torch.where(n > 0, out_Q, torch.full_like(out_Q, float("nan")))


def kl_k1(log_ratio: Tensor) -> Tensor:
    """Schulman's k1 = -log_ratio (see the module docstring for the sign convention).  Shapes: [*] -> [*]."""
    return -log_ratio


def kl_k2(log_ratio: Tensor) -> Tensor:
    """Schulman's k2 = log_ratio ** 2 / 2.  Shapes: [*] -> [*]."""
    return 0.5 * log_ratio.square()


def kl_k3(log_ratio: Tensor) -> Tensor:
    """Schulman's k3 = exp(log_ratio) - 1 - log_ratio, computed with ``expm1`` for accuracy near 0.

    Shapes: [*] -> [*]
    """
    return torch.expm1(log_ratio) - log_ratio


def kl_estimate(log_ratio: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token KL estimate by name (``k1``, ``k2`` or ``k3``).  Shapes: [*] -> [*]."""
    match estimator:
        case "k1":
            return kl_k1(log_ratio)
        case "k2":
            return kl_k2(log_ratio)
        case "k3":
            return kl_k3(log_ratio)
    raise ValueError(f"unknown KL estimator {estimator!r}; known estimators: {', '.join(KL_ESTIMATORS)}")


# --------------------------------------------------------------------------------------------------------------
# The statistics of a loss computation
# --------------------------------------------------------------------------------------------------------------


def _resolve_group_ids(batch_size: int, ids: Tensor | None, size: int | None, device: torch.device) -> Tensor:
    """Group labels for EUR: explicit ids, else consecutive groups of ``size``, else one group per row."""
    if ids is not None and size is not None:
        raise ValueError("pass either group_ids or group_size, not both")
    if ids is not None:
        if ids.shape != (batch_size,):
            raise ValueError(f"group_ids must have shape [B]=({batch_size},), got {tuple(ids.shape)}")
        return ids.to(device)
    if size is not None:
        return group_ids(batch_size, size, device=device)
    return torch.arange(batch_size, device=device)


@dataclass(frozen=True)
class LossTerms:
    """What one loss computation leaves for its statistics: per-token tensors, detached, and the loss terms.

    Fields (B rows, T tokens):
        mask:      [B, T] bool, the tokens that count
        ratio:     [B, T] the ratio fed to the gate (token, sequence or sequence-token level)
        log_ratio: [B, T] the token log-ratio ``logp - old_logp``, 0 at masked positions, clamped
        df:        [B, T] the gate derivative f'(r) (CISPO: its equivalent ``clip(r) / r``)
        clamped:   [] valid tokens whose log-ratio exceeded the bound
        losses:    ``loss``, ``pg_loss`` (+ ``kl_loss``, ``entropy_loss``), [] each: this call's share of the total
        kl_ref:    [B, T] per-token KL(pi_theta || pi_ref) estimate, when ``ref_logp`` was given
        entropy:   [B, T] per-token entropy, when ``entropy`` was given
        clipped:   [B, T] bool, CISPO only: the importance weight was clipped
    """

    mask: Tensor
    ratio: Tensor
    log_ratio: Tensor
    df: Tensor
    clamped: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)
    kl_ref: Tensor | None = None
    entropy: Tensor | None = None
    clipped: Tensor | None = None

    @staticmethod
    def cat(parts: Sequence[LossTerms]) -> LossTerms:
        """The terms of a batch from those of its micro-batches (same T): rows joined in order, counts and loss
        terms summed (each micro-batch loss used the whole batch's normalizer, so the sum is the batch's loss)."""
        if not parts:
            raise ValueError("LossTerms.cat needs at least one part")

        def rows(name: str) -> Tensor | None:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values)

        return LossTerms(
            mask=rows("mask"), ratio=rows("ratio"), log_ratio=rows("log_ratio"), df=rows("df"),
            clamped=torch.stack([p.clamped for p in parts]).sum(),
            losses={k: torch.stack([p.losses[k] for p in parts]).sum() for k in parts[0].losses},
            kl_ref=rows("kl_ref"), entropy=rows("entropy"), clipped=rows("clipped"),
        )


def _masked_stat_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over valid positions, NaN when there is none (a statistic, unlike masked_mean's 0 for losses)."""
    count = mask.sum()
    mean = masked_sum(x, mask) / count.clamp_min(1).to(x.dtype)
    return torch.where(count > 0, mean, torch.full_like(mean, float("nan")))


@torch.no_grad()
def loss_stats(
    terms: LossTerms,
    *,
    group_ids: Tensor | None = None,
    group_size: int | None = None,
    soft_clip_threshold: float = 0.5,
) -> dict[str, Tensor]:
    """The statistics of ``softgate.losses.policy_loss`` (its "Returns" lists them) from the terms of one or more
    loss calls.

    ``group_ids`` / ``group_size`` say which rows form a group for EUR (as in ``policy_loss``): the rows must
    hold whole groups. Shapes: ``terms`` of B rows, group_ids [B] -> dict of []
    """
    mask, ratio = terms.mask, terms.ratio
    groups_B = _resolve_group_ids(mask.shape[0], group_ids, group_size, mask.device)
    p05, p50, p95 = masked_quantiles(ratio, mask, (0.05, 0.5, 0.95)).unbind(0)
    stats = {
        "eur": eur(terms.df, mask, groups_B),
        "soft_clip_frac": soft_clip_frac(terms.df, mask, soft_clip_threshold),
        "hard_clip_frac": hard_clip_frac(terms.df, mask),
        "ratio_mean": _masked_stat_mean(ratio, mask),
        "ratio_min": masked_min(ratio, mask),
        "ratio_max": masked_max(ratio, mask),
        "ratio_p05": p05,
        "ratio_p50": p50,
        "ratio_p95": p95,
        # KL(pi_old || pi_theta) from pi_old's samples: log_ratio = logp - old_logp (Schulman's k3).
        "approx_kl": _masked_stat_mean(kl_k3(terms.log_ratio), mask),
        "clamped": terms.clamped,
        "tokens": mask.sum().to(ratio.dtype),
    }
    if terms.clipped is not None:
        stats["is_clip_frac"] = _masked_stat_mean(terms.clipped.to(ratio.dtype), mask)
    if terms.kl_ref is not None:
        stats["kl_ref"] = _masked_stat_mean(terms.kl_ref, mask)
    if terms.entropy is not None:
        stats["entropy"] = _masked_stat_mean(terms.entropy, mask)
    return {**stats, **terms.losses}
