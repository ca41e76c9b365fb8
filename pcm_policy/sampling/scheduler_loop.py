"""Sequential sampling through a diffusers scheduler's own ``step`` (DPM-Solver and friends).

For solvers this package does not re-implement (multistep DPM-Solver++, ...). The scheduler is
duck typed: ``set_timesteps(n)``, ``timesteps``, ``scale_model_input`` (if present) and
``step(model_output, t, x, generator=...)`` returning an object with ``prev_sample`` (or a tuple).
Note that ``set_timesteps`` mutates the scheduler's state; pass a dedicated instance.
"""

from __future__ import annotations

import inspect

import torch

from .denoiser import Cond, SampleStats, call_model, check_cond

__all__ = ["sample_with_scheduler"]


@torch.no_grad()
def sample_with_scheduler(model_fn, x_T: torch.Tensor, cond: Cond = None, *, scheduler, num_steps: int,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, SampleStats]:
    """``num_steps`` calls of ``scheduler.step``, one model call each; ``generator`` goes to ``step`` where it
    takes one (deterministic solvers such as UniPC do not)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    check_cond(cond, x_T.shape[0])
    scheduler.set_timesteps(num_steps)
    x = x_T * getattr(scheduler, "init_noise_sigma", 1.0)
    gen = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for t in scheduler.timesteps:
        t_rows = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        x_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        out = scheduler.step(call_model(model_fn, x_in, t_rows, cond), t, x, **gen)
        x = out.prev_sample if hasattr(out, "prev_sample") else out[0]
    n = len(scheduler.timesteps)
    return x, SampleStats(iterations=n, nfe=n)
