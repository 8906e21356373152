"""Group-relative advantages (GRPO, Dr. GRPO, RLOO) and zero-variance group detection.

The batch layout is the one every GRPO-style trainer uses: ``B = num_prompts * group_size`` rewards, the
``group_size`` completions of one prompt stored next to each other (rows ``g*G .. g*G + G - 1`` form group g).

Estimators (R_i the reward of completion i in its group of G, mean/std over that group):

- ``std``  (GRPO, DeepSeekMath; the paper's A_i): ``A_i = (R_i - mean(R)) / (std(R) + eps)``. ``std`` is the
  unbiased sample standard deviation (Bessel's correction, as ``torch.std`` and the reference GRPO
  implementations use), so G >= 2 is required.
- ``mean`` (Dr. GRPO): ``A_i = R_i - mean(R)``; no division, so no difficulty bias from the std.
- ``rloo`` (REINFORCE leave-one-out): ``A_i = R_i - mean_{j != i} R_j = G / (G - 1) * (R_i - mean(R))``;
  G >= 2 is required.

A group whose rewards are all equal gets A = 0 for every estimator (std: 0 / (0 + eps)); such groups carry no
learning signal, and :func:`zero_variance_groups` flags them so a trainer can drop or resample them.
"""

from __future__ import annotations


import torch
from torch import Tensor

from softgate.choices import ADVANTAGE_ESTIMATORS as ESTIMATORS
from softgate.choices import AdvantageEstimator as Estimator

__all__ = ["ESTIMATORS", "Estimator", "group_advantages", "zero_variance_groups"]


def _grouped(rewards_B: Tensor, group_size: int) -> Tensor:
    """Check the layout and return the rewards as a float tensor of shape [B / G, G]."""
    if rewards_B.dim() != 1:
        raise ValueError(f"rewards_B must be 1-D [B], got shape {tuple(rewards_B.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    batch = rewards_B.shape[0]
    if batch % group_size != 0:
        raise ValueError(f"batch size B={batch} is not divisible by group_size={group_size}; the batch must hold "
                         f"whole groups of {group_size} completions per prompt")
    # Integer or boolean rewards become float; float64 stays float64.
    rewards = rewards_B if rewards_B.is_floating_point() else rewards_B.to(torch.get_default_dtype())
    return rewards.view(batch // group_size, group_size)


def group_advantages(
    rewards_B: Tensor,
    group_size: int,
    estimator: Estimator = "std",
    eps: float = 1e-6,
) -> Tensor:
    """Per-completion advantages, normalized within each group of ``group_size`` consecutive rewards.

    ``eps`` is only used by ``std`` (added to the standard deviation, as in GRPO). Raises ``ValueError`` when B
    is not divisible by ``group_size``, and when ``group_size < 2`` for ``std`` and ``rloo`` (undefined there).

    Shapes:
        rewards_B: [B] -> [B] (float; float64 stays float64)
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; known estimators: {', '.join(ESTIMATORS)}")
    if estimator in ("std", "rloo") and group_size < 2:
        raise ValueError(f"estimator {estimator!r} needs group_size >= 2 (it uses the other completions of the "
                         f"group), got group_size={group_size}; use estimator='mean' or a larger group")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    rewards_NG = _grouped(rewards_B, group_size)
    centered_NG = rewards_NG - rewards_NG.mean(dim=1, keepdim=True)
    match estimator:
        case "std":
            std_N1 = rewards_NG.std(dim=1, keepdim=True)  # unbiased (correction=1)
            adv_NG = centered_NG / (std_N1 + eps)
        case "mean":
            adv_NG = centered_NG
        case "rloo":
            # R_i - (sum R - R_i) / (G - 1) = G / (G - 1) * (R_i - mean R)
            adv_NG = centered_NG * (group_size / (group_size - 1))
    return adv_NG.reshape(-1)


def zero_variance_groups(rewards_B: Tensor, group_size: int) -> Tensor:
    """Flag completions whose whole group has identical rewards (exact equality: max == min).

    Note the polarity: True means "this row belongs to a zero-variance group" (it carries no signal), which is
    the *opposite* of a keep-mask; use ``~zero_variance_groups(...)`` to keep the informative rows.

    Shapes:
        rewards_B: [B] -> [B] bool
    """
    rewards_NG = _grouped(rewards_B, group_size)
    flat_N = rewards_NG.amax(dim=1) == rewards_NG.amin(dim=1)
    return flat_N.repeat_interleave(group_size)
