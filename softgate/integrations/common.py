"""What the TRL and verl plug-ins share, kept free of both frameworks: softgate's rewards in each framework's
reward-function signature.

The plug-ins re-export these (``softgate.integrations.trl.reward_functions``,
``softgate.integrations.verl.compute_score``); importing this module needs neither TRL nor verl.
"""

from __future__ import annotations

from typing import Any

__all__ = ["completion_text", "compute_score", "reward_functions"]


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
