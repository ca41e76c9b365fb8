"""Exponential moving average of the TRAINED parameters only, with the reference's warm-up decay.

For a frozen base with a LoRA adapter the average holds the adapter's tensors alone, so a large base
is never copied. ``EMA.applied(model)`` swaps the averages in for evaluation and saving, then back.
Decay: diffusers' ``EMAModel`` (Diffusion Policy's setting: power 0.75, warm-up from 0).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["EMA", "ema_decay"]


def ema_decay(step: int, power: float = 0.75, max_value: float = 0.9999, inv_gamma: float = 1.0,
              update_after_step: int = 0) -> float:
    """decay = 1 - (1 + k / inv_gamma)^-power, k = step - update_after_step - 1; 0 at k <= 0."""
    k = max(0, step - update_after_step - 1)
    return 0.0 if k == 0 else min(max_value, max(0.0, 1 - (1 + k / inv_gamma) ** -power))


class EMA:
    """Averages of ``model``'s parameters that require grad, keyed by parameter name."""

    def __init__(self, model: nn.Module, power: float = 0.75, max_value: float = 0.9999):
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        if not self.shadow:
            raise ValueError("EMA: no parameter of the model requires grad")
        self.power, self.max_value, self.step = power, max_value, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        self.step += 1
        decay = ema_decay(self.step, self.power, self.max_value)
        params = dict(model.named_parameters())
        for n, avg in self.shadow.items():
            avg.mul_(decay).add_(params[n].detach(), alpha=1 - decay)
        return decay

    @contextmanager
    @torch.no_grad()
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Context: ``model`` with the averaged parameters in place; its own are restored after."""
        params = dict(model.named_parameters())
        live = {n: params[n].detach().clone() for n in self.shadow}
        for n, avg in self.shadow.items():
            params[n].copy_(avg)
        try:
            yield model
        finally:
            for n, p in live.items():
                params[n].copy_(p)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        if "shadow" not in state:
            raise ValueError("EMA state without 'shadow' (written by an earlier version); start a new run folder")
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state lacks {sorted(missing)[:3]}...: it was saved for another set of parameters")
        for n in self.shadow:
            self.shadow[n].copy_(state["shadow"][n])
        self.step = int(state["step"])
