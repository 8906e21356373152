"""Exact policy lag (``algo.staleness = k``): rollouts sampled, and their old log-probs computed, by the policy as it
was k optimizer steps earlier, as an asynchronous pipeline with lag k does (AReaL, PipelineRL, verl's one-step
off-policy mode), but deterministic and on one device.

``BehaviourPolicy`` holds a second model instance, the behaviour policy, and a ring of the policy's last k states:
copies, on the CPU, of what training changes (its trainable parameters, ``softgate.lora.trainable_named_parameters``)
taken just before each optimizer step. Before each rollout the oldest state is copied into the behaviour model.
After U optimizer steps the ring holds the states after U-k, ..., U-1 steps, so its oldest entry is the policy k
steps back; before k steps were made it is the start policy, the oldest state there is (lag = U). The rest of the
behaviour model (the frozen base weights under LoRA, the buffers) is never copied: it is the policy's own, frozen
since the copy was taken.

Cost: k CPU copies of the trainable parameters (full fine-tuning: every parameter, k x 4 bytes per parameter with
float32 master weights, 4.4 MB each for the embedded tiny model, 30 GB each for a 7B model; LoRA: the adapters
only), one device-to-host copy of them per optimizer step, and a second model instance on the device (what
``loss.kl_coef > 0`` also costs).
"""

from __future__ import annotations

import copy
from collections import deque

import torch

from softgate.lora import trainable_named_parameters


class BehaviourPolicy:
    """The policy as it was ``lag`` optimizer steps ago, for sampling and old log-probs.

    ``model`` is a frozen copy of the policy (eval mode, no gradients) on the policy's device; ``record`` must be
    called just before every optimizer step, ``sync`` before every rollout.
    """

    def __init__(self, policy: torch.nn.Module, k: int):
        if k < 1:
            raise ValueError(f"algo.staleness={k}: a behaviour policy needs a lag k >= 1 (0 samples from the policy)")
        self.k = k
        self.ring: deque[dict[str, torch.Tensor]] = deque(maxlen=k)  # oldest first; name -> CPU tensor
        self.model = copy.deepcopy(policy).eval().requires_grad_(False)
        # The behaviour model's own tensors of what training changes (the same names as in the policy).
        params = dict(self.model.named_parameters())
        self._lagged = {name: params[name] for name in trainable_named_parameters(policy)}

    def record(self, policy: torch.nn.Module) -> None:
        """Keep the policy's trainable parameters before the optimizer step about to be made (drops the state k
        steps older)."""
        self.ring.append({name: p.detach().to("cpu", copy=True)
                          for name, p in trainable_named_parameters(policy).items()})

    @torch.no_grad()
    def sync(self, policy: torch.nn.Module) -> int:
        """Copy the oldest state of the ring (the policy itself when no step was made yet) into ``model``; return
        the lag in optimizer steps between ``model`` and ``policy``."""
        source = self.ring[0] if self.ring else trainable_named_parameters(policy)
        for name, target in self._lagged.items():
            target.copy_(source[name])
        return len(self.ring)

    def state(self) -> list[dict[str, torch.Tensor]]:
        """The ring, oldest first, for a checkpoint."""
        return list(self.ring)

    def load(self, ring: list[dict[str, torch.Tensor]], where: str = "policy_ring.pt") -> None:
        """Restore the ring a checkpoint saved (``where``: its file, named in errors). A ring of whole state dicts
        (what checkpoints held before the ring kept the trainable parameters only) loads too: its trainable
        entries are the state."""
        if len(ring) > self.k:
            raise ValueError(f"{where}: holds {len(ring)} lagged policy states but algo.staleness={self.k}")
        states = []
        for state in ring:
            missing = [name for name in self._lagged if name not in state]
            wrong = [name for name in self._lagged if name in state and state[name].shape != self._lagged[name].shape]
            if missing or wrong:
                raise ValueError(f"{where}: its lagged policy states do not fit the model (missing {missing[:3]}, "
                                 f"other shape {wrong[:3]}); model and model.lora must be what the run was "
                                 "started with")
            states.append({name: state[name] for name in self._lagged})
        self.ring = deque(states, maxlen=self.k)
