"""The consistency-distilled student's sampler: one call, or k calls of multistep consistency sampling.

Consistency Models (Song, Dhariwal, Chen, Sutskever, ICML 2023): a consistency function f(x_t, t) maps every
point of one probability-flow ODE trajectory to its end. Here the ODE is the base model's T-step DDIM grid
(``ddim.step_grid``) and the end is the grid's output, position T; the student is trained by
``pcm_policy.training.consistency`` (consistency distillation with the DDIM step as the teacher solver).

Glossary:
  f(x, j)       the student at grid position j (0..T-1, timestep t_j): the DDIM jump from t_j straight to
                the grid's end, f = sqrt(abar_end) x0_theta + sqrt(1 - abar_end) eps_theta with x0_theta, eps_theta
                what the adapted model (LoRA scale 1) predicts at (x, t_j); abar_end = the grid's final alpha.
                Written as c_skip(t) x + c_out(t) eps_theta (epsilon models): c_skip = sqrt(abar_end / abar_t),
                c_out = sqrt(1 - abar_end) - sqrt(abar_end (1 - abar_t) / abar_t). At j = T-1 it IS the last
                DDIM step F_{T-1}, so the boundary condition (f = the output at the end) holds there exactly.
  multistep     Song et al.'s Algorithm 1: x <- f(x_T, 0); for each further position j: x_j = sqrt(abar_j) x +
                sqrt(1 - abar_j) z, x <- f(x_j, j). z: fresh standard normal noise (``noise`` or ``generator``),
                or, when neither is given, the eps the previous call implied (deterministic re-noising, DDIM's
                own rule: the same x_T then always gives the same output).
  positions     the grid positions of the k calls: round(i T / k), i = 0..k-1 (evenly spaced; 0 first).
"""

from __future__ import annotations

import dataclasses

import torch

from .ddim import Grid, _rows, predicted_x0
from .denoiser import Cond, SampleStats, call_model

__all__ = ["consistency_fn", "consistency_positions", "sample_consistency"]


def consistency_positions(k: int, T: int) -> list[int]:
    """The grid positions of k calls over a T-step grid: round(i T / k), i = 0..k-1. ValueError unless 1 <= k <= T."""
    if not 1 <= k <= T:
        raise ValueError(f"a consistency sampler makes 1..T = {T} calls, got k = {k}")
    return [round(i * T / k) for i in range(k)]


def consistency_fn(grid: Grid, x: torch.Tensor, model_output: torch.Tensor, idx: torch.Tensor,
                   clip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(f, eps): the consistency function's value at rows ``x`` of grid positions ``idx`` (N,) given the model's
    output there (module doc: the DDIM jump from t_idx to the grid's end), and the noise the output implies.
    ``clip=False`` skips the x0 clip (training: the gradient does not vanish out of range)."""
    g = grid if clip else dataclasses.replace(grid, clip=None)
    x0, eps = predicted_x0(g, x, model_output, idx)
    a_end = _rows(grid.alpha_prev, torch.full_like(idx, len(grid) - 1), x)
    return a_end**0.5 * x0 + (1 - a_end) ** 0.5 * eps, eps


@torch.no_grad()
def sample_consistency(model_fn, x_T: torch.Tensor, cond: Cond = None, *, grid: Grid, k: int = 1,
                       noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                       lora_scale: float = 1.0) -> tuple[torch.Tensor, SampleStats]:
    """The student's sample in exactly ``k`` batched calls (``consistency_positions(k, T)``).

    Args:
        model_fn: ``model_fn(x, t, cond, lora_scale=...)`` with the student's adapter attached.
        x_T: (B, ...) standard normal initial noise, read at grid position 0.
        noise: (k - 1, B, ...) standard normal re-noising draws of calls 2..k (Song et al.); or ``generator``
            draws them (a list: one generator per row, each row's draws from its own, as ``ddim.draw_noise``);
            neither: deterministic re-noising with the implied eps (module doc).
        lora_scale: the adapter's scale (1: the student).
    Returns:
        (x (B, ...) clipped like the grid's x0, SampleStats with iterations k and nfe k).
    Raises:
        ValueError: k outside 1..T, ``noise`` of the wrong shape, or a generator list not one per row.
    """
    positions = consistency_positions(k, len(grid))
    if isinstance(generator, (list, tuple)) and len(generator) != len(x_T):
        raise ValueError(f"got {len(generator)} generators for {len(x_T)} rows; pass one per row")
    if noise is not None and tuple(noise.shape) != (k - 1, *x_T.shape):
        raise ValueError(f"noise must be (k - 1, *x_T.shape) = {(k - 1, *x_T.shape)}, got {tuple(noise.shape)}")
    grid = grid.like(x_T)
    x, eps, B = x_T, None, len(x_T)
    for i, j in enumerate(positions):
        idx = torch.full((B,), j, dtype=torch.long, device=x_T.device)
        if i:  # re-noise the current estimate to position j (abar_j), then one call
            z = noise[i - 1] if noise is not None else eps if generator is None else _draw(generator, x_T)
            a = _rows(grid.alpha, idx, x)
            x = a**0.5 * x + (1 - a) ** 0.5 * z.to(x)
        out = call_model(model_fn, x, grid.timesteps[idx], cond, lora_scale=lora_scale)
        x, eps = consistency_fn(grid, x, out, idx)
    return x, SampleStats(iterations=k, nfe=float(k))


def _draw(generator, x_T: torch.Tensor) -> torch.Tensor:
    """A standard normal draw shaped like ``x_T`` from one generator, or row by row from a list of them."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.randn(x_T.shape[1:], generator=g, device=g.device) for g in generator]).to(x_T)
    return torch.randn(x_T.shape, generator=generator, device=x_T.device).to(x_T)
