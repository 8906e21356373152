"""The settings of softgate's TRL plug-in (TRL 1.16): :class:`SoftGateGRPOConfig`, TRL's ``GRPOConfig`` plus the
softgate loss options, and how TRL's own settings are read: ``loss_type`` (the aggregation), ``delta`` (the clip
gate's two-sided clip) and TRL's rule for when it computes old log-probs (:func:`gate_is_inert`).

The trainer is :mod:`softgate.integrations.trl`, which re-exports every name here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from typing import Any

try:
    import trl
    from trl import GRPOConfig
except ImportError as err:  # pragma: no cover - exercised only without TRL
    raise ImportError(
        f"softgate.integrations.trl needs TRL >=1.16,<1.17: pip install 'softgate[trl]' (import failed: {err})"
    ) from err

from packaging.version import Version

from softgate import gates as gates_mod
from softgate.aggregate import AGG_MODES, AggMode
from softgate.integrations.common import DualClipGate
from softgate.losses import LEVELS

__all__ = [
    "SUPPORTED_TRL",
    "TRL_LOSS_AGG",
    "SoftGateGRPOConfig",
    "check_trl_version",
    "gate_is_inert",
    "trl_loss_type",
    "warn_if_gate_is_inert",
]

SUPPORTED_TRL = (">=1.16", "<1.17")
logger = logging.getLogger("softgate.integrations.trl")  # the plug-in's one logger, named by its public module

# TRL loss_type -> the softgate aggregation with TRL's scaling for it (trl_normalizer). The other loss types
# (bnpo, cispo, luspo, vespo) are not a gated surrogate with one of these aggregations.
TRL_LOSS_AGG: dict[str, AggMode] = {
    "grpo": "seq-mean-token-mean",
    "sapo": "seq-mean-token-mean",
    "dapo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
}


def check_trl_version(version: str | None = None) -> None:
    """Raise if the installed TRL (or ``version``) is outside the tested range ``>=1.16,<1.17``.

    The trainer overrides TRL's private ``_compute_loss`` and reads its internals, which change between releases.
    """
    found = Version(version or trl.__version__)
    if not Version("1.16") <= found < Version("1.17"):
        raise ImportError(
            f"softgate.integrations.trl is tested with TRL >=1.16,<1.17 (it overrides GRPOTrainer._compute_loss), "
            f"found TRL {found}: pip install 'softgate[trl]'"
        )


check_trl_version()


@dataclasses.dataclass
class SoftGateGRPOConfig(GRPOConfig):
    """TRL's ``GRPOConfig`` plus the softgate loss options (``softgate_*``).

    Gate parameters come from the registry (``softgate.gates.defaults``: temperatures 10 / 12) unless given:
    ``softgate_tau_pos`` / ``softgate_tau_neg``, or TRL's ``sapo_temperature_pos`` / ``sapo_temperature_neg``
    when changed from TRL's defaults, or ``softgate_gate_params`` (which wins); the ``clip`` gate takes TRL's
    ``epsilon`` / ``epsilon_high`` (and TRL's two-sided clip ``delta``, for that gate only). After construction
    both temperature pairs hold the gate's values (SAPO's own 1 / 1.05 is ``softgate_tau_pos=1.0,
    softgate_tau_neg=1.05``).

    Aggregation: ``softgate_agg`` when set; else the one of ``loss_type`` (:data:`TRL_LOSS_AGG`; TRL's default
    ``dapo`` when neither is given). Both set and disagreeing is an error naming both. An unset ``loss_type`` is
    filled with TRL's loss of the same aggregation (:func:`trl_loss_type`), which TRL reads only for warnings.
    """

    loss_type: str | None = dataclasses.field(
        default=None,
        metadata={"help": "TRL's loss type; here it chooses the aggregation when softgate_agg is unset: grpo and "
                          "sapo -> seq-mean-token-mean, dapo (TRL's default) -> token-mean, dr_grpo -> "
                          "seq-mean-token-sum-norm."},
    )

    softgate_gate: str = dataclasses.field(
        default="sigmoid",
        metadata={"help": "softgate gate family (`softgate gates list`): sigmoid, erf, arctan, softsign, clip..."},
    )
    softgate_tau_pos: float | None = dataclasses.field(
        default=None,
        metadata={"help": "Gate temperature for tokens with A > 0. None: TRL's `sapo_temperature_pos` if changed "
                          "from TRL's default, else the gate's default (10)."},
    )
    softgate_tau_neg: float | None = dataclasses.field(
        default=None,
        metadata={"help": "Gate temperature for tokens with A <= 0. None: TRL's `sapo_temperature_neg` if changed "
                          "from TRL's default, else the gate's default (12)."},
    )
    softgate_gate_params: dict[str, Any] | str | None = dataclasses.field(
        default=None,
        metadata={"help": "Gate parameters as a dict or JSON string, e.g. '{\"nu\": 3}' (student gate); they win "
                          "over the fields above."},
    )
    softgate_level: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Ratio level: token, sequence (GSPO) or sequence-token. None: `importance_sampling_level`."},
    )
    softgate_agg: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Aggregation: seq-mean-token-mean (the paper, TRL grpo/sapo), token-mean (TRL dapo), "
                          "seq-mean-token-sum-norm (TRL dr_grpo). None: the one of loss_type."},
    )
    softgate_log_ratio_bound: float = dataclasses.field(
        default=20.0,
        metadata={"help": "|log r| is clamped to this before exp; clamped tokens get no gradient."},
    )
    softgate_soft_clip_threshold: float = dataclasses.field(
        default=0.5,
        metadata={"help": "f' below this counts in gate/soft_clip_frac."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.softgate_gate_params, str):
            try:
                self.softgate_gate_params = json.loads(self.softgate_gate_params)
            except json.JSONDecodeError as err:
                raise ValueError(f"softgate_gate_params: not valid JSON ({err}): {self.softgate_gate_params!r}")
        self.softgate_gate_params = dict(self.softgate_gate_params or {})
        trl_defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
        for ours, theirs in [("softgate_tau_pos", "sapo_temperature_pos"),
                             ("softgate_tau_neg", "sapo_temperature_neg")]:
            # TRL's SAPO field, when the user changed it, means the same thing as ours.
            if getattr(self, ours) is None and getattr(self, theirs) != trl_defaults[theirs]:
                setattr(self, ours, float(getattr(self, theirs)))
        if self.softgate_level is None:
            self.softgate_level = self.importance_sampling_level
        if self.softgate_level not in LEVELS:
            raise ValueError(f"softgate_level: unknown level {self.softgate_level!r}; known levels: "
                             f"{', '.join(LEVELS)}")
        self._resolve_aggregation()
        if not (math.isfinite(self.softgate_log_ratio_bound) and self.softgate_log_ratio_bound > 0):
            raise ValueError(f"softgate_log_ratio_bound must be a positive number, got {self.softgate_log_ratio_bound}")
        if self.softgate_gate not in gates_mod.names():
            raise ValueError(f"softgate_gate: unknown gate {self.softgate_gate!r}; known gates: "
                             f"{', '.join(gates_mod.names())}")
        if self.delta is not None and self.softgate_gate != "clip":
            raise ValueError(f"delta={self.delta} is TRL's two-sided clip, which softgate implements for the clip "
                             f"gate only; softgate_gate={self.softgate_gate!r}: unset delta or use the clip gate")
        # Build the gate once here so that a bad temperature fails at configuration time, naming the field.
        try:
            temperatures = self.softgate_gate_object().temperatures
        except (TypeError, ValueError) as err:
            raise ValueError(f"softgate_gate={self.softgate_gate!r} with softgate_tau_pos={self.softgate_tau_pos}, "
                             f"softgate_tau_neg={self.softgate_tau_neg}, softgate_gate_params="
                             f"{self.softgate_gate_params}: {err}") from err
        if temperatures is not None:
            # One value under both names, so that the saved config cannot disagree with itself.
            self.softgate_tau_pos, self.softgate_tau_neg = temperatures
            self.sapo_temperature_pos, self.sapo_temperature_neg = temperatures

    def _resolve_aggregation(self) -> None:
        """``softgate_agg`` from ``loss_type`` when unset; an explicit conflict is an error naming both."""
        if self.loss_type is not None and self.loss_type not in TRL_LOSS_AGG:
            raise ValueError(f"loss_type={self.loss_type!r} has no softgate counterpart (softgate_agg="
                             f"{self.softgate_agg!r}); use one of {', '.join(TRL_LOSS_AGG)} or leave loss_type unset "
                             f"and set softgate_agg")
        if self.softgate_agg is None:
            self.softgate_agg = TRL_LOSS_AGG[self.loss_type or "dapo"]  # "dapo": TRL's default loss_type
        if self.softgate_agg not in AGG_MODES:
            raise ValueError(f"softgate_agg: unknown aggregation {self.softgate_agg!r}; known modes: "
                             f"{', '.join(AGG_MODES)}")
        if self.loss_type is None:
            # TRL reads loss_type only for warnings; name its loss with the same aggregation (and surrogate).
            self.loss_type = trl_loss_type(self.softgate_gate, self.softgate_agg)
        elif TRL_LOSS_AGG[self.loss_type] != self.softgate_agg:
            raise ValueError(f"loss_type={self.loss_type!r} aggregates with {TRL_LOSS_AGG[self.loss_type]!r} but "
                             f"softgate_agg={self.softgate_agg!r}: set only one of them, or make them agree")

    def softgate_gate_object(self) -> gates_mod.Gate:
        """The configured gate: each field passed only if the family takes it, unset ones from the registry;
        with ``delta`` (clip gate only), TRL's two-sided clip."""
        host = {"tau_pos": self.softgate_tau_pos, "tau_neg": self.softgate_tau_neg, "eps_low": self.epsilon,
                "eps_high": self.epsilon if self.epsilon_high is None else self.epsilon_high}
        gate = gates_mod.make_accepted(self.softgate_gate, host, self.softgate_gate_params)
        if self.delta is not None:  # the clip gate (checked in __post_init__)
            return DualClipGate.from_trl_delta(gate.params["eps_low"], gate.params["eps_high"], self.delta)
        return gate


def trl_loss_type(gate: str, agg: AggMode) -> str:
    """TRL's ``loss_type`` with the aggregation ``agg`` (``sapo`` for the sigmoid gate, whose surrogate it is)."""
    match agg:
        case "seq-mean-token-mean":
            return "sapo" if gate == "sigmoid" else "grpo"
        case "token-mean":
            return "dapo"
        case "seq-mean-token-sum-norm":
            return "dr_grpo"
    raise ValueError(f"unknown aggregation {agg!r}; known modes: {', '.join(AGG_MODES)}")


def gate_is_inert(args: GRPOConfig) -> bool:
    """True when TRL computes no old log-probs, so that it takes them equal to the current ones (r = 1 for every
    token) and any gate with f'(1) = 1 is inert: the loss is the plain policy gradient.

    TRL 1.16's own rule, copied from ``_generate_and_score_completions`` (trl/trainer/grpo_trainer.py, lines
    2642-2645): old log-probs exist when ``gradient_accumulation_steps % (steps_per_generation * num_iterations)
    != 0`` (a generation batch outlives an optimizer step) or with vLLM and ``vllm_importance_sampling_correction``.
    """
    generate_every = args.steps_per_generation * args.num_iterations
    old_logps = (args.gradient_accumulation_steps % generate_every != 0
                 or (args.use_vllm and args.vllm_importance_sampling_correction))
    return not old_logps


def warn_if_gate_is_inert(args: SoftGateGRPOConfig) -> bool:
    """Log a warning when :func:`gate_is_inert`; returns whether it did."""
    if not gate_is_inert(args):
        return False
    vllm = " (vLLM without vllm_importance_sampling_correction)" if args.use_vllm else ""
    logger.warning(
        "softgate: TRL computes no old log-probs here%s: gradient_accumulation_steps (%d) is a multiple of "
        "steps_per_generation * num_iterations (%d * %d), so every update is on-policy (r = 1), the %r gate is "
        "inert and the loss is the plain policy gradient. Reuse rollouts across optimizer steps (num_iterations > 1 "
        "or steps_per_generation > gradient_accumulation_steps)%s for the gate to act.",
        vllm, args.gradient_accumulation_steps, args.steps_per_generation, args.num_iterations, args.softgate_gate,
        ", or set vllm_importance_sampling_correction=True" if args.use_vllm else "")
    return True
