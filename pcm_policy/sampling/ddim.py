"""The DDIM-family solver step, written once and vectorised over timesteps; the sequential sampler.

Glossary (DDIM paper eq. 12/16, DDPM paper eq. 7/15):
  T          number of solver steps (``num_steps``); trajectory positions 0..T.
  X[i]       the sample after i steps. X[0] = ``x_T`` (the initial noise, at diffusion time T),
             X[T] = the output x_0. The spec's x_i is X[i].
  t_i        training timestep of step i (``grid.timesteps[i]``), set here as diffusers'
             ``set_timesteps`` does (``timestep_spacing`` leading / trailing / linspace).
  abar       ``alphas_cumprod``; ``grid.alpha[i]`` = abar(t_i), ``grid.alpha_prev[i]`` = abar(t_{i+1})
             (after the last step: 1, or abar(0) for DDIM with ``set_alpha_to_one=False``).
  F_i(x)     one step, X[i+1] = F_i(X[i]) = mean_i(x, eps(x, t_i)) + std_i * z_i.
  sigma_i^2  DDPM posterior variance of step i: (1 - abar_prev)/(1 - abar) * (1 - abar/abar_prev).
  z_i        pre-sampled standard normal noise of step i (DDPM, DDIM eta > 0), drawn once.

The scheduler object is read, never called: its ``config`` and ``alphas_cumprod`` define the noise
schedule. A config with ``set_alpha_to_one`` is solved as DDIM, one with ``variance_type`` as DDPM
(ancestral); ``solver=`` overrides (e.g. DDIM on a DDPM-trained policy's schedule).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .denoiser import Cond, SampleStats, call_model, check_cond

__all__ = ["Grid", "step_grid", "ddim_step", "predicted_x0", "draw_noise", "sample_sequential"]


@dataclass(frozen=True)
class Grid:
    """A scheduler's discretisation into T steps (all tensors have T entries)."""

    solver: str  # "ddim" | "ddpm"
    timesteps: torch.Tensor  # t_i, long
    alpha: torch.Tensor  # abar(t_i)
    alpha_prev: torch.Tensor  # abar(t_{i+1})
    std: torch.Tensor  # noise std of step i (0 for deterministic DDIM)
    var: torch.Tensor  # sigma_i^2, the DDPM posterior variance of step i
    prediction_type: str
    clip: float | None  # clip_sample_range when clip_sample, else None

    def __len__(self) -> int:
        return len(self.timesteps)

    def to(self, device=None, dtype=None) -> Grid:
        """The same grid with its float tensors on ``device`` as ``dtype`` (timesteps stay long)."""
        f = dict(device=device, dtype=dtype)
        return Grid(self.solver, self.timesteps.to(device), self.alpha.to(**f), self.alpha_prev.to(**f),
                    self.std.to(**f), self.var.to(**f), self.prediction_type, self.clip)

    def like(self, x: torch.Tensor) -> Grid:
        """This grid on ``x``'s device, coefficients in float32 (or float64 if ``x`` is)."""
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        if self.alpha.device == x.device and self.alpha.dtype == dtype:
            return self
        return self.to(x.device, dtype)

    @property
    def stochastic(self) -> bool:
        return bool((self.std > 0).any())


def _round_half_even(num: int, den: int) -> int:  # = numpy's round(num / den), without floats
    q, r = divmod(num, den)
    return q + (2 * r > den or (2 * r == den and q % 2 == 1))


def _timesteps(cfg: dict, n: int) -> list[int]:
    """diffusers' ``set_timesteps`` (DDIMScheduler / DDPMScheduler), descending."""
    n_train, spacing = cfg["num_train_timesteps"], cfg.get("timestep_spacing", "leading")
    if spacing == "leading":
        return [i * (n_train // n) + cfg.get("steps_offset", 0) for i in range(n - 1, -1, -1)]
    if spacing == "trailing":
        return [_round_half_even(n_train * (n - i), n) - 1 for i in range(n)]
    if spacing == "linspace":
        return [_round_half_even(i * (n_train - 1), max(n - 1, 1)) for i in range(n - 1, -1, -1)]
    raise ValueError(f"timestep_spacing {spacing!r} is not supported; use leading, trailing or linspace")


def _solver_of(cfg: dict) -> str:
    if "set_alpha_to_one" in cfg:
        return "ddim"
    if "variance_type" in cfg and "solver_order" not in cfg:
        return "ddpm"
    raise ValueError("cannot tell DDIM from DDPM from this scheduler's config; pass solver='ddim' or "
                     "'ddpm', or use sample_with_scheduler for other diffusers schedulers")


def step_grid(scheduler, num_steps: int, *, solver: str | None = None, eta: float = 0.0,
              device=None, dtype=torch.float32) -> Grid:
    """The step grid of ``num_steps`` steps of a configured diffusers DDIM/DDPM scheduler.

    Args:
        scheduler: a ``DDIMScheduler`` / ``DDPMScheduler`` (or anything with the same ``config`` and
            ``alphas_cumprod``); read, never called.
        num_steps: T, in 1..``num_train_timesteps``.
        solver: "ddim" or "ddpm"; default: told from the config (``set_alpha_to_one`` -> DDIM).
        eta: DDIM's stochasticity (DDIM eq. 16); 0 is deterministic DDIM.
    Returns:
        a ``Grid`` with T timesteps (descending, as ``set_timesteps`` gives them) and coefficients.
    Raises:
        ValueError: an unsupported config (thresholding, timestep spacing, prediction or variance
            type) or an out-of-range ``num_steps`` / ``eta``.
    """
    cfg = dict(scheduler.config)
    solver = solver or _solver_of(cfg)
    if solver not in ("ddim", "ddpm"):
        raise ValueError(f"solver must be 'ddim' or 'ddpm', got {solver!r}")
    n_train = cfg["num_train_timesteps"]
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or not 1 <= num_steps <= n_train:
        raise ValueError(f"num_steps must be an integer in 1..{cfg['num_train_timesteps']} (the scheduler's training "
                         f"timesteps), got {num_steps!r}")
    if not math.isfinite(eta) or eta < 0 or (eta > 0 and solver == "ddpm"):
        raise ValueError(f"eta must be >= 0 and is for DDIM only (DDPM is always stochastic), got {eta}")
    if cfg.get("thresholding", False):
        raise ValueError("dynamic thresholding is not supported; configure the scheduler with "
                         "thresholding=False")
    ac = scheduler.alphas_cumprod.detach().to("cpu", torch.float32)
    ts = torch.tensor(_timesteps(cfg, num_steps), dtype=torch.long)
    if solver == "ddim":  # DDIMScheduler.step: prev = t - n_train // T, final alpha per set_alpha_to_one
        prev = ts - cfg["num_train_timesteps"] // num_steps
        final = torch.tensor(1.0) if cfg.get("set_alpha_to_one", True) else ac[0]
    else:  # DDPMScheduler.previous_timestep: the next grid point, -1 after the last
        prev = torch.cat([ts[1:], ts.new_tensor([-1])])
        final = torch.tensor(1.0)
    a = ac[ts]
    a_prev = torch.where(prev >= 0, ac[prev.clamp(min=0)], final)
    var = (1 - a_prev) / (1 - a) * (1 - a / a_prev)  # sigma_i^2, DDIM eq. 16 with eta = 1
    if solver == "ddim":
        std = eta * var**0.5
    else:
        vtype = cfg.get("variance_type", "fixed_small")
        if vtype in ("fixed_small", "fixed_small_log"):
            std = var.clamp(min=1e-20) ** 0.5
        elif vtype == "fixed_large":
            std = (1 - a / a_prev) ** 0.5
        else:
            raise ValueError(f"DDPM variance_type {vtype!r} is not supported (fixed_small, fixed_large)")
        std = torch.where(ts > 0, std, torch.zeros_like(std))  # DDPMScheduler adds no noise at t = 0
    pred = cfg.get("prediction_type", "epsilon")
    if pred not in ("epsilon", "sample", "v_prediction"):
        raise ValueError(f"prediction_type {pred!r} is not supported")
    clip = float(cfg.get("clip_sample_range", 1.0)) if cfg.get("clip_sample", False) else None
    f = dict(device=device, dtype=dtype)
    return Grid(solver, ts.to(device), a.to(**f), a_prev.to(**f), std.to(**f), var.to(**f), pred, clip)


def _rows(v: torch.Tensor, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-step values ``v`` at each row's step ``idx``, shaped to broadcast against ``x``."""
    return v[idx].view(-1, *([1] * (x.ndim - 1)))


def predicted_x0(grid: Grid, x: torch.Tensor, model_output: torch.Tensor,
                 idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) implied by the model output at rows ``x`` of steps ``idx`` (N,): DDIM eq. 12's
    "predicted x0" (clipped to the scheduler's ``clip_sample_range`` when ``clip_sample``) and the noise."""
    a = _rows(grid.alpha, idx, x)
    b = 1 - a
    if grid.prediction_type == "epsilon":
        x0, eps = (x - b**0.5 * model_output) / a**0.5, model_output
    elif grid.prediction_type == "sample":
        x0 = model_output
        eps = (x - a**0.5 * x0) / b**0.5
    else:  # v_prediction
        x0 = a**0.5 * x - b**0.5 * model_output
        eps = a**0.5 * model_output + b**0.5 * x
    if grid.clip is not None:
        x0 = x0.clamp(-grid.clip, grid.clip)
    return x0, eps


def ddim_step(grid: Grid, x: torch.Tensor, model_output: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Noise-free step ``mean_i(x)`` for every row of ``x``; ``idx`` (N,) holds each row's step index.

    Equals diffusers' ``DDIMScheduler.step`` (without its noise) and ``batch_step_no_noise`` for
    DDIM, and ``DDPMScheduler.step``'s posterior mean for DDPM.
    """
    a, a_prev = _rows(grid.alpha, idx, x), _rows(grid.alpha_prev, idx, x)
    x0, eps = predicted_x0(grid, x, model_output, idx)
    if grid.solver == "ddim":  # DDIM eq. 12: sqrt(abar_prev) x0 + sqrt(1 - abar_prev - std^2) eps
        return a_prev**0.5 * x0 + (1 - a_prev - _rows(grid.std, idx, x) ** 2) ** 0.5 * eps
    alpha_t = a / a_prev  # DDPM eq. 7: posterior mean of q(x_{t_prev} | x_t, x0)
    return (a_prev**0.5 * (1 - alpha_t)) / (1 - a) * x0 + alpha_t**0.5 * (1 - a_prev) / (1 - a) * x


def draw_noise(grid: Grid, x_T: torch.Tensor, noise: torch.Tensor | None = None,
               generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor | None:
    """The noise term std_i * z_i of every step, ``(T, *x_T.shape)``; None for deterministic DDIM.

    ``noise`` (standard normal, ``(T, *x_T.shape)``) is used when given; otherwise it is drawn one
    step at a time from ``generator``, as a diffusers step loop would draw it. A list of generators,
    one per row of ``x_T`` (diffusers' convention), draws each row's T steps from its own generator
    (on the generator's device, then moved), so a row's noise does not depend on the other rows.
    """
    if not grid.stochastic:
        return None
    if noise is None and isinstance(generator, (list, tuple)):
        if len(generator) != x_T.shape[0]:
            raise ValueError(f"got {len(generator)} generators for {x_T.shape[0]} rows; pass one per row")
        noise = torch.stack([torch.stack([torch.randn(x_T.shape[1:], generator=g, device=g.device)
                                          for _ in range(len(grid))]) for g in generator], dim=1)
    elif noise is None:
        noise = torch.stack([torch.randn(x_T.shape, generator=generator, device=x_T.device, dtype=x_T.dtype)
                             for _ in range(len(grid))])
    if noise.shape != (len(grid), *x_T.shape):
        raise ValueError(f"noise must have shape (num_steps, *x_T.shape) = {(len(grid), *x_T.shape)}, "
                         f"got {tuple(noise.shape)}")
    return grid.std.view(-1, *([1] * x_T.ndim)) * noise.to(x_T)


@torch.no_grad()
def sample_sequential(model_fn, x_T: torch.Tensor, cond: Cond = None, *, grid: Grid,
                      noise: torch.Tensor | None = None, truncate: int | None = None,
                      generator: torch.Generator | None = None,
                      return_trajectory: bool = False) -> tuple[torch.Tensor, SampleStats]:
    """Sequential sampling X[i+1] = F_i(X[i]): T model calls one after another.

    Args:
        model_fn: ``model_fn(x, t, cond) -> model output`` (``denoiser.ModelFn``).
        x_T: ``(B, ...)`` initial noise, float32 (or float64).
        cond: per-sample condition, batched along dim 0 (``denoiser.Cond``).
        grid: the step grid (``step_grid``); T = ``len(grid)``.
        noise: standard normal step noise ``(T, *x_T.shape)`` for a stochastic grid; else drawn from
            ``generator`` one step at a time.
        truncate: stop after k of the T steps and return X[k] (the paper's "Sequential" at k); DDIM
            re-discretised to k steps is a grid of k steps instead.
    Returns:
        ``(x, stats)``: X[T] (or X[k]) shaped like ``x_T``, and ``SampleStats``.
    Raises:
        ValueError: ``truncate`` outside 0..T, a condition or noise of the wrong shape.
    """
    grid = grid.like(x_T)
    num_steps = len(grid)
    check_cond(cond, x_T.shape[0])
    steps = num_steps if truncate is None else truncate
    if not 0 <= steps <= num_steps:
        raise ValueError(f"truncate must be in 0..num_steps={num_steps}, got {truncate}")
    noise_terms = draw_noise(grid, x_T, noise, generator)
    x, traj = x_T, [x_T]
    for i in range(steps):
        idx = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        x = ddim_step(grid, x, call_model(model_fn, x, grid.timesteps[idx], cond), idx)
        if noise_terms is not None:
            x = x + noise_terms[i]
        traj.append(x)
    stats = SampleStats(iterations=steps, nfe=steps, converged=steps == num_steps)
    if return_trajectory:
        stats.trajectory = torch.stack(traj)
    return x, stats
