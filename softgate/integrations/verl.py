"""softgate gates as verl policy losses (verl 0.9.1), registered through verl's own ``register_policy_loss``.

Importing this module registers one verl policy loss per softgate gate, named ``softgate_<gate>``
(``softgate_sigmoid``, ``softgate_erf``, ``softgate_arctan``, ``softgate_softsign``, ``softgate_clip``...; the list
is built from :func:`softgate.gates.names`, so a gate registered before the import gets its loss too). Select one
with ``actor_rollout_ref.actor.policy_loss.loss_mode=softgate_erf``.

Where the parameters come from (verl's actor config, one home each; a field the config lacks takes the registry's
default, ``softgate.gates.defaults``):

- temperatures: ``actor_rollout_ref.actor.tau_pos`` / ``tau_neg``, the fields verl's own ``sapo`` loss reads (verl's
  actor config defaults them to SAPO's 1.0 / 1.05: set them, e.g. to the paper's best 10 / 12);
- the ``clip`` gate's trust region: ``actor.clip_ratio_low`` / ``clip_ratio_high`` (``clip_ratio`` when unset), and
  at the token level verl's dual clip ``actor.clip_ratio_c`` (default 3: for A < 0 the ratio is capped there, as in
  verl's ``vanilla`` loss; verl's ``gspo``, the clip gate at the sequence levels, has none);
- aggregation: ``actor.loss_agg_mode``, honoured (unlike verl's ``sapo``, which always uses seq-mean-token-mean);
- optional extras (ratio level, other gate parameters such as the student gate's ``nu``, the log-ratio clamp):
  fields of :class:`SoftGatePolicyLossConfig`, selected with
  ``actor_rollout_ref.actor.policy_loss._target_=softgate.integrations.verl.SoftGatePolicyLossConfig``.

verl looks the loss up in its worker processes, so this module has to be imported there: set
``actor_rollout_ref.model.external_lib=softgate.integrations.verl`` or the environment variable
``VERL_USE_EXTERNAL_MODULES=softgate.integrations.verl`` (see ``examples/verl_ray.md``).

Aggregation: verl reduces a per-token loss with a *global* normalizer carried in ``config.global_batch_info``
(``dp_size``, ``batch_num_tokens``, ``global_batch_size``, ``loss_scale_factor``) so that the sum over micro-batches
and the mean over data-parallel ranks give the mini-batch loss. Each verl mode is one softgate mode with an explicit
normalizer ``Z`` (``softgate.aggregate``: the loss is ``sum_{i,t} w_{i,t} loss_{i,t}``):

=========================  ==============================  ==========================================
verl ``loss_agg_mode``     softgate mode                   Z
=========================  ==============================  ==========================================
token-mean                 token-mean                      batch_num_tokens / dp_size
seq-mean-token-mean        seq-mean-token-mean             global_batch_size / dp_size
seq-mean-token-sum         seq-mean-token-sum-norm         global_batch_size / dp_size
seq-mean-token-sum-norm    seq-mean-token-sum-norm         global_batch_size / dp_size * loss_scale_factor
token-sum                  token-mean                      1 / dp_size
=========================  ==============================  ==========================================

(``loss_scale_factor`` defaults to the padded response length, as in verl.) Without global batch information
(a single process calling the loss directly) the micro-batch itself defines ``Z``, as in ``verl.agg_loss``.

Per-token rollout-correction weights (``rollout_is_weights``) multiply the per-token loss, as in verl. They are
non-negative and detached, and a gate depends on the advantage only through its sign, so
``w * f(r, A) * A == f(r, w * A) * (w * A)``: the weights are folded into per-token advantages. (With
``level="sequence"``, which needs one advantage per sequence, the weights must be constant along each row.)

Metrics returned to verl (floats; verl averages them over micro-batches and data-parallel ranks):
``actor/pg_clipfrac`` (fraction of tokens with f' = 0: for ``softgate_clip`` verl's ``pg_clipfrac`` plus
``pg_clipfrac_lower``), ``actor/ppo_kl`` (verl's k1), ``gate/soft_clip_frac``, ``gate/ratio_mean``,
``gate/ratio_p05``, ``gate/ratio_p50``, ``gate/ratio_p95``, ``gate/approx_kl``, ``gate/clamped``.

``gate/eur`` is the paper's Eq. 12 exactly, once per mini-batch (one optimizer step): the groups are verl's
``uid`` (the responses of one prompt), which verl does not pass to policy losses. The actor loss receives them, so
this module wraps it (:func:`ppo_loss`, installed in place of ``verl.workers.utils.losses.ppo_loss`` on import):
it labels each micro-batch's rows, the policy loss adds per-group sums of f' and token counts, and the last
micro-batch of the mini-batch gathers them over the data-parallel group and reports the ratio.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

try:
    import verl
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, register_policy_loss
    from verl.utils.metric import AggregationType, Metric
    from verl.workers.config import PolicyLossConfig
    from verl.workers.utils import losses as verl_losses
except ImportError as err:  # pragma: no cover - exercised only without verl
    raise ImportError(
        "softgate.integrations.verl needs verl 0.9.1: pip install 'softgate[verl]' "
        f"(import failed: {err})"
    ) from err

SUPPORTED_VERL_VERSIONS = ("0.9.1",)
if verl.__version__ not in SUPPORTED_VERL_VERSIONS:
    raise ImportError(
        f"softgate.integrations.verl is tested with verl {', '.join(SUPPORTED_VERL_VERSIONS)} only (it relies on "
        f"the policy-loss signature and global_batch_info of that release), found verl {verl.__version__}: "
        "pip install 'softgate[verl]'"
    )

from softgate import gates as gates_mod
from softgate.aggregate import AggMode
from softgate.diagnostics import loss_stats
from softgate.integrations.common import DualClipGate, StepEUR, compute_score
from softgate.losses import LEVELS, Level, LossOptions, compute_dtype, policy_loss_terms

__all__ = [
    "AGG_MODE_MAP",
    "LOSS_PREFIX",
    "SUPPORTED_VERL_VERSIONS",
    "SoftGatePolicyLossConfig",
    "compute_score",
    "install_actor_loss",
    "loss_name",
    "make_policy_loss",
    "ppo_loss",
    "register_all",
    "uid_labels",
    "verl_normalizer",
]

LOSS_PREFIX = "softgate_"

# verl loss_agg_mode -> softgate aggregation mode (the normalizer is computed by verl_normalizer).
AGG_MODE_MAP: dict[str, AggMode] = {
    "token-mean": "token-mean",
    "seq-mean-token-mean": "seq-mean-token-mean",
    "seq-mean-token-sum": "seq-mean-token-sum-norm",
    "seq-mean-token-sum-norm": "seq-mean-token-sum-norm",
    "token-sum": "token-mean",
}


@dataclasses.dataclass
class SoftGatePolicyLossConfig(PolicyLossConfig):
    """verl's ``PolicyLossConfig`` plus the softgate options that verl's actor config has no field for.

    Select it with ``actor_rollout_ref.actor.policy_loss._target_=softgate.integrations.verl.SoftGatePolicyLossConfig``
    and set the fields with a leading ``+`` on the command line (``+actor_rollout_ref.actor.policy_loss.softgate_level
    =sequence-token``). Temperatures and the clip range stay in verl's own actor fields (``tau_pos``, ``tau_neg``,
    ``clip_ratio_low``, ``clip_ratio_high``).
    """

    softgate_level: str = "token"
    """Importance ratio fed to the gate: ``token`` (the paper), ``sequence`` (GSPO) or ``sequence-token``."""
    softgate_gate_params: dict = dataclasses.field(default_factory=dict)
    """Gate parameters passed to ``softgate.gates.make`` (e.g. ``{nu: 3.0}`` for the student gate, or a user gate's
    own); they win over the actor fields."""
    softgate_log_ratio_bound: float = 20.0
    """|log r| is clamped to this before exp (verl's own losses use 20 as well)."""
    softgate_soft_clip_threshold: float = 0.5
    """f' below this counts in ``gate/soft_clip_frac``."""

    def __post_init__(self) -> None:
        if self.softgate_level not in LEVELS:
            raise ValueError(f"actor.policy_loss.softgate_level: unknown level {self.softgate_level!r}; "
                             f"known levels: {', '.join(LEVELS)}")
        if not self.softgate_log_ratio_bound > 0:
            raise ValueError(f"actor.policy_loss.softgate_log_ratio_bound must be > 0, "
                             f"got {self.softgate_log_ratio_bound}")


def loss_name(gate: str) -> str:
    """The verl ``loss_mode`` under which softgate gate ``gate`` is registered (``softgate_<gate>``)."""
    return f"{LOSS_PREFIX}{gate}"


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from a verl config object (dataclass ``BaseConfig``, omegaconf ``DictConfig`` or dict)."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    return default if value is None else value


def verl_normalizer(
    loss_agg_mode: str,
    mask_BT: Tensor,
    global_batch_info: Mapping[str, Any] | None,
) -> tuple[AggMode, Tensor | float]:
    """softgate's aggregation mode and normalizer ``Z`` reproducing ``verl.trainer.ppo.core_algos.agg_loss``.

    See the table in the module docstring. Local fallbacks (no global information) follow ``agg_loss``: valid
    tokens of the micro-batch, its non-empty rows, and the padded response length for ``loss_scale_factor``.

    Shapes:
        mask_BT: [B, T] bool -> (mode, [] or float)
    """
    if loss_agg_mode not in AGG_MODE_MAP:
        raise ValueError(f"actor.loss_agg_mode: unknown mode {loss_agg_mode!r}; known modes: "
                         f"{', '.join(AGG_MODE_MAP)}")
    info = dict(global_batch_info or {})
    dp_size = int(info.get("dp_size") or 1)
    batch_num_tokens = info.get("batch_num_tokens")
    global_batch_size = info.get("global_batch_size")
    scale = info.get("loss_scale_factor")
    if dp_size > 1 and loss_agg_mode == "token-mean" and batch_num_tokens is None:
        raise ValueError("(global) batch_num_tokens is required when dp_size > 1")
    if dp_size > 1 and loss_agg_mode.startswith("seq-mean") and global_batch_size is None:
        raise ValueError("global_batch_size is required when dp_size > 1")

    def n_seqs() -> Tensor | float:
        if global_batch_size is not None:
            return float(global_batch_size) / dp_size
        return mask_BT.any(dim=1).sum().to(torch.float32)

    z: Tensor | float
    match loss_agg_mode:
        case "token-mean":
            z = float(batch_num_tokens) / dp_size if batch_num_tokens is not None else mask_BT.sum().to(torch.float32)
        case "token-sum":
            z = 1.0 / dp_size
        case "seq-mean-token-mean" | "seq-mean-token-sum":
            z = n_seqs()
        case "seq-mean-token-sum-norm":
            z = n_seqs() * float(scale if scale is not None else mask_BT.shape[-1])
    # verl divides by the raw count; a count of 0 (nothing to learn from) gives 0/0 there, a zero loss here.
    if isinstance(z, Tensor):
        z = z.clamp_min(1.0)
    elif z <= 0:
        z = 1.0
    return AGG_MODE_MAP[loss_agg_mode], z


def make_policy_loss(gate_name: str) -> Callable[..., tuple[Tensor, dict[str, Any]]]:
    """A verl policy-loss function (verl's ``PolicyLossFn`` signature) for softgate gate ``gate_name``."""

    def softgate_policy_loss(
        old_log_prob: Tensor,
        log_prob: Tensor,
        advantages: Tensor,
        response_mask: Tensor,
        loss_agg_mode: str = "token-mean",
        config: Any = None,
        rollout_is_weights: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Any]]:
        """softgate's gated surrogate on verl's tensors.

        Shapes:
            old_log_prob, log_prob, advantages, response_mask: [B, T];
            rollout_is_weights: [B, T] or None -> ([], dict of floats)
        """
        if config is None:
            raise ValueError(f"policy loss {loss_name(gate_name)!r} needs the actor config (verl passes it)")
        loss_cfg = _get(config, "policy_loss")
        level: Level = _get(loss_cfg, "softgate_level", "token")
        clip_ratio = _get(config, "clip_ratio")
        # verl's actor fields where the family takes them; a field the config lacks falls to the registry's default.
        host = {"tau_pos": _get(config, "tau_pos"), "tau_neg": _get(config, "tau_neg"),
                "eps_low": _get(config, "clip_ratio_low", clip_ratio),
                "eps_high": _get(config, "clip_ratio_high", clip_ratio)}
        gate = gates_mod.make_accepted(gate_name, host, _get(loss_cfg, "softgate_gate_params", {}))
        if gate_name == "clip" and level == "token":
            # verl's vanilla loss: dual clip at clip_ratio_c (3 when the config lacks it), as its own default.
            # (verl's gspo, the clip gate at the sequence levels, has none.)
            gate = DualClipGate(**gate.params, ratio_cap=float(_get(config, "clip_ratio_c", 3.0)))
        mask_BT = response_mask.bool()
        agg, z = verl_normalizer(loss_agg_mode, mask_BT, _get(config, "global_batch_info", {}))

        adv = advantages
        if rollout_is_weights is not None:
            # w * f(r, A) * A == f(r, w A) * (w A) for w >= 0: the gate sees A only through its sign.
            adv = advantages * rollout_is_weights.detach().to(advantages.dtype)
        if level == "sequence":
            # verl stores the GRPO advantage broadcast over the response; the sequence level wants one per row.
            adv = _row_constant(adv, mask_BT)

        options = LossOptions(level=level, agg=agg,
                              log_ratio_bound=float(_get(loss_cfg, "softgate_log_ratio_bound", 20.0)))
        loss, terms = policy_loss_terms(log_prob, old_log_prob, adv, mask_BT, gate, options, normalizer=z)
        stats = loss_stats(terms, soft_clip_threshold=float(_get(loss_cfg, "softgate_soft_clip_threshold", 0.5)))
        if _STEP.labels is not None:  # called from ppo_loss, which knows the groups (uid)
            _STEP.eur.add(terms.df, mask_BT, _STEP.labels)
        return loss, _verl_metrics(stats, log_prob, old_log_prob, mask_BT)

    softgate_policy_loss.__name__ = f"compute_policy_loss_{LOSS_PREFIX}{gate_name}"
    softgate_policy_loss.__qualname__ = softgate_policy_loss.__name__
    return softgate_policy_loss


def _row_constant(adv_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """The one advantage of each row (rows must be constant over valid tokens; 0 for empty rows).

    Shapes:
        adv_BT: [B, T], mask_BT: [B, T] bool -> [B]
    """
    zero = torch.zeros((), dtype=adv_BT.dtype, device=adv_BT.device)
    count_B = mask_BT.sum(dim=1).clamp_min(1).to(adv_BT.dtype)
    mean_B = torch.where(mask_BT, adv_BT, zero).sum(dim=1) / count_B
    if adv_BT.numel() == 0:
        return mean_B
    spread = torch.where(mask_BT, (adv_BT - mean_B[:, None]).abs(), zero).amax()
    if spread > 1e-6 * (1.0 + mean_B.abs().max()):
        raise ValueError("softgate_level='sequence' needs one advantage per sequence, but the advantages (times "
                         "rollout_is_weights) vary along a response; use softgate_level='sequence-token'")
    return mean_B


# Gate statistics reported to verl (all aggregated by verl as a mean over micro-batches and ranks).
_STAT_KEYS = {
    "soft_clip_frac": "gate/soft_clip_frac",
    "ratio_mean": "gate/ratio_mean",
    "ratio_p05": "gate/ratio_p05",
    "ratio_p50": "gate/ratio_p50",
    "ratio_p95": "gate/ratio_p95",
    "clamped": "gate/clamped",
    "approx_kl": "gate/approx_kl",
}


def _verl_metrics(stats: dict[str, Tensor], log_prob: Tensor, old_log_prob: Tensor, mask_BT: Tensor) -> dict[str, Any]:
    """verl's usual keys (``actor/pg_clipfrac``, ``actor/ppo_kl``) plus softgate's gate statistics, as floats.

    ``actor/pg_clipfrac`` is the fraction of tokens whose gate derivative is exactly 0 (PPO's clip fraction for
    the ``clip`` gate, ~0 for smooth gates); ``actor/ppo_kl`` is verl's k1 estimate ``mean(old_logp - logp)``.
    """
    with torch.no_grad():
        dtype = compute_dtype(log_prob, old_log_prob)
        zero = torch.zeros((), dtype=dtype, device=log_prob.device)
        k1_BT = old_log_prob.to(dtype) - log_prob.to(dtype)
        k1 = torch.where(mask_BT, k1_BT, zero).sum() / mask_BT.sum().clamp_min(1).to(dtype)
        names = ["actor/pg_clipfrac", "actor/ppo_kl", *_STAT_KEYS.values()]
        values = torch.stack([stats["hard_clip_frac"].to(dtype), k1, *(stats[k].to(dtype) for k in _STAT_KEYS)])
        # One host transfer for all metrics (verl calls .item() per metric in its own losses).
        return dict(zip(names, values.tolist(), strict=True))


# ------------------------------------------------------------------------------------------------------------
# EUR (Eq. 12) per mini-batch: the groups are verl's uid, which only the actor loss sees
# ------------------------------------------------------------------------------------------------------------


class _StepGroups:
    """What :func:`ppo_loss` and the softgate policy losses share within one verl actor (one process)."""

    def __init__(self) -> None:
        self.eur = StepEUR()  # per-group sums of the current mini-batch's micro-batches
        self.labels: Tensor | None = None  # the group of each row of the micro-batch being computed
        self.rows = 0  # rows of the current mini-batch seen on this rank


_STEP = _StepGroups()


def uid_labels(uids: Sequence[Any]) -> Tensor:
    """int64 group labels from verl's ``uid`` strings, equal on every process (a hash, not Python's salted one).

    Shapes: [B] objects -> [B] int64
    """
    return torch.tensor([int.from_bytes(hashlib.blake2b(str(u).encode(), digest_size=8).digest(), "little",
                                        signed=True) for u in uids], dtype=torch.int64)


# verl's own actor loss (also when this module runs again after install_actor_loss rebound the name).
_verl_ppo_loss = getattr(verl_losses.ppo_loss, "verl_ppo_loss", verl_losses.ppo_loss)


def ppo_loss(config: Any, model_output: Any, data: Any, dp_group: Any = None) -> tuple[Tensor, dict[str, Any]]:
    """verl's actor loss (``verl.workers.utils.losses.ppo_loss``) with the paper's EUR (Eq. 12) as ``gate/eur``.

    verl hands the policy loss padded tensors only; the prompt groups (``non_tensor_batch["uid"]``) are in the
    micro-batch ``data`` this function receives. It labels the rows for the softgate policy loss, which adds each
    group's sum of f' and token count to the mini-batch's sums; on the mini-batch's last micro-batch (this rank's
    rows reach ``global_batch_size / dp_size``: verl splits every mini-batch evenly over data-parallel ranks) the
    sums are gathered over ``dp_group`` and ``gate/eur`` is reported once, the same on every rank. Other loss modes,
    batches without ``uid`` and forward-only passes (no ``gate/eur`` then) pass through unchanged.
    """
    # Training passes only: a forward-only pass (verl's infer_batch runs the loss under no_grad) is no update step.
    uids = data["uid"] if "uid" in data.keys() and torch.is_grad_enabled() else None
    _STEP.labels = None if uids is None else uid_labels(list(uids))
    added = len(_STEP.eur)
    try:
        loss, metrics = _verl_ppo_loss(config, model_output, data, dp_group)
    finally:
        _STEP.labels = None
    if len(_STEP.eur) > added:
        _STEP.rows += len(data)
        global_rows, dp_size = data["global_batch_size"], data["dp_size"] or 1
        if global_rows is None or _STEP.rows >= int(global_rows) // int(dp_size):
            _STEP.rows = 0
            metrics["gate/eur"] = Metric(AggregationType.MEAN, _STEP.eur.compute(dp_group).item())
    return loss, metrics


ppo_loss.verl_ppo_loss = _verl_ppo_loss  # type: ignore[attr-defined]


def install_actor_loss() -> None:
    """Make verl's actor call :func:`ppo_loss`: rebind ``ppo_loss`` in ``verl.workers.utils.losses`` and in
    ``verl.workers.engine_workers`` (which imports it by name and builds the actor's loss function from it in
    ``init_model``, after the worker imports this module). Idempotent; done on import."""
    verl_losses.ppo_loss = ppo_loss
    workers = sys.modules.get("verl.workers.engine_workers")
    if workers is not None and getattr(workers, "ppo_loss", None) is not None:
        workers.ppo_loss = ppo_loss


def register_all() -> list[str]:
    """Register ``softgate_<gate>`` in verl's policy-loss registry for every softgate gate; returns the names.

    Idempotent: a name already bound to a softgate loss is re-bound; a name taken by something else is an error.
    """
    registered = []
    for gate_name in gates_mod.names():
        name = loss_name(gate_name)
        existing = POLICY_LOSS_REGISTRY.get(name)
        if existing is not None and not getattr(existing, "__softgate__", False):
            raise ValueError(f"verl policy loss {name!r} is already registered by {existing.__module__}")
        fn = make_policy_loss(gate_name)
        fn.__softgate__ = True  # type: ignore[attr-defined]
        register_policy_loss(name)(fn)
        registered.append(name)
    return registered


REGISTERED: list[str] = register_all()
install_actor_loss()
