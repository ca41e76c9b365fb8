"""DPM-Solver++ and UniPC as configured by ``pcm_policy.solvers``: the model's schedule, the x0 clip, the names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from test_sampling import MLPDenoiser, close, ddim, ddpm, inputs

from pcm_policy.sampling import SamplerSpec, make_sampler, sample_with_scheduler
from pcm_policy.solvers import make_any_sampler, solver_scheduler

ROOT = Path(__file__).resolve().parents[1]


def ddim_loop(model, x_T, cond, sched, k, **step_kw):
    sched.set_timesteps(k)
    x = x_T
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(model(x, t.repeat(len(x)), cond), t, x, **step_kw).prev_sample
    return x


@pytest.mark.parametrize("k", [4, 5, 10])
@pytest.mark.parametrize("name", ["dpmsolver++", "unipc"])
def test_first_order_with_the_clip_is_ddim_on_the_clipped_x0(name, k):
    """Order 1 (UniPC: no corrector) on the same timesteps is DDIM whose x0 is clipped and whose eps is the one
    the clipped x0 implies (``use_clipped_model_output``): thresholding with sample_max_value 1 IS the clip.
    Without it the solver is far off: this random model's x0 reaches |x0| >> 1 at t = 99."""
    model, (x_T, cond) = MLPDenoiser(), inputs()
    sched = ddim(timestep_spacing="trailing")  # k divides 100: the solver's and DDIM's steps coincide
    ref = ddim_loop(model, x_T, cond, sched, k, use_clipped_model_output=True)
    kw = {"disable_corrector": list(range(k))} if name == "unipc" else {}
    x, st = sample_with_scheduler(model, x_T, cond, scheduler=solver_scheduler(name, sched, solver_order=1, **kw),
                                  num_steps=k)
    assert close(x, ref, 1e-5) and st.iterations == k
    raw, _ = sample_with_scheduler(model, x_T, cond, num_steps=k,
                                   scheduler=solver_scheduler(name, sched, solver_order=1, clip=False, **kw))
    assert (raw - ref).abs().max() > 1


def test_thresholding_with_sample_max_value_1_is_a_fixed_clip():
    x0 = torch.randn(6, 8, 2) * torch.tensor([0.1, 0.5, 1.0, 3.0, 50.0, 200.0]).view(-1, 1, 1)
    s = solver_scheduler("dpmsolver++", ddpm())
    assert torch.equal(s._threshold_sample(x0), x0.clamp(-1, 1))
    dynamic = solver_scheduler("dpmsolver++", ddpm(), clip=False, thresholding=True, sample_max_value=2.0)
    assert not torch.allclose(dynamic._threshold_sample(x0), x0.clamp(-1, 1))  # dynamic: rescaled per sample


def test_solver_keeps_the_models_schedule_and_refuses_what_it_cannot_reproduce():
    sched = ddpm()  # timestep_spacing "leading" by default
    for name in ("dpmsolver++", "unipc"):
        s = solver_scheduler(name, sched)
        assert torch.equal(s.alphas_cumprod, sched.alphas_cumprod)
        assert s.config.timestep_spacing == "leading" and s.config.prediction_type == "epsilon"
        assert s.config.thresholding and s.config.sample_max_value == 1.0 and s.config.solver_order == 2
    # diffusers' from_config drops default-valued keys, so a user's from_config gets linspace and no clip
    assert DPMSolverMultistepScheduler.from_config(sched.config).config.timestep_spacing == "linspace"
    with pytest.raises(ValueError, match="clip_sample_range"):
        solver_scheduler("dpmsolver++", ddpm(clip_sample_range=2.0))
    with pytest.raises(ValueError, match="unknown solver"):
        solver_scheduler("dpm", ddpm())
    with pytest.raises(ValueError, match="solver_scheduler"):
        make_sampler("unipc", ddpm(), k=3)
    with pytest.raises(ValueError, match="needs k"):  # the default T = 50 under leading spacing starts at t = 50
        SamplerSpec.named("dpmsolver++")


@pytest.mark.parametrize("name", ["dpmsolver++", "unipc"])
def test_sampler_names_take_k_steps_and_are_deterministic(name):
    model, (x_T, cond) = MLPDenoiser(), inputs()
    s = make_any_sampler(name, ddpm(), k=5)
    gens = [torch.Generator().manual_seed(i) for i in range(len(x_T))]  # a rollout passes per-row generators
    a, st = s(model, x_T, cond, generator=gens)
    b, _ = s(model, x_T, cond)
    assert torch.equal(a, b) and st.iterations == 5 and torch.isfinite(a).all()
    assert SamplerSpec.from_dict(s.spec.to_dict()) == s.spec


@pytest.mark.slow
def test_pusht_solvers_stay_finite_and_approach_ddim50_while_from_config_diverges():
    from pcm_policy.pusht.checkpoint import load_policy
    from pcm_policy.pusht.pct_data import pixel_distance
    from pcm_policy.pusht.peers import reset_conditions

    policy = load_policy(ROOT / "checkpoints/pusht_base")
    cond = reset_conditions(policy, range(400_000, 400_004))
    x_T = torch.randn(4, policy.cfg.horizon, policy.cfg.action_dim, generator=torch.Generator().manual_seed(0))
    ref, _ = make_sampler("ddim", policy.noise_scheduler)(policy.model_fn, x_T, cond)
    px = pixel_distance(policy)
    for name in ("dpmsolver++", "unipc"):
        d = {k: px(make_any_sampler(name, policy.noise_scheduler, k=k)(policy.model_fn, x_T, cond)[0], ref).mean()
             for k in (2, 5, 20)}
        assert d[20] < d[5] < d[2] < 50, d  # px; the action range is ~500 px
    naive = DPMSolverMultistepScheduler.from_config(policy.noise_scheduler.config)
    x, _ = sample_with_scheduler(policy.model_fn, x_T, cond, scheduler=naive, num_steps=5)
    assert px(x, ref).mean() > 1000  # x0 at t = 99 is ~1e2 unclipped (abar(99) ~ 1e-4)
