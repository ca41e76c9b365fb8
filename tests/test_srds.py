"""SRDS (Parareal over the DDIM grid): exact at tol 0, the coarse pass, the call schedule, budgets, the spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_sampling import ConvDenoiser, MLPDenoiser, close, ddim, ddpm, gaussian_denoiser, inputs

from pcm_policy.sampling import SamplerSpec, make_sampler, predicted_x0, sample_sequential, step_grid
from pcm_policy.sampling.srds import boundaries, coarse_grid, sample_srds

ROOT = Path(__file__).resolve().parents[1]


def cases():
    s = ddim(clip_sample=False)
    return [(MLPDenoiser(), ddim(), lambda c: c), (ConvDenoiser(), ddim(), lambda c: {"obs": c}),
            (gaussian_denoiser(s), s, lambda c: c)]


@pytest.mark.parametrize("case", range(3))
@pytest.mark.parametrize("T,S", [(12, None), (12, 1), (12, 5), (12, 12), (50, None), (7, 2)])
def test_tol0_equals_sequential(case, T, S):
    model, sched, wrap = cases()[case]
    x_T, cond = inputs()
    grid = step_grid(sched, T)
    seq, _ = sample_sequential(model, x_T, wrap(cond), grid=grid)
    x, st = sample_srds(model, x_T, wrap(cond), grid=grid, segments=S, tol=0.0)
    assert close(x, seq, 1e-5) and st.converged
    assert st.iterations == T  # the exact sample comes after T calls, as sequential's
    assert st.nfe <= T * len(boundaries(T, S))  # at most about one row per segment (+1 overlapping) per call


def test_stochastic_grid_with_presampled_noise_equals_sequential():
    model, (x_T, cond) = MLPDenoiser(), inputs()
    grid = step_grid(ddpm(), 12)
    noise = torch.randn(12, *x_T.shape, generator=torch.Generator().manual_seed(3))
    seq, _ = sample_sequential(model, x_T, cond, grid=grid, noise=noise)
    x, _ = sample_srds(model, x_T, cond, grid=grid, tol=0.0, noise=noise)
    assert close(x, seq, 1e-5)


def test_first_sample_is_the_coarse_pass_and_iterates_arrive_on_schedule():
    """After S calls the output is DDIM over the boundary steps; iteration j's sample after S + j(M - 1)
    calls (equal segments of M steps); before S calls, the x0 predicted at the last boundary evaluated."""
    model, (x_T, cond) = MLPDenoiser(), inputs()
    T, S, M = 12, 3, 4
    grid = step_grid(ddim(), T)
    cg = coarse_grid(grid, boundaries(T, S))
    coarse, cst = sample_sequential(model, x_T, cond, grid=cg, return_trajectory=True)
    _, st = sample_srds(model, x_T, cond, grid=grid, segments=S, tol=0.0, return_iterates=True)
    out = st.outputs
    assert len(out) == T + 1 and torch.equal(out[0], x_T) and close(out[S], coarse, 1e-6)
    for c in range(1, S):  # the anytime estimate of the coarse pass
        idx = torch.full((len(x_T),), c - 1)
        eps = model(cst.trajectory[c - 1], cg.timesteps[idx], cond)
        assert close(out[c], predicted_x0(cg, cst.trajectory[c - 1], eps, idx)[0], 1e-6)
    changes = [c for c in range(S + 1, T + 1) if not torch.equal(out[c], out[c - 1])]
    assert changes == [S + j * (M - 1) for j in range(1, S + 1) if S + j * (M - 1) <= T]


def test_budget_returns_the_current_iterate_and_tol_stops_early():
    model, (x_T, cond) = MLPDenoiser(), inputs()
    grid = step_grid(ddim(), 50)
    seq, _ = sample_sequential(model, x_T, cond, grid=grid)
    _, full = sample_srds(model, x_T, cond, grid=grid, tol=0.0, return_iterates=True)
    for k in (1, 4, 7, 13, 20, 49):
        x, st = sample_srds(model, x_T, cond, grid=grid, tol=0.0, max_iters=k)
        assert torch.equal(x, full.outputs[k]) and st.iterations == k and not st.converged
    x, st = sample_srds(model, x_T, cond, grid=grid, tol=0.1)
    assert st.converged and st.iterations < 50 and st.residuals[-1] <= 0.1
    assert torch.equal(x, full.outputs[st.iterations])  # the iterate it stopped on
    assert (x - seq).abs().max() < 0.05


def test_spec_and_errors():
    model, (x_T, cond) = MLPDenoiser(), inputs()
    s = make_sampler("srds", ddim(), num_steps=12, k=5, tol=0.0)
    x, st = s(model, x_T, cond)
    ref, _ = sample_srds(model, x_T, cond, grid=step_grid(ddim(), 12), tol=0.0, max_iters=5)
    assert torch.equal(x, ref) and st.iterations == 5
    assert SamplerSpec.from_dict(s.spec.to_dict()) == s.spec
    with pytest.raises(ValueError, match="segments"):
        sample_srds(model, x_T, cond, grid=step_grid(ddim(), 12), segments=13)
    with pytest.raises(ValueError, match="tol"):
        sample_srds(model, x_T, cond, grid=step_grid(ddim(), 12), tol=-1)


@pytest.mark.slow
def test_pusht_policy_tol0_equals_ddim50():
    from pcm_policy.pusht.checkpoint import load_policy
    from pcm_policy.pusht.peers import reset_conditions

    policy = load_policy(ROOT / "checkpoints/pusht_base")
    cond = reset_conditions(policy, [400_000, 400_001, 400_002])
    x_T = torch.randn(3, policy.cfg.horizon, policy.cfg.action_dim, generator=torch.Generator().manual_seed(0))
    grid = step_grid(policy.noise_scheduler, 50, solver="ddim")
    seq, _ = sample_sequential(policy.model_fn, x_T, cond, grid=grid)
    x, st = sample_srds(policy.model_fn, x_T, cond, grid=grid, tol=0.0)
    assert close(x, seq, 1e-5) and st.iterations == 50
