"""Exponential moving average of weights with the reference's warm-up decay (pusht.md 5.4)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, power: float = 0.75, max_value: float = 0.9999, inv_gamma: float = 1.0,
              update_after_step: int = 0) -> float:
    """decay = 1 - (1 + k / inv_gamma)^-power, k = step - update_after_step - 1; 0 at k <= 0."""
    k = max(0, step - update_after_step - 1)
    return 0.0 if k == 0 else min(max_value, max(0.0, 1 - (1 + k / inv_gamma) ** -power))


class EMA:
    """Keeps ``self.model``, an averaged copy of a module. Parameters that do not train, and
    buffers (e.g. the normaliser), are copied straight across."""

    def __init__(self, model: nn.Module, power: float = 0.75, max_value: float = 0.9999):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.max_value, self.step = power, max_value, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        self.step += 1
        decay = ema_decay(self.step, self.power, self.max_value)
        for avg, p in zip(self.model.parameters(), model.parameters(), strict=True):
            if p.requires_grad:
                avg.mul_(decay).add_(p.detach(), alpha=1 - decay)
            else:
                avg.copy_(p.detach())
        for avg, b in zip(self.model.buffers(), model.buffers(), strict=True):
            avg.copy_(b)
        return decay

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.step = int(state["step"])
