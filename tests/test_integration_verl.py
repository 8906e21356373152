"""softgate gates as verl policy losses: parity with verl's own losses, aggregation modes, config, registration.

Runs where verl 0.9.1 is importable (the separate ``.venv-verl`` environment; see docs/integrations.md); skipped
elsewhere. Everything is float64 on CPU, and the losses are called through verl's registry
(``get_policy_loss_fn``) or through verl's actor loss ``verl.workers.utils.losses.ppo_loss``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("verl")

from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn  # noqa: E402
from verl.workers.config import FSDPActorConfig, PolicyLossConfig  # noqa: E402

from softgate import gates  # noqa: E402
from softgate.integrations import verl as sv  # noqa: E402

B, T = 6, 7
VERL_MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "token-sum"]
# Global batch information as verl's actor puts it in config.global_batch_info: this micro-batch is one of
# several on one of two data-parallel ranks.
GLOBAL_INFO = {"dp_size": 2, "batch_num_tokens": 61, "global_batch_size": 16, "loss_scale_factor": None}
# softgate.integrations.verl.uid_labels of "x" and "y": blake2b, the same in every process.
UID_X, UID_Y = 5717441744405258058, 6892360672924705551


def _config(mode: str = "vanilla", *, policy_loss: Any = None, **kw: Any) -> FSDPActorConfig:
    base: dict[str, Any] = dict(strategy="fsdp", rollout_n=3, ppo_micro_batch_size_per_gpu=2, tau_pos=2.0,
                                tau_neg=3.0, clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28)
    base.update(kw)
    return FSDPActorConfig(policy_loss=policy_loss or PolicyLossConfig(loss_mode=mode), **base)


def _batch(seed: int = 0, spread: float = 0.35) -> dict[str, Any]:
    """verl's loss inputs: per-token advantages (the GRPO advantage broadcast over the response), ragged mask
    with one empty row, off-policy old log-probs (ratios below verl's dual-clip bound 3, so it stays inactive)."""
    g = torch.Generator().manual_seed(seed)
    old = -2.0 * torch.rand(B, T, generator=g, dtype=torch.float64)
    logp = old + spread * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv_B = torch.tensor([1.3, -0.8, 0.0, 0.6, -1.1, 0.9], dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[:, 0] = True
    mask[2] = False  # an empty row
    ratio = torch.exp(logp - old)[mask]
    assert ratio.max() < 3.0  # verl's dual clip (A < 0 and r > clip_ratio_c = 3) stays inactive
    return {"old_log_prob": old, "log_prob": logp, "advantages": adv_B[:, None].expand(B, T).contiguous(),
            "response_mask": mask}


def _call(name: str, batch: dict[str, Any], mode: str, config: FSDPActorConfig,
          weights: Any = None) -> tuple[Any, Any, dict[str, Any]]:
    """Loss, d loss / d log_prob and metrics of the registered verl policy loss ``name``."""
    logp = batch["log_prob"].clone().requires_grad_(True)
    loss, metrics = get_policy_loss_fn(name)(
        old_log_prob=batch["old_log_prob"], log_prob=logp, advantages=batch["advantages"],
        response_mask=batch["response_mask"], loss_agg_mode=mode, config=config, rollout_is_weights=weights,
    )
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad, metrics


def _close(a: Any, b: Any) -> None:
    # verl's seq-mean-token-mean divides by (|o_i| + 1e-8): a relative difference of ~1e-9.
    torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


def _with_info(config: FSDPActorConfig, info: dict[str, Any] | None) -> FSDPActorConfig:
    config.global_batch_info.clear()
    config.global_batch_info.update(info or {})
    return config


# ------------------------------------------------------------------------------------------------------------
# Registration
# ------------------------------------------------------------------------------------------------------------


def test_every_gate_is_registered() -> None:
    assert sv.REGISTERED == [f"softgate_{name}" for name in gates.names()]
    for name in ("softgate_sigmoid", "softgate_erf", "softgate_arctan", "softgate_softsign", "softgate_clip"):
        assert callable(get_policy_loss_fn(name))
    assert sv.register_all() == sv.REGISTERED  # idempotent


def test_registering_over_a_foreign_loss_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from verl.trainer.ppo import core_algos

    monkeypatch.setitem(core_algos.POLICY_LOSS_REGISTRY, "softgate_erf", core_algos.compute_policy_loss_vanilla)
    with pytest.raises(ValueError, match="softgate_erf.*already registered"):
        sv.register_all()


@pytest.mark.slow
def test_verl_loads_the_plugin_in_a_fresh_process() -> None:
    """VERL_USE_EXTERNAL_MODULES (what verl's workers see) registers the losses when verl is imported."""
    code = ("from verl.trainer.ppo.core_algos import get_policy_loss_fn\n"
            "print(get_policy_loss_fn('softgate_erf').__name__)")
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": "softgate.integrations.verl",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("compute_policy_loss_softgate_erf")


# ------------------------------------------------------------------------------------------------------------
# Parity with verl's own losses
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("info", [None, GLOBAL_INFO], ids=["local", "global"])
@pytest.mark.parametrize("with_weights", [False, True], ids=["", "rollout-is"])
def test_sigmoid_equals_verl_sapo(info: dict[str, Any] | None, with_weights: bool) -> None:
    """verl's sapo always aggregates with seq-mean-token-mean (it ignores loss_agg_mode), so compare there."""
    batch = _batch()
    weights = None
    if with_weights:
        g = torch.Generator().manual_seed(5)
        weights = torch.rand(B, T, generator=g, dtype=torch.float64) * 2.0  # truncated-IS-like, >= 0
    loss_ref, grad_ref, _ = _call("sapo", batch, "seq-mean-token-mean", _with_info(_config(), info), weights)
    loss, grad, metrics = _call("softgate_sigmoid", batch, "seq-mean-token-mean", _with_info(_config(), info),
                                weights)
    assert abs(loss_ref.item()) > 1e-3 and grad_ref.abs().max() > 1e-3
    _close(loss, loss_ref)
    _close(grad, grad_ref)
    assert "gate/eur" not in metrics  # needs the groups (uid): reported by the actor loss, ppo_loss


def test_verl_sapo_ignores_loss_agg_mode_and_ours_does_not() -> None:
    batch = _batch()
    config = _with_info(_config(), None)
    sapo_tm, _, _ = _call("sapo", batch, "token-mean", config)
    sapo_sm, _, _ = _call("sapo", batch, "seq-mean-token-mean", config)
    _close(sapo_tm, sapo_sm)  # verl's behaviour, documented in docs/integrations.md
    ours_tm, _, _ = _call("softgate_sigmoid", batch, "token-mean", config)
    assert abs(ours_tm.item() - sapo_tm.item()) > 1e-4


@pytest.mark.parametrize("info", [None, GLOBAL_INFO, {**GLOBAL_INFO, "loss_scale_factor": 512}],
                         ids=["local", "global", "global-scale"])
@pytest.mark.parametrize("mode", VERL_MODES)
def test_clip_equals_verl_vanilla_in_every_aggregation_mode(mode: str, info: dict[str, Any] | None) -> None:
    """softgate's clip gate is verl's PPO loss (dual clip inactive here): checks the aggregation mapping too."""
    batch = _batch(seed=1)
    loss_ref, grad_ref, m_ref = _call("vanilla", batch, mode, _with_info(_config(), info))
    loss, grad, m = _call("softgate_clip", batch, mode, _with_info(_config(), info))
    assert abs(loss_ref.item()) > 1e-4
    _close(loss, loss_ref)
    _close(grad, grad_ref)
    # verl's clip fraction (tokens where the clipped branch is active) is the fraction with f' = 0.
    assert m["actor/pg_clipfrac"] == pytest.approx(m_ref["actor/pg_clipfrac"], abs=1e-6)  # verl: float32
    assert m_ref["actor/pg_clipfrac"] > 0
    assert m["actor/ppo_kl"] == pytest.approx(m_ref["actor/ppo_kl"], abs=1e-12)


@pytest.mark.parametrize("clip_ratio_c", [3.0, 1.6])
@pytest.mark.parametrize("mode", VERL_MODES)
def test_clip_with_dual_clip_active_equals_verl_vanilla(mode: str, clip_ratio_c: float) -> None:
    """verl's vanilla loss caps the ratio at clip_ratio_c for A < 0 (dual clip); softgate_clip does the same."""
    batch = _batch(seed=1)
    adv_neg = batch["advantages"] < 0
    batch["old_log_prob"] = batch["old_log_prob"] - 1.2 * adv_neg  # ratios around e^1.2 = 3.3 where A < 0
    r = torch.exp(batch["log_prob"] - batch["old_log_prob"])
    m = batch["response_mask"]
    assert ((r > clip_ratio_c) & adv_neg & m).any() and ((r < clip_ratio_c) & adv_neg & m).any()
    config = _with_info(_config(clip_ratio_c=clip_ratio_c), GLOBAL_INFO)
    loss_ref, grad_ref, m_ref = _call("vanilla", batch, mode, config)
    loss, grad, metrics = _call("softgate_clip", batch, mode, config)
    _close(loss, loss_ref)
    _close(grad, grad_ref)
    assert m_ref["actor/pg_clipfrac_lower"] > 0
    # f' = 0 on the tokens of either clip: verl's two clip fractions together.
    assert metrics["actor/pg_clipfrac"] == pytest.approx(m_ref["actor/pg_clipfrac"] + m_ref["actor/pg_clipfrac_lower"],
                                                         abs=1e-6)
    # Without the dual clip the loss would differ: the cap is what makes them equal.
    _, grad_plain, _ = _call("softgate_clip", batch, mode, _with_info(_config(clip_ratio_c=100.0), GLOBAL_INFO))
    assert (grad_plain - grad_ref).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_clip_at_sequence_token_level_equals_verl_gspo(mode: str) -> None:
    batch = _batch(seed=2, spread=0.3)
    config = _with_info(_config("gspo"), GLOBAL_INFO)
    loss_ref, grad_ref, _ = _call("gspo", batch, mode, config)
    ours = _with_info(_config(policy_loss=sv.SoftGatePolicyLossConfig(loss_mode="softgate_clip",
                                                                      softgate_level="sequence-token")), GLOBAL_INFO)
    loss, grad, _ = _call("softgate_clip", batch, mode, ours)
    assert abs(loss_ref.item()) > 1e-4
    _close(loss, loss_ref)
    _close(grad, grad_ref)


# ------------------------------------------------------------------------------------------------------------
# Closed form: the erf gate with the actor's temperatures, aggregated by verl's own agg_loss
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", VERL_MODES)
def test_erf_gate_closed_form_with_actor_temperatures(mode: str) -> None:
    batch = _batch(seed=3)
    config = _with_info(_config(tau_pos=10.0, tau_neg=12.0), GLOBAL_INFO)
    loss, grad, metrics = _call("softgate_erf", batch, mode, config)

    # f(r) = 1 + sqrt(pi/2)/tau erf(tau (r-1)/sqrt 2) (paper.md, gate table), tau by the sign of A.
    logp = batch["log_prob"].clone().requires_grad_(True)
    r = torch.exp(logp - batch["old_log_prob"])
    adv = batch["advantages"]
    tau = torch.where(adv > 0, 10.0, 12.0).to(torch.float64)
    f = 1 + math.sqrt(math.pi / 2) / tau * torch.erf(tau * (r - 1) / math.sqrt(2))
    expected = agg_loss(-f * adv, batch["response_mask"].double(), mode, **GLOBAL_INFO)
    (expected_grad,) = torch.autograd.grad(expected, logp)
    _close(loss, expected.detach())
    _close(grad, expected_grad)
    # By hand: d loss / d logp_{i,t} = -f'(r) r A w_{i,t}, f'(r) = exp(-tau^2 (r-1)^2 / 2), and w_{i,t} the
    # weight verl's agg_loss gives token t of row i (dp_size = 2, 61 tokens, 16 sequences, horizon T = 7).
    m = batch["response_mask"]
    lengths = m.sum(1, keepdim=True).clamp(min=1).to(torch.float64)
    w = {"token-mean": 2 / 61, "seq-mean-token-mean": 2 / (16 * lengths), "seq-mean-token-sum": 2 / 16,
         "seq-mean-token-sum-norm": 2 / (16 * T), "token-sum": 2.0}[mode]
    df = torch.exp(-0.5 * tau**2 * (r.detach() - 1) ** 2)
    by_hand = torch.where(m, -df * r.detach() * adv * w, torch.zeros((), dtype=torch.float64))
    _close(grad, by_hand)
    assert metrics["gate/soft_clip_frac"] == pytest.approx((df[m] < 0.5).double().mean().item(), abs=1e-12)


# ------------------------------------------------------------------------------------------------------------
# Normalizer table, softgate's extra config, errors
# ------------------------------------------------------------------------------------------------------------


def test_normalizer_table_by_hand() -> None:
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    info = {"dp_size": 4, "batch_num_tokens": 100, "global_batch_size": 32, "loss_scale_factor": None}
    assert sv.verl_normalizer("token-mean", mask, info) == ("token-mean", 25.0)
    assert sv.verl_normalizer("seq-mean-token-mean", mask, info) == ("seq-mean-token-mean", 8.0)
    assert sv.verl_normalizer("seq-mean-token-sum", mask, info) == ("seq-mean-token-sum-norm", 8.0)
    assert sv.verl_normalizer("seq-mean-token-sum-norm", mask, info) == ("seq-mean-token-sum-norm", 8.0 * 4)
    assert sv.verl_normalizer("seq-mean-token-sum-norm", mask, {**info, "loss_scale_factor": 512}) == (
        "seq-mean-token-sum-norm", 8.0 * 512)
    assert sv.verl_normalizer("token-sum", mask, info) == ("token-mean", 0.25)
    # Local fallbacks: 5 valid tokens, 2 non-empty rows.
    assert float(sv.verl_normalizer("token-mean", mask, {})[1]) == 5.0
    assert float(sv.verl_normalizer("seq-mean-token-mean", mask, {})[1]) == 2.0
    with pytest.raises(ValueError, match="loss_agg_mode"):
        sv.verl_normalizer("seq-sum", mask, {})
    with pytest.raises(ValueError, match="batch_num_tokens"):
        sv.verl_normalizer("token-mean", mask, {"dp_size": 2})


def test_softgate_policy_loss_config_fields_are_read() -> None:
    batch = _batch(seed=4)
    plain = _with_info(_config(), None)
    student = _with_info(_config(policy_loss=sv.SoftGatePolicyLossConfig(
        loss_mode="softgate_student", softgate_gate_params={"nu": 1.0})), None)
    # student with nu = 1 is the arctan gate (softgate.gates.student): same loss as softgate_arctan.
    loss_student, grad_student, _ = _call("softgate_student", batch, "token-mean", student)
    loss_arctan, grad_arctan, _ = _call("softgate_arctan", batch, "token-mean", plain)
    _close(loss_student, loss_arctan)
    _close(grad_student, grad_arctan)
    # The level changes the loss.
    seq = _with_info(_config(policy_loss=sv.SoftGatePolicyLossConfig(loss_mode="softgate_erf",
                                                                     softgate_level="sequence")), None)
    loss_seq, _, _ = _call("softgate_erf", batch, "seq-mean-token-mean", seq)
    loss_tok, _, _ = _call("softgate_erf", batch, "seq-mean-token-mean", plain)
    assert abs(loss_seq.item() - loss_tok.item()) > 1e-6


def test_temperatures_missing_from_the_config_are_the_registrys() -> None:
    # The plug-in has no default temperatures of its own: a config without tau_pos / tau_neg (a plain mapping, as
    # an omegaconf section may be) gets the registry's, and softgate_gate_params wins over verl's actor fields.
    batch = _batch(seed=5)
    paper = _with_info(_config(tau_pos=10.0, tau_neg=12.0), None)
    assert (gates.defaults("erf")["tau_pos"], gates.defaults("erf")["tau_neg"]) == (10.0, 12.0)
    bare = {"policy_loss": {"loss_mode": "softgate_erf"}, "global_batch_info": {}}
    overridden = _with_info(_config(policy_loss=sv.SoftGatePolicyLossConfig(
        loss_mode="softgate_erf", softgate_gate_params={"tau_pos": 10.0, "tau_neg": 12.0})), None)
    loss_paper, grad_paper, _ = _call("softgate_erf", batch, "token-mean", paper)
    for config in (bare, overridden):
        loss, grad, _ = _call("softgate_erf", batch, "token-mean", config)
        _close(loss, loss_paper)
        _close(grad, grad_paper)
    loss_actor, _, _ = _call("softgate_erf", batch, "token-mean", _with_info(_config(), None))  # tau 2 / 3
    assert abs(loss_actor.item() - loss_paper.item()) > 1e-6


def test_sequence_level_needs_row_constant_advantages() -> None:
    batch = _batch()
    batch["advantages"] = batch["advantages"] + 0.1 * torch.arange(T, dtype=torch.float64)
    seq = _with_info(_config(policy_loss=sv.SoftGatePolicyLossConfig(loss_mode="softgate_erf",
                                                                     softgate_level="sequence")), None)
    with pytest.raises(ValueError, match="sequence-token"):
        _call("softgate_erf", batch, "seq-mean-token-mean", seq)


def test_bad_config_values_name_the_field() -> None:
    with pytest.raises(ValueError, match="softgate_level"):
        sv.SoftGatePolicyLossConfig(softgate_level="word")
    with pytest.raises(ValueError, match="softgate_log_ratio_bound"):
        sv.SoftGatePolicyLossConfig(softgate_log_ratio_bound=0.0)
    with pytest.raises(ValueError, match="tau_pos"):
        _call("softgate_erf", _batch(), "token-mean", _with_info(_config(tau_pos=-1.0), None))
    bad = _config(policy_loss=sv.SoftGatePolicyLossConfig(loss_mode="softgate_erf", softgate_gate_params={"nu": 2}))
    with pytest.raises(ValueError, match="nu"):
        _call("softgate_erf", _batch(), "token-mean", _with_info(bad, None))


def test_compute_score_for_verl_reward_manager() -> None:
    no_symbolic = {"symbolic": False}
    assert sv.compute_score("gsm8k", "<think>6 * 7</think><answer>42</answer>", "42", no_symbolic) == {
        "score": 2.0, "answer": 1.0, "format": 1.0}
    assert sv.compute_score("gsm8k", "<answer>41</answer>", "42", no_symbolic) == {
        "score": 0.25, "answer": 0.0, "format": 0.25}
    # verl loads it by module path: reward.custom_reward_function.path=pkg://softgate.integrations.verl
    from verl.utils.import_utils import load_extern_object

    assert load_extern_object("pkg://softgate.integrations.verl", "compute_score") is sv.compute_score


# ------------------------------------------------------------------------------------------------------------
# Through verl's actor loss (workers/utils/losses.py: ppo_loss), with verl's packed log-prob layout
# ------------------------------------------------------------------------------------------------------------


def _actor_data(old: Any, adv: Any, response_mask: Any, uids: list[str] | None, *, prompt_len: int = 3,
                global_batch_size: int | None = None) -> Any:
    """The micro-batch TensorDict verl's actor hands its loss function (no-padding layout, verl's keys)."""
    from tensordict import TensorDict
    from tensordict.tensorclass import NonTensorData, NonTensorStack
    from verl.utils import tensordict_utils as tu

    n, width = response_mask.shape
    fields: dict[str, Any] = {
        "prompts": torch.ones(n, prompt_len, dtype=torch.long), "responses": torch.ones(n, width, dtype=torch.long),
        "attention_mask": torch.cat([torch.ones(n, prompt_len, dtype=torch.long), response_mask.long()], 1),
        "response_mask": response_mask.long(), "old_log_probs": old, "advantages": adv,
    }
    if uids is not None:  # as DataProto.to_tensordict carries non_tensor_batch["uid"]
        fields["uid"] = NonTensorStack.from_list([NonTensorData(u) for u in uids])
    data = TensorDict(fields, batch_size=[n])
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(response_mask.sum()),
                         global_batch_size=n if global_batch_size is None else global_batch_size)
    return data


def _packed(logp: Any, response_mask: Any, prompt_len: int = 3) -> Any:
    """verl's no-padding log-probs: one row of P + |o_i| positions per sequence, response log-probs shifted left
    by one (position P - 1 predicts the first response token)."""
    rows = []
    for i, k in enumerate(response_mask.sum(1).tolist()):
        rows.append(torch.cat([logp.new_zeros(prompt_len - 1), logp[i, :k], logp.new_zeros(1)]))
    return torch.cat(rows)


def test_through_verl_ppo_loss_equals_sapo() -> None:
    from verl.workers.utils.losses import ppo_loss  # softgate's, installed on import (it wraps verl's)

    assert ppo_loss is sv.ppo_loss
    R = 5
    response_mask = torch.arange(R)[None] < torch.tensor([5, 3, 4, 2])[:, None]
    n = response_mask.shape[0]
    g = torch.Generator().manual_seed(7)
    logp = -torch.rand(n, R, generator=g, dtype=torch.float64)
    old = logp + 0.3 * torch.randn(n, R, generator=g, dtype=torch.float64)
    adv = torch.tensor([0.7, -1.2, 0.4, -0.3], dtype=torch.float64)[:, None].expand(n, R).contiguous()
    results = {}
    for mode in ("sapo", "softgate_sigmoid"):
        lp = logp.clone().requires_grad_(True)
        config = _config(mode, loss_agg_mode="seq-mean-token-mean")
        data = _actor_data(old, adv, response_mask, ["p0", "p0", "p1", "p1"])
        loss, metrics = ppo_loss(config, {"log_probs": _packed(lp, response_mask)}, data)
        (grad,) = torch.autograd.grad(loss, lp)
        results[mode] = (loss.detach(), grad, {k: v.aggregate() for k, v in metrics.items()})
    _close(results["softgate_sigmoid"][0], results["sapo"][0])
    _close(results["softgate_sigmoid"][1], results["sapo"][1])
    ours = results["softgate_sigmoid"][2]
    for key in ("actor/pg_loss", "actor/ppo_kl", "gate/eur", "gate/soft_clip_frac", "gate/ratio_p50",
                "gate/clamped"):
        assert key in ours and math.isfinite(ours[key]), key
    assert "gate/eur" not in results["sapo"][2]  # other loss modes pass through unchanged


def test_eur_is_eq12_across_micro_batches() -> None:
    """One prompt (one uid), two responses in two micro-batches of one mini-batch: 1 token with f' = 0 (A > 0,
    r = e beyond the clip) and 9 tokens with f' = 1 (r = 1). Eq. 12 gives 0.9, reported once, on the last
    micro-batch; the per-response mean of before gave 0.5."""
    from verl.utils import tensordict_utils as tu

    response_mask = torch.arange(9)[None] < torch.tensor([1, 9])[:, None]
    logp = -torch.rand(2, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    old = logp - torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0], [-1.0]], dtype=torch.float64).expand(2, 9).contiguous()
    config = _config("softgate_clip", loss_agg_mode="token-mean")
    mini_batch = _actor_data(old, adv, response_mask, ["prompt-0", "prompt-0"], global_batch_size=2)
    reported = []
    for i, micro in enumerate(tu.chunk_tensordict(mini_batch, 2)):
        _, metrics = sv.ppo_loss(config, {"log_probs": _packed(logp[i:i + 1], response_mask[i:i + 1])}, micro)
        reported.append(metrics.get("gate/eur"))
    assert reported[0] is None
    assert reported[1].aggregate() == pytest.approx(0.9, abs=1e-12)
    # A forward-only pass (verl's infer_batch, under no_grad) is no optimizer step: nothing accumulates.
    with torch.no_grad():
        _, metrics = sv.ppo_loss(config, {"log_probs": _packed(logp, response_mask)}, mini_batch)
    assert "gate/eur" not in metrics and len(sv._STEP.eur) == 0
    # Two groups in one micro-batch: the mean over groups of each group's token-weighted mean f'.
    one = _actor_data(old, adv, response_mask, ["a", "b"])
    _, metrics = sv.ppo_loss(config, {"log_probs": _packed(logp, response_mask)}, one)
    assert metrics["gate/eur"].aggregate() == pytest.approx(0.5, abs=1e-12)


def test_the_actor_loss_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """verl's worker builds its actor loss from ``verl.workers.engine_workers.ppo_loss`` (imported by name):
    installing rebinds it there too when that module is loaded first, and is idempotent."""
    import types

    from verl.workers.utils import losses

    workers = types.ModuleType("verl.workers.engine_workers")
    workers.ppo_loss = sv.ppo_loss.verl_ppo_loss
    monkeypatch.setitem(sys.modules, "verl.workers.engine_workers", workers)
    sv.install_actor_loss()
    sv.install_actor_loss()
    assert workers.ppo_loss is sv.ppo_loss and losses.ppo_loss is sv.ppo_loss
    assert sv.ppo_loss.verl_ppo_loss.__module__ == "verl.workers.utils.losses"
    # The same label in every process (a fixed hash, not Python's per-process salted hash()).
    assert sv.uid_labels(["x", "x", "y"]).tolist() == [UID_X, UID_X, UID_Y]


# ------------------------------------------------------------------------------------------------------------
# The shipped multi-node config passes verl's own validation
# ------------------------------------------------------------------------------------------------------------


def _compose(overrides: list[str] | None = None) -> Any:
    pytest.importorskip("hydra")
    from hydra import compose, initialize_config_dir

    examples = Path(__file__).resolve().parents[1] / "examples"
    with initialize_config_dir(config_dir=str(examples), version_base=None):
        return compose(config_name="verl_multinode", overrides=overrides or [])


def test_multinode_config_passes_verl_validation() -> None:
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    cfg = _compose()
    validate_config(cfg, use_reference_policy=False, use_critic=False)
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert actor.policy_loss.loss_mode == "softgate_erf" and (actor.tau_pos, actor.tau_neg) == (10.0, 12.0)
    assert actor.loss_agg_mode == "seq-mean-token-mean" and actor.ppo_epochs == 2
    assert callable(get_policy_loss_fn(actor.policy_loss.loss_mode))
    assert cfg.actor_rollout_ref.model.external_lib == "softgate.integrations.verl"
    assert cfg.reward.custom_reward_function.path == "pkg://softgate.integrations.verl"
    assert cfg.data.train_batch_size * cfg.actor_rollout_ref.rollout.n == 128  # the paper's 16 prompts x G = 8


def test_softgate_policy_loss_config_from_the_command_line() -> None:
    from verl.utils.config import omega_conf_to_dataclass

    cfg = _compose([
        "actor_rollout_ref.actor.policy_loss._target_=softgate.integrations.verl.SoftGatePolicyLossConfig",
        "actor_rollout_ref.actor.policy_loss.loss_mode=softgate_student",
        "+actor_rollout_ref.actor.policy_loss.softgate_level=sequence-token",
        "+actor_rollout_ref.actor.policy_loss.softgate_gate_params={nu: 2.0}",
    ])
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert isinstance(actor.policy_loss, sv.SoftGatePolicyLossConfig)
    assert actor.policy_loss.softgate_level == "sequence-token"
    assert dict(actor.policy_loss.softgate_gate_params) == {"nu": 2.0}
    loss, _, metrics = _call("softgate_student", _batch(), "seq-mean-token-mean", _with_info(actor, None))
    assert math.isfinite(loss.item()) and 0 <= metrics["gate/soft_clip_frac"] <= 1


def test_verl_walkthrough_names_are_real() -> None:
    """examples/verl_ray.md: its Python parses and imports names that exist; every loss it names is registered."""
    import ast
    import importlib
    import re

    text = (Path(__file__).resolve().parents[1] / "examples" / "verl_ray.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("softgate"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
    for name in set(re.findall(r"\bsoftgate_[a-z]+\b", text)) - {"softgate_level", "softgate_gate_params",
                                                                     "softgate_log_ratio_bound"}:
        assert callable(get_policy_loss_fn(name)), name
