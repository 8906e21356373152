"""Masked reductions and the loss aggregation modes, with the normalizer explicit.

A per-token loss ``loss_BT`` is reduced to a scalar as ``sum_{i,t valid} w_{i,t} * loss_{i,t}``. The weights
depend on the aggregation mode and on one *whole-batch* normalizer ``Z``:

- ``token-mean``: ``w = 1 / Z``, ``Z`` = number of valid tokens in the batch;
- ``seq-mean-token-mean`` (the paper's ``(1/G) sum_i (1/|o_i|) sum_t``): ``w = 1 / (Z * |o_i|)``,
  ``Z`` = number of counted sequences;
- ``seq-mean-token-sum-norm`` (Dr. GRPO): ``w = 1 / Z``, ``Z`` = number of counted sequences * ``norm_len``
  (a constant length such as ``max_new_tokens``; default T).

``|o_i|`` is the number of valid tokens of row i; it only involves row i, so it is the same whether the row sits
in a micro-batch or in the whole batch. Everything that couples rows is in ``Z``. Hence gradient accumulation is
exact: compute ``Z`` once on the whole batch, pass it to every micro-batch, and the sum of the micro-batch
losses equals the whole-batch loss (and so do the gradients). Without an explicit ``normalizer`` each call uses
its own batch, which is what you want when there is no accumulation.

All-masked rows (no valid token): they contribute 0 to the loss and are *not counted* as sequences in either
sequence mode, so padding rows or rows filtered out by zeroing their mask do not dilute the mean. A batch with
no valid token at all gives a loss of exactly 0 (the normalizer is floored at 1), still attached to the graph.

Masked positions are removed with ``torch.where``, never by multiplication, so NaN/inf stored at masked
positions cannot reach the result (``0 * nan = nan``).
"""

from __future__ import annotations


import torch
from torch import Tensor

from softgate.choices import AGG_MODES, AggMode

__all__ = [
    "AGG_MODES",
    "AggMode",
    "aggregate",
    "masked_mean",
    "masked_sum",
    "normalizer",
    "token_weights",
]


def _check_mask(mask: Tensor, like: Tensor | None = None, name: str = "mask") -> None:
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = the token counts), got dtype {mask.dtype}; "
                        f"convert with {name}.bool()")
    if like is not None and mask.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)} but the values have shape {tuple(like.shape)}")


def _check_mode(mode: str) -> None:
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; known modes: {', '.join(AGG_MODES)}")


def masked_sum(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Sum of ``x`` over the positions where ``mask`` is True.

    Masked positions are replaced by 0 with ``torch.where`` before summing, so NaN/inf there do not leak.

    Shapes:
        x: [*], mask: [*] bool (same shape) -> [] if ``dim`` is None, else ``x`` reduced over ``dim``.
    """
    _check_mask(mask, x)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    masked = torch.where(mask, x, zero)
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is True; 0 where there is no valid position.

    Shapes:
        x: [*], mask: [*] bool (same shape) -> [] if ``dim`` is None, else ``x`` reduced over ``dim``.
    """
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp_min(1).to(x.dtype)


def normalizer(mask_BT: Tensor, mode: AggMode, *, norm_len: int | None = None) -> Tensor:
    """The whole-batch denominator ``Z`` of aggregation mode ``mode`` (see the module docstring).

    - ``token-mean``: number of valid tokens.
    - ``seq-mean-token-mean``: number of sequences with at least one valid token.
    - ``seq-mean-token-sum-norm``: that number of sequences times ``norm_len`` (a constant such as
      ``max_new_tokens``; default ``T = mask_BT.shape[1]``). Dr. GRPO uses a constant so that the per-token
      weight does not depend on the response length.

    The result is floored at 1 so that a batch with no valid token gives a zero loss instead of 0/0.
    Returned as a 0-dim float32 tensor on the mask's device (no host sync).

    Shapes:
        mask_BT: [B, T] bool -> []
    """
    _check_mask(mask_BT, name="mask_BT")
    _check_mode(mode)
    if mask_BT.dim() != 2:
        raise ValueError(f"mask_BT must be 2-D [B, T], got shape {tuple(mask_BT.shape)}")
    if norm_len is not None and norm_len <= 0:
        raise ValueError(f"norm_len must be a positive number of tokens, got {norm_len}")
    match mode:
        case "token-mean":
            z = mask_BT.sum()
        case "seq-mean-token-mean":
            z = mask_BT.any(dim=1).sum()
        case "seq-mean-token-sum-norm":
            length = mask_BT.shape[1] if norm_len is None else norm_len
            z = mask_BT.any(dim=1).sum() * length
    return z.to(torch.float32).clamp_min(1.0)


# The aggregation functions take a keyword argument named ``normalizer``, which shadows the function above.
_batch_normalizer = normalizer


def token_weights(
    mask_BT: Tensor,
    mode: AggMode,
    *,
    normalizer: float | Tensor | None = None,
    norm_len: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Per-token weights ``w_{i,t}`` such that ``aggregate(loss) = sum(w * loss)`` (0 at masked positions).

    ``d aggregate / d loss_{i,t} = w_{i,t}``: this is "the aggregation weight" that multiplies every per-token
    gradient. ``normalizer`` overrides the batch's own ``Z`` (pass the whole-batch value under accumulation).

    Shapes:
        mask_BT: [B, T] bool -> [B, T] ``dtype``
    """
    _check_mask(mask_BT, name="mask_BT")
    _check_mode(mode)
    if mask_BT.dim() != 2:
        raise ValueError(f"mask_BT must be 2-D [B, T], got shape {tuple(mask_BT.shape)}")
    z = _batch_normalizer(mask_BT, mode, norm_len=norm_len) if normalizer is None else normalizer
    if isinstance(z, Tensor):
        z = z.to(device=mask_BT.device, dtype=dtype)
    elif z <= 0:
        raise ValueError(f"normalizer must be positive, got {z}")
    ones = mask_BT.to(dtype)
    match mode:
        case "token-mean" | "seq-mean-token-sum-norm":
            return ones / z
        case "seq-mean-token-mean":
            # 1 / |o_i| per row; all-masked rows have weight 0 everywhere anyway.
            lengths_B1 = mask_BT.sum(dim=1, keepdim=True).clamp_min(1).to(dtype)
            return ones / (lengths_B1 * z)
    raise AssertionError("unreachable")  # _check_mode in normalizer() rejects other modes


def aggregate(
    loss_BT: Tensor,
    mask_BT: Tensor,
    mode: AggMode,
    *,
    normalizer: float | Tensor | None = None,
    norm_len: int | None = None,
) -> Tensor:
    """Reduce a per-token loss to a scalar with aggregation mode ``mode``.

    ``normalizer`` is the whole-batch ``Z`` from :func:`normalizer` (pass it to every micro-batch under gradient
    accumulation); when None, this call's own batch defines it. ``norm_len`` only matters for
    ``seq-mean-token-sum-norm`` and only when ``normalizer`` is None.

    Shapes:
        loss_BT: [B, T] float, mask_BT: [B, T] bool -> [] (dtype of loss_BT)
    """
    _check_mask(mask_BT, loss_BT, name="mask_BT")
    _check_mode(mode)
    if loss_BT.dim() != 2:
        raise ValueError(f"loss_BT must be 2-D [B, T], got shape {tuple(loss_BT.shape)}")
    w_BT = token_weights(mask_BT, mode, normalizer=normalizer, norm_len=norm_len, dtype=loss_BT.dtype)
    zero = torch.zeros((), dtype=loss_BT.dtype, device=loss_BT.device)
    return (torch.where(mask_BT, loss_BT, zero) * w_BT).sum()
