"""Frozen inference graphs of the policy UNet: the same arithmetic without Python's per-layer cost.

A batch-1 call of the small UNet is mostly interpreter and dispatch overhead on a CPU (some 200 module
calls for 12 MFLOP); freezing took 40-55 % off its time here. ``torch.jit.trace`` records the
forward once and ``torch.jit.freeze`` inlines the weights as constants, so a call runs the recorded
kernels back to back. The kernels are the
ones eager mode runs, so the outputs are the eager ones (tested bitwise on CPU); sequential
sampling (many narrow calls) gains the most, a wide Picard window less.

PCM needs the model at two LoRA scales: ``FrozenGraphs`` holds one graph of the base model (adapter
disabled) and, when the policy has an adapter, one with the adapter at lambda = 1. Any other call
(a fractional or per-row lambda, a different sequence length, device or dtype, gradients enabled)
is not served, and ``DiffusionPolicy.model_fn`` falls back to the eager model. Trace after the
adapter is loaded and the policy moved to its device (``DiffusionPolicy.freeze``); changing the
weights afterwards is not seen by the graphs (call ``freeze`` again).

TorchScript is deprecated in favour of ``torch.compile``/``torch.export`` but works in the pinned torch
(2.13). It was kept because it needs no compiler, traces in about a second and was the fastest here:
on this 2-core CPU, 1 thread, side by side in one run, a 50-row call took 14.3-14.9 ms frozen, 16.6-16.7
eager and 19.7-20.1 with ``torch.compile`` (inductor, static shapes, 62 s to compile both widths); a
batch-1 call 2.2-2.5, 3.7-3.9 and 2.9-3.8 ms. ``--eager`` in the scripts turns the graphs off.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..lora import has_lora, lora_disabled, lora_scale

__all__ = ["FrozenGraphs"]


def _trace(model: nn.Module, example: tuple) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # the model's argument checks become constants of the trace: expected
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated: see the module doc
        return torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))


class FrozenGraphs:
    """Frozen graphs of ``model`` for inputs shaped like ``(B, *sample_shape)`` and ``(B, cond_dim)``."""

    def __init__(self, model: nn.Module, sample_shape: tuple[int, ...], cond_dim: int):
        if model.training:
            raise ValueError("freeze an eval-mode model (model.eval()): a frozen graph keeps train-mode behaviour")
        p = next(model.parameters())
        self.device, self.dtype, self.sample_shape = p.device, p.dtype, tuple(sample_shape)
        example = (torch.zeros(2, *sample_shape, device=p.device, dtype=p.dtype),
                   torch.zeros(2, dtype=torch.long, device=p.device),
                   torch.zeros(2, cond_dim, device=p.device, dtype=p.dtype))
        with torch.no_grad():
            if has_lora(model):
                with lora_disabled(model):
                    self.base = _trace(model, example)
                with lora_scale(model, 1.0):
                    self.adapted = _trace(model, example)
            else:
                self.base, self.adapted = _trace(model, example), None

    def graph(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, lora_scale=None):
        """The graph that computes this call exactly, or None if none does."""
        if torch.is_grad_enabled() or x.device != self.device or x.dtype != self.dtype:
            return None
        if tuple(x.shape[1:]) != self.sample_shape or not torch.is_tensor(t) or t.shape != x.shape[:1]:
            return None
        if lora_scale is None or not torch.is_tensor(lora_scale) and lora_scale == 0:
            return self.base
        if not torch.is_tensor(lora_scale) and lora_scale == 1:
            return self.adapted
        return None
