"""diffusers' ParaDiGMS loop (``evaluation.paradigms_ref``) against its own schedulers' sequential steps and ours."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMParallelScheduler, DDPMParallelScheduler
from test_sampling import SCHED, MLPDenoiser, close, inputs

from pcm_policy.evaluation.paradigms_ref import cheapest_within, sample_paradigms
from pcm_policy.sampling import sample_picard, sample_sequential, step_grid

T = 12


def loop(model, x_T, cond, sched, gen=None):
    """The scheduler's own sequential ``step`` loop."""
    sched.set_timesteps(T)
    x = x_T
    with torch.no_grad():
        for t in sched.timesteps:
            kw = {"generator": gen} if gen is not None else {}
            x = sched.step(model(x, t.repeat(len(x)), cond), t, x, **kw).prev_sample
    return x


def steps_noise(x_T, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(x_T.shape, generator=g) for _ in range(T)])


@pytest.mark.parametrize("window", [None, 4])
def test_consistent_config_paradigms_tol0_is_sequential_as_ours(window):
    model, (x_T, cond) = MLPDenoiser(), inputs()
    cfg = {**SCHED, "clip_sample": True}
    seq = loop(model, x_T, cond, DDIMParallelScheduler(**cfg))
    x, st = sample_paradigms(model, x_T, cond, scheduler=DDIMParallelScheduler(**cfg), num_steps=T, parallel=window,
                             tol=0.0)
    ours, ost = sample_picard(model, x_T, cond, grid=step_grid(DDIMParallelScheduler(**cfg), T), window=window, tol=0)
    assert close(x, seq, 1e-5) and close(ours, seq, 1e-5) and st.iterations == ost.iterations
    x, st = sample_paradigms(model, x_T, cond, scheduler=DDIMParallelScheduler(**cfg), num_steps=T, tol=0.1)
    assert st.iterations < T and (x - seq).abs().max() < 0.1


def test_final_alpha_defect_bites_paradigms_not_ours():
    """SD's DDIM config (set_alpha_to_one=False): batch_step_no_noise ends at abar = 1, step at abar(0)."""
    cfg = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
               set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    model, (x_T, cond) = MLPDenoiser(), inputs()
    seq = loop(model, x_T, cond, DDIMParallelScheduler(**cfg))
    x, _ = sample_paradigms(model, x_T, cond, scheduler=DDIMParallelScheduler(**cfg), num_steps=T, tol=0.0)
    ours, _ = sample_picard(model, x_T, cond, grid=step_grid(DDIMParallelScheduler(**cfg), T), tol=0.0)
    assert close(ours, seq, 1e-5)
    assert (x - seq).abs().max() > 1e-3


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_stride_defect_bites_paradigms_ddpm_not_ours(spacing):
    """DDPMParallelScheduler's batch step goes to t - n_train // T, its sequential step to the next grid timestep."""
    cfg = {**SCHED, "clip_sample": True, "timestep_spacing": spacing}
    model, (x_T, cond) = MLPDenoiser(), inputs()
    seq = loop(model, x_T, cond, DDPMParallelScheduler(**cfg), gen=torch.Generator().manual_seed(5))
    noise = steps_noise(x_T, 5)  # the same draws, step by step (the sequential loop skips t = 0's, the last)
    grid = step_grid(DDPMParallelScheduler(**cfg), T)
    ours_seq, _ = sample_sequential(model, x_T, cond, grid=grid, noise=noise)
    ours, _ = sample_picard(model, x_T, cond, grid=grid, noise=noise, tol=0.0)
    x, _ = sample_paradigms(model, x_T, cond, scheduler=DDPMParallelScheduler(**cfg), num_steps=T, tol=0.0,
                            noise=noise)
    assert close(ours_seq, seq, 1e-5) and close(ours, seq, 1e-5)
    assert (x - seq).abs().max() > 1e-2
    lead = {**cfg, "timestep_spacing": "leading"}  # strides agree under leading spacing: no defect
    seq = loop(model, x_T, cond, DDPMParallelScheduler(**lead), gen=torch.Generator().manual_seed(5))
    x, _ = sample_paradigms(model, x_T, cond, scheduler=DDPMParallelScheduler(**lead), num_steps=T, tol=0.0,
                            noise=noise)
    assert close(x, seq, 1e-4)


def test_cheapest_within():
    runs = [dict(distance=0.5, iterations=3, wall_s=1), dict(distance=0.1, iterations=6, wall_s=2),
            dict(distance=0.09, iterations=6, wall_s=1.5), dict(distance=0.01, iterations=9, wall_s=3)]
    assert cheapest_within(runs, 0.1) is runs[2] and cheapest_within(runs, 0.001) is None
