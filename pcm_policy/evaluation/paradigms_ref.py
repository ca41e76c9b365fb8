"""diffusers' own ParaDiGMS, as a reference to measure ``sampling.picard`` against.

The loop of diffusers' ``StableDiffusionParadigmsPipeline`` (ParaDiGMS, Shih et al. NeurIPS 2023, Alg. 1),
written as a plain loop over a model function and driven by diffusers' parallel schedulers
(``DDIMParallelScheduler`` / ``DDPMParallelScheduler``): their ``set_timesteps``, ``batch_step_no_noise``
and ``_get_variance`` (step noise and tolerance scale), the pipeline's window, cumulative sum, tolerance
rule and slide. Nothing of ours is used but the model-function protocol, so where the two disagree it is
diffusers' behaviour that shows.

Where diffusers' defects bite (diffusers 0.42; ``tests/test_paradigms_ref.py`` shows each):
  final alpha  ``DDIMParallelScheduler.batch_step_no_noise`` sets abar_prev = 1 after the last step whatever
               ``set_alpha_to_one``; its own sequential ``step`` uses ``final_alpha_cumprod`` (abar(0) with
               ``set_alpha_to_one=False``, SD's config), so its parallel fixed point is not its sequential output.
  strides      ``DDPMParallelScheduler.batch_step_no_noise`` steps t -> t - n_train // T, but its sequential
               ``step`` goes to the next grid timestep; with trailing or linspace spacing (or a T that does not
               divide n_train... under leading both agree) the parallel fixed point is again another solver's.
  tolerance    the scale of the last position is 1 / 0 (``+ [0]``): harmless, as the slide never needs it, but
               zero-variance steps (DDIM's last step to abar = 1) give an infinite ratio, so such a position
               never counts as converged before it is exact (ours floors zero variances, ``picard.tol_scale``).
Ours (``ddim.step_grid``) reproduces each scheduler's own sequential ``step``, so Picard's fixed point is
the sequential output for every spacing and final alpha. The two also define tolerance differently (ours
per sample, the pipeline's batch-wide window), so they are compared at a matched final distance to
sequential sampling (``cheapest_within``), not at the same tol.
"""

from __future__ import annotations

import time

import torch

from ..sampling.denoiser import SampleStats, call_model, check_cond, repeat_cond

__all__ = ["cheapest_within", "sample_paradigms"]


@torch.no_grad()
def sample_paradigms(model_fn, x_T: torch.Tensor, cond=None, *, scheduler, num_steps: int, parallel: int | None = None,
                     tol: float = 0.1, noise: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, SampleStats]:
    """The ParaDiGMS pipeline's loop (module doc) with ``scheduler`` = a diffusers ``DDIMParallelScheduler`` or
    ``DDPMParallelScheduler`` (its state is changed by ``set_timesteps``: pass a dedicated instance).

    Args:
        model_fn, x_T, cond: the model-function protocol (``sampling.denoiser``); x_T ``(B, ...)``.
        num_steps: T; parallel: the window (the pipeline's ``parallel``, default T); tol: its ``tolerance``.
        noise: ``(T, *x_T.shape)`` standard normal step noise of a stochastic scheduler (else drawn from
            ``generator`` step by step, as the pipeline draws it); scaled by ``_get_variance(t) ** 0.5``.
    Returns:
        ``(x, stats)``: the last buffer position, iterations (batched calls) and nfe (rows per sample).
    Raises:
        ValueError: a bad ``parallel``/``tol`` or a condition of the wrong batch size.
    """
    if parallel is not None and parallel < 1 or tol < 0:
        raise ValueError(f"parallel must be >= 1 and tol >= 0, got {parallel} and {tol}")
    check_cond(cond, x_T.shape[0])
    scheduler.set_timesteps(num_steps)
    ts = scheduler.timesteps.to(x_T.device)
    T, B = len(ts), x_T.shape[0]
    p = min(parallel or T, T)
    buf = torch.stack([x_T] * (T + 1))
    ode = scheduler._is_ode_scheduler
    if noise is None and not ode:
        noise = torch.stack([torch.randn(x_T.shape, generator=generator, device=x_T.device) for _ in range(T)])
    noise_arr = torch.zeros_like(buf)
    if not ode:
        for j in range(T):
            noise_arr[j] = scheduler._get_variance(ts[j]) ** 0.5 * noise[j].to(x_T)
    var = torch.tensor([float(scheduler._get_variance(ts[j])) for j in range(T)] + [0.0], dtype=torch.float64)
    inv = (1.0 / var).to(x_T.device)[:, None] / x_T[0].numel()  # the pipeline's inverse_variance_norm
    begin, end, stats, rows = 0, p, SampleStats(), 0
    while begin < T:
        n = end - begin
        block, block_t = buf[begin:end], ts[begin:end, None].repeat(1, B)
        out = call_model(model_fn, block.flatten(0, 1), block_t.flatten(0, 1), repeat_cond(cond, n))
        den = scheduler.batch_step_no_noise(model_output=out, timesteps=block_t.flatten(0, 1),
                                            sample=block.flatten(0, 1)).reshape(block.shape)
        new = buf[begin][None] + torch.cumsum(den - block, dim=0)
        if not ode:
            new = new + torch.cumsum(noise_arr[begin:end], dim=0)
        err = (new - buf[begin + 1:end + 1]).reshape(n, B, -1).norm(dim=-1).pow(2).double()
        ratio = torch.nn.functional.pad(err * inv[begin + 1:end + 1], (0, 0, 0, 1), value=1e9)
        ind = int(torch.argmax((ratio > tol**2).max(dim=1).values.int()))
        new_begin = begin + min(1 + ind, p)
        new_end = min(new_begin + p, T)
        buf[begin + 1:end + 1] = new
        buf[end:new_end + 1] = buf[end][None]
        stats.iterations += 1
        rows += n * B
        begin, end = new_begin, new_end
    stats.nfe = rows / B
    return buf[-1].clone(), stats


def cheapest_within(runs: list[dict], target: float) -> dict | None:
    """The run with the fewest ``iterations`` (then ``nfe``, then ``wall_s``) among ``runs`` whose ``distance`` <=
    ``target``; None if none qualifies. A run is a dict with ``distance``, ``iterations``, ``wall_s`` (and ``nfe``)."""
    ok = [r for r in runs if r["distance"] <= target]
    return min(ok, key=lambda r: (r["iterations"], r.get("nfe", 0), r["wall_s"])) if ok else None


def timed(fn, *args, **kw):
    """``(fn(*args, **kw), seconds)``."""
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0
