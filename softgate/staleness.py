"""Exact policy lag (``algo.staleness = k``): rollouts sampled, and their old log-probs computed, by the policy as it
was k optimizer steps earlier, as an asynchronous pipeline with lag k does (AReaL, PipelineRL, verl's one-step
off-policy mode), but deterministic and on one device.

``BehaviourPolicy`` holds a ring of the policy's last k states (state dicts copied to the CPU just before each
optimizer step) and a second model instance, the behaviour policy, that loads the oldest of them before each
rollout. After U optimizer steps the ring holds the states after U-k, ..., U-1 steps, so its oldest entry is the
policy k steps back; before k steps were made it is the start policy, the oldest state there is (lag = U).

Cost: k CPU copies of the state dict (k x 4 bytes per parameter with float32 master weights: 4.4 MB each for the
embedded tiny model, 30 GB each for a 7B model), one device-to-host copy per optimizer step, and a second model
instance on the device (what ``loss.kl_coef > 0`` also costs).
"""

from __future__ import annotations

import copy
from collections import deque

import torch


class BehaviourPolicy:
    """The policy as it was ``lag`` optimizer steps ago, for sampling and old log-probs.

    ``model`` is a frozen copy of the policy (eval mode, no gradients) on the policy's device; ``record`` must be
    called just before every optimizer step, ``sync`` before every rollout.
    """

    def __init__(self, policy: torch.nn.Module, k: int):
        if k < 1:
            raise ValueError(f"algo.staleness={k}: a behaviour policy needs a lag k >= 1 (0 samples from the policy)")
        self.k = k
        self.ring: deque[dict[str, torch.Tensor]] = deque(maxlen=k)  # oldest first
        self.model = copy.deepcopy(policy).eval().requires_grad_(False)

    def record(self, policy: torch.nn.Module) -> None:
        """Keep the policy's state before the optimizer step about to be made (drops the one k steps older)."""
        self.ring.append({name: t.detach().to("cpu", copy=True) for name, t in policy.state_dict().items()})

    @torch.no_grad()
    def sync(self, policy: torch.nn.Module) -> int:
        """Load the oldest state of the ring (the policy itself when no step was made yet) into ``model``; return
        the lag in optimizer steps between ``model`` and ``policy``."""
        self.model.load_state_dict(self.ring[0] if self.ring else policy.state_dict())
        return len(self.ring)

    def state(self) -> list[dict[str, torch.Tensor]]:
        """The ring, oldest first, for a checkpoint."""
        return list(self.ring)

    def load(self, ring: list[dict[str, torch.Tensor]]) -> None:
        """Restore the ring a checkpoint saved."""
        if len(ring) > self.k:
            raise ValueError(f"checkpoint holds {len(ring)} lagged policy states but algo.staleness={self.k}")
        self.ring = deque(ring, maxlen=self.k)
