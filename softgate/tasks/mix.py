"""Weighted, seeded mixing of example sources (the paper trains on an equal mix of GSM8K train + DeepMath-103K).

``mix(sources, weights, n=..., seed=...)`` returns ``n`` examples of which source ``i`` contributes
``round(n * w_i / sum(w))`` (largest-remainder rounding, so the counts add up to ``n`` exactly). Each source is
shuffled with the seed and read in order; a source asked for more examples than it has starts a new, reshuffled
pass (so repeats only happen once every example of that source has been used). The result is shuffled once more so
sources interleave. Same inputs and seed -> same list, independent of Python's hash seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

from softgate.tasks.base import Example


def allocate(n: int, weights: Sequence[float]) -> list[int]:
    """Split ``n`` into integer counts proportional to ``weights`` (largest remainder; ties go to the lower index)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not weights or any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all zero, got {list(weights)}")
    total = float(sum(weights))
    exact = [n * w / total for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def default_size(sizes: Sequence[int], weights: Sequence[float]) -> int:
    """The largest ``n`` for which no source with a positive weight has to repeat an example."""
    total = float(sum(weights))
    return min(math.floor(size * total / w + 1e-9) for size, w in zip(sizes, weights) if w > 0)


def mix(
    sources: Sequence[Sequence[Example]] | Mapping[str, Sequence[Example]],
    weights: Sequence[float] | Mapping[str, float] | None = None,
    *,
    n: int | None = None,
    seed: int = 0,
) -> list[Example]:
    """Mix example lists by weight.

    Args:
        sources: lists of examples (or a name -> list mapping).
        weights: one weight per source (or per name); None = equal weights.
        n: number of examples to return; None = as many as possible without repeating any source
            (``default_size``).
        seed: shuffling seed.
    """
    if isinstance(sources, Mapping):
        keys = list(sources)
        if isinstance(weights, Mapping):
            unknown = set(weights) - set(keys)
            if unknown:
                raise ValueError(f"weights name unknown sources {sorted(unknown)}; sources: {keys}")
            weights = [float(weights.get(k, 0.0)) for k in keys]
        lists = [list(sources[k]) for k in keys]
    else:
        keys = [str(i) for i in range(len(sources))]
        lists = [list(s) for s in sources]
    if not lists:
        raise ValueError("mix needs at least one source")
    w = [1.0] * len(lists) if weights is None else [float(x) for x in weights]  # type: ignore[union-attr]
    if len(w) != len(lists):
        raise ValueError(f"{len(w)} weights for {len(lists)} sources")
    for key, items, weight in zip(keys, lists, w):
        if weight > 0 and not items:
            raise ValueError(f"source {key!r} has weight {weight} but no examples")
    if n is None:
        n = default_size([len(x) for x in lists], w)
    counts = allocate(n, w)
    rng = random.Random(seed)
    out: list[Example] = []
    for items, count in zip(lists, counts):
        taken: list[Example] = []
        while len(taken) < count:
            order = list(items)
            rng.shuffle(order)  # a fresh permutation per pass over the source
            taken.extend(order[: count - len(taken)])
        out.extend(taken)
    rng.shuffle(out)
    return out


def paper_mix(
    gsm8k: Sequence[Example], deepmath: Sequence[Example], *, n: int | None = None, seed: int = 0
) -> list[Example]:
    """The paper's training set: GSM8K train and DeepMath-103K in equal proportion."""
    return mix([gsm8k, deepmath], [1.0, 1.0], n=n, seed=seed)
