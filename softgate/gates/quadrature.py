"""Gauss-Legendre quadrature shared by the student family, the user gates and the admissibility check."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

_CHUNK = 1 << 14  # intervals per block of ``integrate``: bounds the [n, nodes] temporaries to a few MB


@functools.lru_cache(maxsize=8)
def gauss_legendre(n: int) -> tuple[Tensor, Tensor]:
    """Nodes and weights of n-point Gauss-Legendre on [-1, 1] (Golub-Welsch, float64, CPU).

    Shapes:
        -> ([n], [n])
    """
    k = torch.arange(1, n, dtype=torch.float64)
    off = k / torch.sqrt(4 * k * k - 1)
    nodes, vecs = torch.linalg.eigh(torch.diag(off, 1) + torch.diag(off, -1))
    return nodes, 2 * vecs[0] ** 2


def integrate(fn: Callable[[Tensor], Tensor], a: Tensor, b: Tensor, n_nodes: int) -> Tensor:
    """int_a^b fn for each pair (a, b) by ``n_nodes``-point Gauss-Legendre, in blocks of intervals.

    Shapes:
        a, b: [n] float64 -> [n] float64 (``fn`` is called on [block, n_nodes] tensors)
    """
    nodes, weights = (t.to(a.device) for t in gauss_legendre(n_nodes))
    out = torch.empty_like(a)
    for start in range(0, a.numel(), _CHUNK):
        lo, hi = a[start:start + _CHUNK, None], b[start:start + _CHUNK, None]
        half = 0.5 * (hi - lo)
        vals = torch.as_tensor(fn(lo + half * (nodes + 1.0)), dtype=torch.float64)
        out[start:start + _CHUNK] = half[:, 0] * (vals @ weights)
    return out
