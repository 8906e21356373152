"""The closed sets of softgate: one definition each, imported by the config, the maths modules and the CLI.

This module imports nothing heavy (no torch), so that ``--help`` and config validation stay fast. Gates are not
here: they are the open axis, owned by the registry in ``softgate.gates``.
"""

from __future__ import annotations

from typing import Literal, get_args

Level = Literal["token", "sequence", "sequence-token"]
"""Where the importance ratio lives: per token (the paper), per sequence (GSPO), sequence value + token gradient."""
LEVELS: tuple[str, ...] = get_args(Level)

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
"""How per-token losses become one number: DAPO's token mean, the paper's sequence mean, Dr. GRPO's fixed norm."""
AGG_MODES: tuple[str, ...] = get_args(AggMode)

AdvantageEstimator = Literal["std", "mean", "rloo"]
"""Group advantage: std-normalized (GRPO), mean-only (Dr. GRPO), leave-one-out (RLOO)."""
ADVANTAGE_ESTIMATORS: tuple[str, ...] = get_args(AdvantageEstimator)

KLEstimator = Literal["k1", "k2", "k3"]
"""Schulman's estimators of KL(pi || ref) from per-token log-ratios."""
KL_ESTIMATORS: tuple[str, ...] = get_args(KLEstimator)

ExtractMode = Literal["answer", "gsm8k", "boxed"]
"""Where the final answer is read from a completion: <answer> tags, GSM8K's '#### N', LaTeX \\boxed{}."""
EXTRACT_MODES: tuple[str, ...] = get_args(ExtractMode)

Schedule = Literal["constant", "linear", "cosine"]
"""Learning-rate schedule after warmup."""
SCHEDULES: tuple[str, ...] = get_args(Schedule)

DType = Literal["float32", "bfloat16", "float16"]
"""Floating-point types a config may name."""
DTYPES: tuple[str, ...] = get_args(DType)

Backend = Literal["hf", "vllm"]
"""Rollout samplers."""
BACKENDS: tuple[str, ...] = get_args(Backend)

Engine = Literal["native", "trl"]
"""Training engines: softgate's own loop (softgate.train) or TRL's GRPOTrainer under accelerate (softgate.engines)."""
ENGINES: tuple[str, ...] = get_args(Engine)

MinibatchSplit = Literal["groups", "rows"]
"""How a rollout is cut into minibatches: whole groups (reshuffled on later passes) or TRL's shuffled rows."""
MINIBATCH_SPLITS: tuple[str, ...] = get_args(MinibatchSplit)

LogprobImpl = Literal["auto", "logits", "hidden"]
"""How the trainer scores tokens: from the model's logits, from the last hidden state in tiles, or by vocab size."""
LOGPROB_IMPLS: tuple[str, ...] = get_args(LogprobImpl)

__all__ = [
    "ADVANTAGE_ESTIMATORS", "AGG_MODES", "BACKENDS", "DTYPES", "ENGINES", "EXTRACT_MODES", "KL_ESTIMATORS", "LEVELS",
    "LOGPROB_IMPLS", "MINIBATCH_SPLITS", "SCHEDULES", "AdvantageEstimator", "AggMode", "Backend", "DType", "Engine",
    "ExtractMode", "KLEstimator", "Level", "LogprobImpl", "MinibatchSplit", "Schedule",
]
