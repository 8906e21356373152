"""What the TRL and verl plug-ins share, kept free of both frameworks: softgate's rewards in each framework's
reward-function signature, EUR (Eq. 12) over an optimizer step, and the dual clip both hosts put on the clip gate.

The plug-ins re-export the rewards (``softgate.integrations.trl.reward_functions``,
``softgate.integrations.verl.compute_score``); importing this module needs neither TRL nor verl.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from softgate.diagnostics import eur_from_group_sums, eur_group_sums
from softgate.gates.clip import ClipGate

__all__ = ["DualClipGate", "StepEUR", "completion_text", "compute_score", "reward_functions"]


class StepEUR:
    """EUR exactly as the paper's Eq. 12 over one optimizer step whose groups are split across micro-batches and
    processes.

    Each micro-batch adds its per-group numerators (sum of f') and denominators (token counts)
    (:func:`softgate.diagnostics.eur_group_sums`); :meth:`compute` gathers them from every process of ``group``
    when ``torch.distributed`` is initialized, sums the parts of each group, and only then takes the ratio and the
    mean over groups. Averaging per-micro-batch EURs instead weights a group's part by micro-batch, not by tokens:
    one prompt with a 1-token completion at f' = 0 and a 9-token one at f' = 1 has EUR 9/10, not (0 + 1) / 2.

    Group labels must name the same group on every process (the plug-ins derive them from TRL's generation layout
    and verl's ``uid``).
    """

    def __init__(self) -> None:
        self._parts: list[tuple[Tensor, Tensor, Tensor]] = []

    def __len__(self) -> int:
        """Micro-batches added since the last :meth:`compute`."""
        return len(self._parts)

    @torch.no_grad()
    def add(self, df_BT: Tensor, mask_BT: Tensor, group_ids_B: Tensor) -> None:
        """Add one micro-batch.  Shapes: df_BT [B, T] float, mask_BT [B, T] bool, group_ids_B [B] int."""
        self._parts.append(eur_group_sums(df_BT.detach(), mask_BT, group_ids_B.to(df_BT.device)))

    @torch.no_grad()
    def compute(self, group: Any = None) -> Tensor:
        """EUR of the micro-batches added so far, on every process of ``group``; resets. A collective when
        ``torch.distributed`` is initialized: every process of ``group`` must call it.  Shapes: -> []"""
        if not self._parts:
            raise RuntimeError("StepEUR.compute: no micro-batch was added")
        labels, num, den = (torch.cat(parts) for parts in zip(*self._parts, strict=True))
        self._parts = []
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            labels = _all_gather_rows(labels, group)
            num, den = _all_gather_rows(torch.stack([num, den], dim=1), group).unbind(1)
        return eur_from_group_sums(labels, num, den)


def _all_gather_rows(x: Tensor, group: Any) -> Tensor:
    """Rows of ``x`` from every process of ``group``, concatenated in rank order (row counts may differ).

    Shapes: [N_rank, *] -> [sum_rank N_rank, *]
    """
    dist = torch.distributed
    world = dist.get_world_size(group)
    n = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(counts, n, group=group)
    sizes = [int(c) for c in counts]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    return torch.cat([g[:size] for g, size in zip(gathered, sizes, strict=True)])


class DualClipGate(ClipGate):
    """The clip gate with dual clip (Ye et al. 2020, arXiv:1912.09729): for A <= 0 the ratio is also capped at
    ``ratio_cap``, so a token whose ratio ran past it gets no gradient.

    ``f = min(r, 1 + eps_high)`` for A > 0 and ``f = min(ratio_cap, max(r, 1 - eps_low))`` for A <= 0, i.e. verl's
    ``vanilla`` loss with ``clip_ratio_c = ratio_cap``; TRL's two-sided clip (``delta``) is this gate too (see
    :meth:`from_trl_delta`). Not in the registry: the plug-ins build it from their host's settings.
    """

    name: ClassVar[str] = "dual-clip"
    param_defaults: ClassVar[dict[str, float]] = {"eps_low": 0.2, "eps_high": 0.2, "ratio_cap": 3.0}

    def _validate(self, params: dict[str, float]) -> None:
        super()._validate(params)
        if not params["ratio_cap"] > 1.0:
            raise ValueError(f"dual clip: the ratio cap must be > 1, got {params['ratio_cap']:g}")

    @classmethod
    def from_trl_delta(cls, eps_low: float, eps_high: float, delta: float) -> DualClipGate:
        """TRL's ``-min(min(r, delta) A, clip(r, 1 - eps_low, 1 + eps_high) A)`` (GRPOTrainer._compute_loss).

        For A > 0 that is ``min(r, delta, 1 + eps_high)``; for A <= 0 ``max(min(r, delta), clip(r, ...))``, which
        is ``min(max(delta, 1 + eps_high), max(r, 1 - eps_low))`` for every ``delta >= 1``.
        """
        if not delta >= 1.0:
            raise ValueError(f"delta (TRL's two-sided clip) must be >= 1, got {delta:g}")
        return cls(eps_low=eps_low, eps_high=min(delta - 1.0, eps_high), ratio_cap=max(delta, 1.0 + eps_high))

    def _f(self, x: Tensor, pos: Tensor) -> Tensor:
        low, high, cap = 1.0 - self.params["eps_low"], 1.0 + self.params["eps_high"], self.params["ratio_cap"]
        return torch.where(pos, x.clamp(max=high), x.clamp(min=low).clamp(max=cap))

    def _df(self, x: Tensor, pos: Tensor) -> Tensor:
        low, high, cap = 1.0 - self.params["eps_low"], 1.0 + self.params["eps_high"], self.params["ratio_cap"]
        return torch.where(pos, x <= high, (x >= low) & (x <= cap)).to(x.dtype)


def completion_text(completion: Any) -> str:
    """TRL passes plain strings, or for conversational data a list of messages ending with the assistant's."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # multimodal content parts
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)
    raise TypeError(f"unexpected completion type {type(completion).__name__}: expected str or list of messages")


def reward_functions(
    *,
    reference_column: str = "answer",
    extract: str | tuple[str, ...] = "answer",
    symbolic: bool = True,
) -> list[Any]:
    """softgate's two rewards as TRL reward functions: ``[format_reward, answer_reward]``.

    Pass them as ``reward_funcs`` (TRL sums them, as the paper does: reward = answer + format) and TRL logs
    ``rewards/format_reward/mean`` and ``rewards/answer_reward/mean``. ``answer_reward`` reads the reference
    answers from the dataset column ``reference_column``; ``extract`` and ``symbolic`` are those of
    :func:`softgate.rewards.answer_rewards`.
    """
    from softgate import rewards

    def format_reward(completions: list[Any], **_: Any) -> list[float]:
        return rewards.format_rewards([completion_text(c) for c in completions])

    def answer_reward(completions: list[Any], **kwargs: Any) -> list[float]:
        if reference_column not in kwargs:
            raise KeyError(f"answer_reward needs the dataset column {reference_column!r} with the reference answers; "
                           f"columns seen: {sorted(k for k in kwargs if not k.startswith('completion'))}")
        references = [str(r) for r in kwargs[reference_column]]
        return rewards.answer_rewards([completion_text(c) for c in completions], references,
                                      extract=extract, symbolic=symbolic)

    return [format_reward, answer_reward]


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict[str, Any] | None = None,
) -> dict[str, float]:
    """softgate's reward for verl's reward manager: answer reward + format reward (the paper's sum).

    Use with ``reward.custom_reward_function.path=<softgate/integrations/verl.py>`` and
    ``reward.custom_reward_function.name=compute_score``. Returns ``{"score": answer + format, "answer": ..,
    "format": ..}``; verl uses ``score`` as the reward and logs the other keys. ``extra_info["symbolic"] = False``
    restricts grading to the exact/numeric fast path (integer answers such as GSM8K's).
    """
    from softgate import rewards

    symbolic = bool((extra_info or {}).get("symbolic", True))
    fmt = rewards.format_reward(solution_str)
    ans = rewards.answer_reward(solution_str, str(ground_truth), symbolic=symbolic)
    return {"score": ans + fmt, "answer": ans, "format": fmt}
