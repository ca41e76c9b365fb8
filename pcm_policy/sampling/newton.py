"""Newton emulation with Jacobian-vector products (PCM supplement §2).

Glossary:
  Psi(X)     root problem, Psi_i = x_i - F_{i-1}(x_{i-1}) (supplement eq. 2); its fixed point is the
             sequential trajectory.
  Newton     J[Psi](X^k) (X^{k+1} - X^k) = -Psi(X^k) (eq. 5); the block-bidiagonal system (eq. 6) is
             solved left to right:
             x_{i+1}^{k+1} = F_i(x_i^k) + J_{F_i}(x_i^k) (x_i^{k+1} - x_i^k)   (eq. 7)
             with one forward-mode JVP per position (``torch.func.jvp``).
  b, tau     as in ``picard.py``: positions 0..b are final, the tolerance rule slides b.

It costs O(T) sequential JVPs per iteration, so it is a reference for per-iteration convergence,
not a fast sampler. Attention runs on the math SDPA backend, which supports forward-mode AD.
"""

from __future__ import annotations

import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .ddim import Grid, ddim_step, draw_noise
from .denoiser import Cond, SampleStats, call_model, check_cond
from .picard import check_args, initial_trajectory, slide, tol_scale

__all__ = ["sample_newton"]


@torch.no_grad()
def sample_newton(model_fn, x_T: torch.Tensor, cond: Cond = None, *, grid: Grid, tol: float = 0.1,
                  max_iters: int | None = None, noise: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, init: str | torch.Tensor | None = None,
                  return_iterates: bool = False, return_trajectory: bool = False, budget_s: float | None = None,
                  **model_kwargs) -> tuple[torch.Tensor, SampleStats]:
    """Newton's method on Psi(X) = 0, full window (supplement eq. 5-7).

    Args and returns as ``sample_picard`` (no window, TAA or safeguard); ``model_kwargs`` (e.g.
    ``lora_scale``) pass through to every call. ``nfe`` counts one per position per iteration (a JVP,
    or a plain call at the anchor). The window is batch-wide here (per-sample stats repeat the batch's);
    ``budget_s`` as in ``sample_picard``. Raises ValueError on bad arguments.
    """
    t0 = time.perf_counter()
    if budget_s is not None and not budget_s >= 0:
        raise ValueError(f"budget_s must be >= 0 seconds or None, got {budget_s}")
    grid = grid.like(x_T)
    T, B, d = len(grid), x_T.shape[0], x_T[0].numel()
    check_args(x_T, None, tol, max_iters, init, T)
    check_cond(cond, B)
    noise_terms = draw_noise(grid, x_T, noise, generator)
    scale = d * tol_scale(grid)
    X = initial_trajectory(grid, x_T, init)
    stats = SampleStats(iterates=[X.clone()] if return_iterates else None)

    def step(i: int):
        idx = torch.full((B,), i, dtype=torch.long, device=x_T.device)

        def F(x):  # F_i(x), noise term included
            out = call_model(model_fn, x, grid.timesteps[idx], cond, **model_kwargs)
            fx = ddim_step(grid, x, out, idx)
            return fx if noise_terms is None else fx + noise_terms[i]

        return F

    b = 0
    while b < T:
        if max_iters is not None and stats.iterations >= max_iters:
            stats.converged = False
            break
        if budget_s is not None and stats.iterations > 0 and time.perf_counter() - t0 >= budget_s:
            stats.converged, stats.out_of_budget = False, True
            break
        Xn = X.clone()
        Xn[b + 1] = step(b)(X[b])  # the anchor is final: no tangent
        with sdpa_kernel([SDPBackend.MATH]):
            for i in range(b + 1, T):  # eq. 7, left to right
                fx, jv = torch.func.jvp(step(i), (X[i],), (Xn[i] - X[i],))
                Xn[i + 1] = fx + jv
        err = (Xn[b + 1:] - X[b + 1:]).flatten(2).pow(2).sum(-1) / scale[b + 1:, None]
        stats.iterations += 1
        stats.nfe += T - b
        stats.residuals.append(err.max().sqrt().item())
        b += slide(err, tol)
        X = Xn
        if return_iterates:
            stats.iterates.append(X.clone())
    stats.sample_iterations, stats.sample_nfe = [stats.iterations] * B, [stats.nfe] * B
    stats.sample_converged = [stats.converged] * B
    if return_trajectory:
        stats.trajectory = X
    return X[T].clone(), stats
