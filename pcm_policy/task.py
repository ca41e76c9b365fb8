"""The Task: one model family on the sampler core, as the generic drivers see it.

A task (PushT, the image models, a lerobot policy, the toy Gaussian mixture of the tests) is one small
``task.py`` that builds a ``Task``; the drivers - PCT (``training.pct.run_pct``), the evaluation sweep
(``evaluation.sweep``) and its report (``evaluation.report``) - take a Task and never import a task
package. Everything a driver needs is here:

  model_fn     ``model_fn(x, t, cond, lora_scale=None) -> eps`` (the sampler protocol,
               ``sampling/denoiser.py``); it honours ``lora_scale`` (a float or one per row) once an
               adapter is on ``module``.
  scheduler    the model's own diffusers DDIM/DDPM scheduler; the reference trajectory is DDIM-T on
               ``step_grid(scheduler, num_steps, solver="ddim")`` (``Task.grid``).
  conditions   ``conditions(split, n) -> (cond, x_T)``: the first ``n`` conditions of a split (fewer if
               the split has fewer) and their initial noise ``x_T`` (n, *sample_shape); ``cond`` is a
               tensor with one row per sample, a dict of them, or None. Deterministic. Splits: "train"
               (PCT's training pairs), "val" (held out: training-time validation and schedule tuning)
               and "eval" (the evaluation sweep; never used to tune anything).
  distance     ``distance(out, ref) -> (B,)`` per sample in ``unit``, differentiable (PushT: mean action
               distance in env pixels; images: latent RMSE).
  score        optional ``score(spec, k) -> {"score": float, ...}``: a closed-loop or quality score of
               sampler ``spec`` (a ``SamplerSpec``) held to exactly ``k`` iterations on the eval split (other
               scalar entries become columns of the sweep's rows; a ``"detail"`` dict is kept for the
               reference only); ``score(None, None)`` scores the converged reference (DDIM-T). None: the
               sweep measures distances only.
  lora_targets peft target module names of the default adapter (PushT/images: attention projections;
               lerobot's UNet: conv/FiLM layers).
  module       the network the LoRA adapter goes on (and the training loop trains).
  key          JSON-able settings that, besides ``module``'s weights, define the conditions and the model
               function (guidance, prompts, normaliser, demonstration store...): part of every cache key.
  full_copy    optional ``full_copy() -> nn.Module``: a fully fine-tuned copy for the paper's feature-space
               PCM (``pct.finetune: full``); ``save_adapter(folder, spec, extra)`` then writes it.
  images       optional ``images(x) -> uint8 (B, H, W, 3)``: decoded samples for the report's grids.
  score_images optional ``score_images(spec, k) -> uint8 (n, H, W, 3)``: the first images ``score(spec, k)``
               decoded (``(None, None)``: the reference's), so the report's grid shows the scored samples
               byte for byte; without it the grid samples its own with ``images``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["SPLITS", "Task"]

SPLITS = ("train", "val", "eval")


@dataclass
class Task:
    """Everything a generic driver needs of one model family (module doc). Raises ValueError on construction
    for a bad ``num_steps``, ``unit`` or ``name``."""

    name: str
    module: torch.nn.Module
    model_fn: Callable
    scheduler: Any
    num_steps: int
    lora_targets: list[str]
    distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    unit: str
    conditions: Callable[[str, int], tuple[Any, torch.Tensor]]
    score: Callable[..., dict] | None = None
    key: dict = field(default_factory=dict)
    full_copy: Callable[[], torch.nn.Module] | None = None
    save_adapter: Callable | None = None
    images: Callable[[torch.Tensor], Any] | None = None
    score_images: Callable[..., Any] | None = None

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"Task.name must be a non-empty string, got {self.name!r}")
        if int(self.num_steps) < 1:
            raise ValueError(f"Task.num_steps must be >= 1, got {self.num_steps}")
        if not self.unit:
            raise ValueError("Task.unit must name the distance's unit (e.g. 'px', 'latent RMSE')")
        self.num_steps, self.lora_targets = int(self.num_steps), list(self.lora_targets)

    def grid(self, num_steps: int | None = None):
        """The DDIM grid of the reference trajectory: ``step_grid(scheduler, num_steps or T, solver="ddim")``."""
        from .sampling import step_grid

        return step_grid(self.scheduler, int(num_steps or self.num_steps), solver="ddim")

    def split(self, split: str, n: int) -> tuple[Any, torch.Tensor]:
        """``conditions(split, n)``, checked: a known split, n >= 0, x_T rows == cond rows. Raises ValueError."""
        from .sampling.denoiser import check_cond

        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if n < 0:
            raise ValueError(f"the number of conditions must be >= 0, got {n}")
        cond, x_T = self.conditions(split, n)
        if len(x_T) > n:
            raise ValueError(f"task {self.name}: conditions({split!r}, {n}) gave {len(x_T)} rows; at most {n} asked")
        check_cond(cond, len(x_T))
        return cond, x_T

    def fingerprint(self, adapter: bool = False) -> str:
        """sha256 (16 hex) of ``module``'s base weights (the same with or without an adapter attached), ``name``
        and ``key``; ``adapter``: of the adapter tensors (``lora_``) on ``module`` instead."""
        h = hashlib.sha256(json.dumps({"name": self.name, "key": self.key}, sort_keys=True, default=str).encode())
        for k, v in sorted(self.module.state_dict().items()):
            if ("lora_" in k) == adapter:
                h.update(k.replace(".base_layer", "").encode())  # peft renames a wrapped layer's weights
                h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]
