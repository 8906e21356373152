"""What the plug-ins share (softgate.integrations.common): EUR exactly as Eq. 12 over an optimizer step split into
micro-batches and processes, and the dual clip of the clip gate. Needs neither TRL nor verl.

The worked example of issue 14: one prompt with a 1-token completion at f' = 0 and a 9-token completion at f' = 1.
Eq. 12 gives (0 + 9) / (1 + 9) = 0.9; averaging per-micro-batch (or per-process) EURs gives 0.5.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from softgate.diagnostics import eur, eur_from_group_sums, eur_group_sums
from softgate.integrations.common import DualClipGate, StepEUR


def _completion(length: int, df: float, width: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """One row of ``length`` valid tokens out of ``width``, all with gate derivative ``df``."""
    mask = (torch.arange(width) < length)[None]
    return torch.full((1, width), df, dtype=torch.float64), mask


def test_group_sums_add_up_to_eq12() -> None:
    (df1, m1), (df9, m9) = _completion(1, 0.0), _completion(9, 1.0)
    both = eur(torch.cat([df1, df9]), torch.cat([m1, m9]), torch.tensor([5, 5]))
    assert both.item() == pytest.approx(0.9)
    parts = [eur_group_sums(df1, m1, torch.tensor([5])), eur_group_sums(df9, m9, torch.tensor([5]))]
    labels, num, den = (torch.cat(x) for x in zip(*parts, strict=True))
    assert eur_from_group_sums(labels, num, den).item() == pytest.approx(0.9)
    # What the plug-ins reported before: the mean of the two micro-batches' EURs.
    assert (eur(df1, m1, torch.tensor([5])) + eur(df9, m9, torch.tensor([5]))).item() / 2 == 0.5
    # Groups without tokens are left out; no group at all is NaN.
    assert eur_from_group_sums(torch.tensor([1, 2]), torch.tensor([0.0, 3.0]), torch.tensor([0.0, 4.0])) == 0.75
    assert math.isnan(eur_from_group_sums(torch.tensor([1]), torch.tensor([0.0]), torch.tensor([0.0])).item())


def test_step_eur_across_micro_batches() -> None:
    acc = StepEUR()
    acc.add(*_completion(1, 0.0), torch.tensor([0]))
    acc.add(*_completion(9, 1.0), torch.tensor([0]))
    assert len(acc) == 2
    assert acc.compute().item() == pytest.approx(0.9)
    assert len(acc) == 0  # reset for the next optimizer step
    with pytest.raises(RuntimeError, match="no micro-batch"):
        acc.compute()


def _rank_main(rank: int, world: int, store: str, out: str) -> None:
    """One process of the gloo test: rank 0 holds the 1-token completion, rank 1 the 9-token one."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        acc = StepEUR()
        if rank == 0:
            acc.add(*_completion(1, 0.0), torch.tensor([42]))
        else:
            acc.add(*_completion(9, 1.0), torch.tensor([42]))
        first = acc.compute().item()
        # Unequal row counts per process (padding in the gather): rank 1 also holds a second group, of two
        # micro-batches, f' = 0.5 on 2 + 2 tokens -> mean over groups (0.9 + 0.5) / 2.
        acc.add(*_completion(1 if rank == 0 else 9, 0.0 if rank == 0 else 1.0), torch.tensor([42]))
        if rank == 1:
            acc.add(*_completion(2, 0.5), torch.tensor([7]))
            acc.add(*_completion(2, 0.5), torch.tensor([7]))
        second = acc.compute().item()
        Path(out, f"rank{rank}").write_text(f"{first} {second}")
    finally:
        dist.destroy_process_group()


def test_step_eur_across_processes(tmp_path: Path) -> None:
    """Two CPU processes (gloo): the group's two completions live on different ranks; both ranks get 0.9."""
    mp.spawn(_rank_main, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        first, second = map(float, (tmp_path / f"rank{rank}").read_text().split())
        assert first == pytest.approx(0.9) and second == pytest.approx(0.7)


def test_dual_clip_gate_is_trls_two_sided_clip_and_verls_dual_clip() -> None:
    """f and f' of DualClipGate against autograd of the hosts' own expressions, on a grid of ratios."""
    r = torch.linspace(0.3, 4.0, 741, dtype=torch.float64)
    eps_low, eps_high = 0.2, 0.28
    for adv in (1.0, -1.0):
        for delta in (1.1, 1.28, 1.5, 3.0):
            # TRL: -min(min(r, delta) A, clip(r, 1 - eps_low, 1 + eps_high) A)
            x = r.clone().requires_grad_(True)
            trl = torch.min(x.clamp(max=delta) * adv, x.clamp(1 - eps_low, 1 + eps_high) * adv)
            (d_trl,) = torch.autograd.grad(trl.sum(), x)
            gate = DualClipGate.from_trl_delta(eps_low, eps_high, delta)
            a = torch.full_like(r, adv)
            torch.testing.assert_close(gate.f(r, a) * adv, trl.detach())
            off_ties = (r - delta).abs() > 1e-9  # torch.min splits the gradient at exact ties
            torch.testing.assert_close((gate.df(r, a) * adv)[off_ties], d_trl[off_ties])
        # verl vanilla, A < 0: -min(-A c, max(-A r, -A clip(r))); A > 0: max(-A r, -A clip(r)).
        c = 3.0
        x = r.clone().requires_grad_(True)
        clipped = torch.maximum(-adv * x, -adv * x.clamp(1 - eps_low, 1 + eps_high))
        verl = -(torch.min(torch.full_like(x, -adv * c), clipped) if adv < 0 else clipped)
        (d_verl,) = torch.autograd.grad(verl.sum(), x)
        gate = DualClipGate(eps_low=eps_low, eps_high=eps_high, ratio_cap=c)
        a = torch.full_like(r, adv)
        torch.testing.assert_close(gate.f(r, a) * adv, verl.detach())
        off_ties = (r - c).abs() > 1e-9
        torch.testing.assert_close((gate.df(r, a) * adv)[off_ties], d_verl[off_ties])
    with pytest.raises(ValueError, match="ratio cap"):
        DualClipGate(ratio_cap=1.0)
    with pytest.raises(ValueError, match="delta"):
        DualClipGate.from_trl_delta(0.2, 0.28, 0.95)
