"""Memory-efficient token log-probs and entropies from logits (or from the last hidden state).

The naive ``torch.log_softmax(logits.float(), -1).gather(-1, ids)`` materializes a full ``[B, T, V]`` float32
copy in the forward pass, keeps it for the backward pass, and the backward of ``gather`` allocates another
``[B, T, V]`` tensor of zeros. At V = 151,936 (Qwen2.5) and B*T = 2,048 rows each copy is 1.16 GiB.

What softgate does instead (custom autograd Functions):

- **forward**: the rows are processed in chunks of ``chunk_size`` rows; per chunk, the float32 (float64 for
  float64 input) scaled logits ``x = logits / temperature`` give ``lse = logsumexp(x)`` and
  ``logp = x[id] - lse`` (and, for the entropy, ``E_p[x]`` and ``H = lse - E_p[x]``). Only per-row vectors are
  kept; the chunk temporaries are freed before the next chunk.
- **backward**: nothing of size ``[B, T, V]`` was saved except the logits themselves (which the caller holds
  anyway). The softmax is recomputed chunk by chunk from the logits and the saved ``lse``, and the closed-form
  gradient is written into one preallocated gradient tensor of the logits' shape and dtype:
  ``d logp / d x = onehot(id) - p`` and ``d H / d x = -p * (x - E_p[x])``, both divided by the temperature.
  That gradient tensor is ``dL/dlogits`` itself, which any method must produce; no other full-size tensor is
  allocated. This is checkpointing done by hand: one extra ``exp`` per element in backward, no autograd graph
  per chunk. Double backward is not supported.
- :func:`hidden_logprobs` goes one step further: it takes the last hidden state and the LM-head weight and
  computes the logits one ``rows x cols`` tile at a time, so no ``[B, T, V]`` tensor exists at all, in either
  pass. Vocabulary tiles are the outer loop (each slice of the weight is read once per pass, every matmul is
  large); the forward keeps a running max ``m``, ``S = sum exp(x - m)`` and ``A = sum exp(x - m)(x - m)`` per row,
  rescaled when the max grows, so ``lse = m + log S`` and the entropy ``H = log S - A / S`` (no cancellation of two
  large numbers). The backward recomputes each tile from the saved ``lse`` (one extra LM-head matmul, the price of
  the memory) and returns the gradients of the hidden state and of the weight; an output whose gradient is None
  (an entropy only reported) costs no backward work.

``chunk_size`` is a number of rows (tokens). The default (None) on the logits path picks ``max(1, 2**22 // V)``
rows, i.e. chunk temporaries of about 16 MB in float32 whatever the vocabulary (27 rows at V = 151,936); the
hidden-state path's tiles are 1,024 rows x 4,096 vocabulary entries on CPU (also 16 MB) and 8x that on GPUs.

Values agree with the naive form to float32 rounding (the reductions are the same ``logsumexp``); see
tests/test_logprobs.py and ``benchmarks/bench_loss.py`` for the memory and time measured at V = 151,936.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
    "hidden_logprobs",
    "hidden_logprobs_and_entropy",
    "logprobs_and_entropy",
    "token_entropy",
    "token_logprobs",
]

DEFAULT_CHUNK_ELEMENTS = 1 << 22  # elements per chunk when chunk_size is None (16 MB in float32)


def _positive(name: str, value: int, unit: str = "rows") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive number of {unit}, got {value!r}")
    return value


def _rows_per_chunk(chunk_size: int | None, vocab: int) -> int:
    if chunk_size is None:
        return max(1, DEFAULT_CHUNK_ELEMENTS // max(vocab, 1))
    return _positive("chunk_size", chunk_size)


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


# --------------------------------------------------------------------------------------------------------------
# Per-chunk maths, shared by the logits and the hidden-state paths
# --------------------------------------------------------------------------------------------------------------


def _forward_chunk(
    x_cV: Tensor, ids_c: Tensor | None, want_entropy: bool
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """(lse, logp, entropy, E_p[x]) of one chunk of scaled logits; logp None without ids, the last two None
    without entropy."""
    lse_c = torch.logsumexp(x_cV, dim=-1)
    logp_c = x_cV.gather(-1, ids_c[:, None]).squeeze(-1) - lse_c if ids_c is not None else None
    if not want_entropy:
        return lse_c, logp_c, None, None
    p_cV = torch.exp(x_cV - lse_c[:, None])
    # p * x is 0 * (-inf) = nan for logits masked to -inf; those terms are 0 in the entropy.
    px_cV = torch.where(p_cV > 0, p_cV * x_cV, 0.0)
    mean_x_c = px_cV.sum(-1)
    return lse_c, logp_c, lse_c - mean_x_c, mean_x_c


def _grad_chunk(
    x_cV: Tensor,
    ids_c: Tensor | None,
    lse_c: Tensor,
    mean_x_c: Tensor | None,
    g_logp_c: Tensor | None,
    g_ent_c: Tensor | None,
    temperature: float,
) -> Tensor:
    """Gradient w.r.t. the *unscaled* logits of ``sum(g_logp * logp + g_ent * H)`` for one chunk (float).

    d logp / d x_j = [j == id] - p_j;  d H / d x_j = -p_j (x_j - E_p[x]);  d x / d logits = 1 / temperature.
    """
    p_cV = torch.exp(x_cV - lse_c[:, None])
    if g_ent_c is not None:
        coef_cV = g_ent_c[:, None] * (x_cV - mean_x_c[:, None])
        if g_logp_c is not None:
            coef_cV = coef_cV + g_logp_c[:, None]
        grad_cV = torch.where(p_cV > 0, -(p_cV * coef_cV), 0.0)
    else:
        grad_cV = p_cV.mul_(-g_logp_c[:, None])
    if g_logp_c is not None:
        grad_cV.scatter_add_(1, ids_c[:, None], g_logp_c[:, None].to(grad_cV.dtype))
    if temperature != 1.0:
        grad_cV.div_(temperature)
    return grad_cV


def _scaled(logits_cV: Tensor, temperature: float, dtype: torch.dtype) -> Tensor:
    """Upcast and divide by the temperature; never modifies ``logits_cV`` (``.to`` may return it as is)."""
    x_cV = logits_cV.to(dtype)
    return x_cV / temperature if temperature != 1.0 else x_cV


# --------------------------------------------------------------------------------------------------------------
# From logits
# --------------------------------------------------------------------------------------------------------------


def _blocks(logits_BTV: Tensor, rows: int) -> list[tuple[int, int, int]]:
    """Chunks as (b, start, stop): b = -1 for rows of the flattened [B*T, V] view (when it exists without a
    copy), else rows start..stop of batch row b (e.g. for a ``logits[:, :-1]`` slice)."""
    B, T, V = logits_BTV.shape
    try:
        logits_BTV.view(B * T, V)
        return [(-1, s, min(s + rows, B * T)) for s in range(0, B * T, rows)]
    except RuntimeError:
        return [(b, s, min(s + rows, T)) for b in range(B) for s in range(0, T, rows)]


def _take(t_BT_: Tensor, block: tuple[int, int, int]) -> Tensor:
    """The chunk of a [B, T, ...] tensor (a view, no copy) for a block of :func:`_blocks`."""
    b, start, stop = block
    if b < 0:
        return t_BT_.reshape(t_BT_.shape[0] * t_BT_.shape[1], *t_BT_.shape[2:])[start:stop]
    return t_BT_[b, start:stop]


class _ChunkedLogSoftmax(torch.autograd.Function):
    """Outputs (logp [B, T] or empty, entropy [B, T] or empty) of the logits, chunked in both passes."""

    @staticmethod
    def forward(
        ctx: Any, logits_BTV: Tensor, ids_BT: Tensor | None, rows: int, temperature: float, want_entropy: bool
    ) -> tuple[Tensor, Tensor]:
        B, T, _ = logits_BTV.shape
        ids_BT = ids_BT.contiguous() if ids_BT is not None else None
        dtype = _out_dtype(logits_BTV.dtype)
        new = dict(dtype=dtype, device=logits_BTV.device)
        lse_BT = torch.empty(B, T, **new)
        logp_BT = torch.empty(B, T, **new) if ids_BT is not None else torch.empty(0, **new)
        ent_BT = torch.empty(B, T, **new) if want_entropy else torch.empty(0, **new)
        mean_x_BT = torch.empty(B, T, **new) if want_entropy else None
        for block in _blocks(logits_BTV, rows):
            x_cV = _scaled(_take(logits_BTV, block), temperature, dtype)
            ids_c = _take(ids_BT, block) if ids_BT is not None else None
            lse_c, logp_c, ent_c, mean_x_c = _forward_chunk(x_cV, ids_c, want_entropy)
            _take(lse_BT, block).copy_(lse_c)
            if logp_c is not None:
                _take(logp_BT, block).copy_(logp_c)
            if want_entropy:
                _take(ent_BT, block).copy_(ent_c)
                _take(mean_x_BT, block).copy_(mean_x_c)
        # The logits are saved by reference (no copy); only [B, T] vectors are added.
        ctx.save_for_backward(logits_BTV, ids_BT, lse_BT, mean_x_BT)
        ctx.rows, ctx.temperature, ctx.want_entropy = rows, temperature, want_entropy
        if ids_BT is None:
            ctx.mark_non_differentiable(logp_BT)
        if not want_entropy:
            ctx.mark_non_differentiable(ent_BT)
        return logp_BT, ent_BT

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_logp_BT: Tensor, g_ent_BT: Tensor) -> tuple[Tensor | None, ...]:
        logits_BTV, ids_BT, lse_BT, mean_x_BT = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        dtype = lse_BT.dtype
        # Incoming gradients may be expanded (stride 0) or strided; make chunk views of them cheap.
        g_logp_BT, g_ent_BT = g_logp_BT.contiguous(), g_ent_BT.contiguous()
        grad_BTV = torch.empty(logits_BTV.shape, dtype=logits_BTV.dtype, device=logits_BTV.device)
        for block in _blocks(logits_BTV, ctx.rows):
            x_cV = _scaled(_take(logits_BTV, block), ctx.temperature, dtype)
            grad_cV = _grad_chunk(
                x_cV,
                _take(ids_BT, block) if ids_BT is not None else None,
                _take(lse_BT, block),
                _take(mean_x_BT, block) if ctx.want_entropy else None,
                _take(g_logp_BT, block).to(dtype) if ids_BT is not None else None,
                _take(g_ent_BT, block).to(dtype) if ctx.want_entropy else None,
                ctx.temperature,
            )
            # grad_BTV is contiguous, so its blocks are the flat-row blocks when the logits' are.
            _take(grad_BTV, block).copy_(grad_cV)
        return grad_BTV, None, None, None, None


def _check_logits(logits: Tensor, ids: Tensor | None) -> None:
    if logits.dim() != 3:
        raise ValueError(f"logits must be 3-D [B, T, V], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got dtype {logits.dtype}")
    if ids is not None:
        if ids.shape != logits.shape[:2]:
            raise ValueError(f"ids must have shape [B, T]={tuple(logits.shape[:2])}, got {tuple(ids.shape)}")
        if ids.dtype != torch.long:
            raise TypeError(f"ids must be int64 token ids, got dtype {ids.dtype}")


def token_logprobs(
    logits: Tensor, ids: Tensor, *, chunk_size: int | None = None, temperature: float = 1.0
) -> Tensor:
    """``log softmax(logits / temperature)[ids]`` per token, without a full [B, T, V] log-softmax copy.

    Differentiable w.r.t. ``logits`` (gradient in the logits' dtype). ``ids`` must be valid token ids in
    ``[0, V)`` at every position (use any valid id, e.g. the pad id, where the mask is False).

    Shapes:
        logits: [B, T, V] float (any float dtype), ids: [B, T] int64 -> [B, T] float32 (float64 for float64)
    """
    _check_logits(logits, ids)
    _check_temperature(temperature)
    rows = _rows_per_chunk(chunk_size, logits.shape[-1])
    logp_BT, _ = _ChunkedLogSoftmax.apply(logits, ids, rows, temperature, False)
    return logp_BT


def token_entropy(logits: Tensor, *, chunk_size: int | None = None, temperature: float = 1.0) -> Tensor:
    """Entropy ``H = -sum_v p_v log p_v`` of ``softmax(logits / temperature)`` per token, chunked.

    Differentiable w.r.t. ``logits``.

    Shapes:
        logits: [B, T, V] float -> [B, T] float32 (float64 for float64)
    """
    _check_logits(logits, None)
    _check_temperature(temperature)
    rows = _rows_per_chunk(chunk_size, logits.shape[-1])
    _, ent_BT = _ChunkedLogSoftmax.apply(logits, None, rows, temperature, True)
    return ent_BT


def logprobs_and_entropy(
    logits: Tensor, ids: Tensor, *, chunk_size: int | None = None, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Token log-probs and entropies in one chunked pass over the logits (one ``logsumexp`` per row).

    Shapes:
        logits: [B, T, V] float, ids: [B, T] int64 -> ([B, T], [B, T]) float32 (float64 for float64)
    """
    _check_logits(logits, ids)
    _check_temperature(temperature)
    rows = _rows_per_chunk(chunk_size, logits.shape[-1])
    return _ChunkedLogSoftmax.apply(logits, ids, rows, temperature, True)


# --------------------------------------------------------------------------------------------------------------
# From the last hidden state: the [B, T, V] logits never exist
# --------------------------------------------------------------------------------------------------------------

DEFAULT_VOCAB_TILE = 4096  # vocabulary columns per tile of the hidden-state path on CPU
ACCELERATOR_TILE_SCALE = 8  # on GPUs tiles are 8x larger (2x the columns): fewer kernel launches per pass


def _tile_sizes(rows: int | None, cols: int | None, n: int, vocab: int, device: torch.device) -> tuple[int, int]:
    """(rows, cols) of one logits tile. Defaults on CPU: 4,096 vocabulary entries by 1,024 rows
    (``DEFAULT_CHUNK_ELEMENTS``, 16 MB in float32: the best of the shapes tried in benchmarks/bench_loss.py);
    on accelerators 8,192 by 4,096 (128 MB)."""
    scale = 1 if device.type == "cpu" else ACCELERATOR_TILE_SCALE
    if cols is None:
        cols = min(DEFAULT_VOCAB_TILE * (1 if scale == 1 else 2), max(vocab, 1))
    cols = _positive("vocab_chunk_size", cols, "vocabulary entries")
    rows = max(1, scale * DEFAULT_CHUNK_ELEMENTS // cols) if rows is None else _positive("chunk_size", rows)
    return min(rows, max(n, 1)), cols


def _logit_tile(h_cH: Tensor, w_vH: Tensor, dtype: torch.dtype) -> Tensor:
    """One tile of (already temperature-scaled) logits, upcast for the softmax maths: [c, H] x [v, H] -> [c, v].
    The matmul runs in the weights' dtype, as the LM head would."""
    return (h_cH @ w_vH.T).to(dtype)


def _add_matmul(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """``acc += a @ b``, in place and without a temporary when the dtypes allow it."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    else:
        acc.add_(a @ b)


class _HiddenLogSoftmax(torch.autograd.Function):
    """Outputs (logp [N], entropy [N] or empty) of ``softmax(hidden_NH @ weight_VH.T / temperature)``.

    Both passes walk tiles of ``rows x cols`` logits, vocabulary tiles outside and row tiles inside, so that each
    [cols, H] slice of the weight is read once per pass and every matmul is large. The forward accumulates the
    log-sum-exp online over the vocabulary tiles (running max ``m``, ``S = sum exp(x - m)`` and, for the entropy,
    ``A = sum exp(x - m) (x - m)``): ``lse = m + log S`` and ``H = log S - A / S``. The backward recomputes each
    tile from the saved ``lse``; ``log p = x - lse`` and ``x - E_p[x] = log p + H`` give both gradients.
    """

    @staticmethod
    def forward(ctx: Any, hidden_NH: Tensor, weight_VH: Tensor, ids_N: Tensor, rows: int, cols: int,
                temperature: float, want_entropy: bool) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)  # an entropy that only feeds the metrics gets no backward work
        N, V = hidden_NH.shape[0], weight_VH.shape[0]
        dtype = _out_dtype(hidden_NH.dtype)
        new = dict(dtype=dtype, device=hidden_NH.device)
        max_N, sum_N, target_N = torch.empty(N, **new), torch.empty(N, **new), torch.zeros(N, **new)
        a_N = torch.empty(N, **new) if want_entropy else None
        # 1 / temperature scales the [N, H] hidden state once, not every logit.
        h_NH = hidden_NH / temperature if temperature != 1.0 else hidden_NH
        with _no_autocast(hidden_NH):
            for v0 in range(0, V, cols):
                w_vH = weight_VH[v0:v0 + cols]
                for r0 in range(0, N, rows):
                    r = slice(r0, r0 + rows)
                    x_cv = _logit_tile(h_NH[r], w_vH, dtype)
                    _gather_targets(target_N[r], x_cv, ids_N[r], v0)
                    _online_logsumexp(x_cv, max_N[r], sum_N[r], None if a_N is None else a_N[r], first=v0 == 0)
        log_sum_N = torch.log(sum_N)
        lse_N = max_N + log_sum_N
        ent_N = log_sum_N - a_N / sum_N if want_entropy else torch.empty(0, **new)
        ctx.save_for_backward(hidden_NH, weight_VH, ids_N, lse_N, ent_N if want_entropy else None)
        ctx.rows, ctx.cols, ctx.temperature = rows, cols, temperature
        if not want_entropy:
            ctx.mark_non_differentiable(ent_N)
        return target_N - lse_N, ent_N

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_logp_N: Tensor | None, g_ent_N: Tensor | None) -> tuple[Tensor | None, ...]:
        hidden_NH, weight_VH, ids_N, lse_N, ent_N = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        none = (None,) * 5
        if (g_logp_N is None and g_ent_N is None) or not (need_h or need_w):
            return None, None, *none
        N, H, V = hidden_NH.shape[0], hidden_NH.shape[1], weight_VH.shape[0]
        dtype, rows, cols, temperature = lse_N.dtype, ctx.rows, ctx.cols, ctx.temperature
        g_lp = None if g_logp_N is None else g_logp_N.to(dtype)
        g_ent = None if g_ent_N is None else g_ent_N.to(dtype)
        # d/dx [g_lp logp + g_ent H] = g_lp (onehot - p) - p g_ent (log p + H): the per-row constant of the p term.
        const_N = None if g_ent is None else g_ent * ent_N + (g_lp if g_lp is not None else 0.0)
        h_NH = hidden_NH / temperature if temperature != 1.0 else hidden_NH
        grad_h_NH = torch.zeros(N, H, dtype=dtype, device=hidden_NH.device) if need_h else None
        grad_w_VH = torch.empty_like(weight_VH) if need_w else None
        with _no_autocast(hidden_NH):
            for v0 in range(0, V, cols):
                w_vH = weight_VH[v0:v0 + cols]
                # The weight gradient of a vocabulary tile is summed over the row tiles in float32 (float64).
                grad_w_vH = torch.zeros(w_vH.shape, dtype=dtype, device=w_vH.device) if need_w else None
                for r0 in range(0, N, rows):
                    r = slice(r0, r0 + rows)
                    grad_cv = _grad_tile(_logit_tile(h_NH[r], w_vH, dtype), ids_N[r], v0, lse_N[r],
                                         *(None if g is None else g[r] for g in (const_N, g_lp, g_ent)))
                    grad_cv = grad_cv.to(weight_VH.dtype)
                    if need_h:
                        _add_matmul(grad_h_NH[r], grad_cv, w_vH)
                    if need_w:
                        _add_matmul(grad_w_vH, grad_cv.T, h_NH[r])
                if need_w:
                    grad_w_VH[v0:v0 + cols] = grad_w_vH
        if need_h:
            grad_h_NH = (grad_h_NH / temperature if temperature != 1.0 else grad_h_NH).to(hidden_NH.dtype)
        return grad_h_NH, grad_w_VH, *none


def _no_autocast(t: Tensor):
    """The tiles run in the dtype the caller chose for them (the caller mirrors the LM head's autocast)."""
    return torch.autocast(t.device.type, enabled=False)


def _gather_targets(target_c: Tensor, x_cv: Tensor, ids_c: Tensor, v0: int) -> None:
    """``target_c[i] += x_cv[i, ids_c[i] - v0]`` for the rows whose target token lies in this vocabulary tile
    (no host synchronization: the other rows add 0)."""
    col_c = ids_c - v0
    hit_c = (col_c >= 0) & (col_c < x_cv.shape[1])
    picked_c = x_cv.gather(1, col_c.clamp(0, x_cv.shape[1] - 1)[:, None]).squeeze(1)
    target_c.add_(torch.where(hit_c, picked_c, 0.0))


def _online_logsumexp(x_cv: Tensor, max_c: Tensor, sum_c: Tensor, a_c: Tensor | None, *, first: bool) -> None:
    """Folds one tile into the running ``m``, ``S = sum exp(x - m)`` and ``A = sum exp(x - m) (x - m)`` (in place;
    overwrites ``x_cv``). On the first tile the running values are set, later tiles rescale them to the new max."""
    tile_max_c = x_cv.amax(dim=1)
    new_max_c = tile_max_c if first else torch.maximum(max_c, tile_max_c)
    y_cv = x_cv.sub_(new_max_c[:, None])  # x - m_new <= 0
    e_cv = torch.exp(y_cv)
    tile_sum_c = e_cv.sum(dim=1)
    tile_a_c = torch.linalg.vecdot(e_cv, y_cv) if a_c is not None else None
    if first:
        sum_c.copy_(tile_sum_c)
        if a_c is not None:
            a_c.copy_(tile_a_c)
    else:
        shift_c = max_c - new_max_c  # <= 0
        scale_c = torch.exp(shift_c)
        if a_c is not None:  # sum exp(x - m_new)(x - m_new) over the old tiles = scale (A + shift S)
            a_c.copy_(scale_c * (a_c + shift_c * sum_c) + tile_a_c)
        sum_c.mul_(scale_c).add_(tile_sum_c)
    max_c.copy_(new_max_c)


def _grad_tile(x_cv: Tensor, ids_c: Tensor, v0: int, lse_c: Tensor, const_c: Tensor | None, g_lp_c: Tensor | None,
               g_ent_c: Tensor | None) -> Tensor:
    """Gradient w.r.t. one tile of scaled logits of ``sum(g_lp logp + g_ent H)`` (in place on ``x_cv``):
    ``g_lp (onehot - p) - p g_ent (log p + H)`` = ``-p (g_ent log p + const) + g_lp onehot``."""
    logp_cv = x_cv.sub_(lse_c[:, None])
    p_cv = torch.exp(logp_cv)
    if g_ent_c is not None:
        grad_cv = p_cv.mul_(logp_cv.mul_(g_ent_c[:, None]).add_(const_c[:, None])).neg_()
    else:
        grad_cv = p_cv.mul_(g_lp_c[:, None].neg())
    if g_lp_c is not None:
        col_c = ids_c - v0
        hit_c = (col_c >= 0) & (col_c < x_cv.shape[1])
        grad_cv.scatter_add_(1, col_c.clamp(0, x_cv.shape[1] - 1)[:, None], torch.where(hit_c, g_lp_c, 0.0)[:, None])
    return grad_cv


def _hidden_apply(hidden: Tensor, weight: Tensor, ids: Tensor, chunk_size: int | None, vocab_chunk_size: int | None,
                  temperature: float, want_entropy: bool) -> tuple[Tensor, Tensor]:
    if hidden.dim() != 3 or weight.dim() != 2 or hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(f"expected hidden [B, T, H] and lm_head_weight [V, H], got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if ids.shape != hidden.shape[:2] or ids.dtype != torch.long:
        raise ValueError(f"ids must be int64 of shape [B, T]={tuple(hidden.shape[:2])}, got {tuple(ids.shape)} "
                         f"{ids.dtype}")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden ({hidden.dtype}) and lm_head_weight ({weight.dtype}) must share a dtype")
    _check_temperature(temperature)
    B, T, H = hidden.shape
    rows, cols = _tile_sizes(chunk_size, vocab_chunk_size, B * T, weight.shape[0], hidden.device)
    # reshape copies only for non-viewable slices, and then only [B, T, H], not [B, T, V].
    logp_N, ent_N = _HiddenLogSoftmax.apply(hidden.reshape(B * T, H), weight, ids.reshape(B * T), rows, cols,
                                            temperature, want_entropy)
    return logp_N.view(B, T), (ent_N.view(B, T) if want_entropy else ent_N)


def hidden_logprobs(
    hidden_BTH: Tensor,
    lm_head_weight_VH: Tensor,
    ids: Tensor,
    *,
    chunk_size: int | None = None,
    vocab_chunk_size: int | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Token log-probs straight from the last hidden state: logits are computed one tile at a time and dropped.

    Equivalent to ``token_logprobs(hidden_BTH @ lm_head_weight_VH.T, ids)`` (an LM head without bias, as in
    Llama/Qwen), differentiable w.r.t. both the hidden state and the weight. Neither pass holds more than one
    ``chunk_size x vocab_chunk_size`` tile of logits (defaults 1,024 rows x 4,096 vocabulary entries) besides
    [N]-sized vectors and the gradients themselves. The price is one extra LM-head matmul in the backward (each
    tile is recomputed); benchmarks/bench_loss.py measures it against the naive path.

    Shapes:
        hidden_BTH: [B, T, H], lm_head_weight_VH: [V, H] (same dtype), ids: [B, T] int64 -> [B, T] float32
    """
    return _hidden_apply(hidden_BTH, lm_head_weight_VH, ids, chunk_size, vocab_chunk_size, temperature, False)[0]


def hidden_logprobs_and_entropy(
    hidden_BTH: Tensor,
    lm_head_weight_VH: Tensor,
    ids: Tensor,
    *,
    chunk_size: int | None = None,
    vocab_chunk_size: int | None = None,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """:func:`hidden_logprobs` plus the per-token entropy, in the same tiled pass.

    Shapes:
        hidden_BTH: [B, T, H], lm_head_weight_VH: [V, H], ids: [B, T] int64 -> ([B, T], [B, T]) float32
    """
    return _hidden_apply(hidden_BTH, lm_head_weight_VH, ids, chunk_size, vocab_chunk_size, temperature, True)
