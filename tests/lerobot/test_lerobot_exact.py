"""Exactness against lerobot itself: the core's samplers on a lerobot DiffusionPolicy (built by lerobot, random
weights) at tol 0 give lerobot's own ``conditional_sample`` (normalised actions, 1e-5), DDIM and DDPM alike."""

import pytest

pytest.importorskip("lerobot.policies.diffusion")  # not "lerobot": tests/lerobot/ itself is a namespace "lerobot"

import torch  # noqa: E402
from lerobot_build import build_policy, obs_batch  # noqa: E402

from pcm_policy import lora  # noqa: E402
from pcm_policy.lerobot.adapter import LerobotDiffusion  # noqa: E402
from pcm_policy.sampling import SamplerSpec, Switch  # noqa: E402

TOL = 1e-5
B = 2
# (scheduler, horizon, inference steps (None: lerobot's default, all 100), image); the default run keeps to
# the cheap ones, the slow run covers DDPM-100 (100 Picard iterations) at both horizons and with an image
FAST = [("DDIM", 16, 10, False), ("DDIM", 64, 10, False), ("DDIM", 16, 10, True), ("DDPM", 16, 20, False)]
SLOW = [("DDPM", 16, None, False), ("DDPM", 64, None, False), ("DDPM", 16, None, True)]
CASES = FAST + [pytest.param(*c, marks=pytest.mark.slow) for c in SLOW]


def random_lora(adapter, seed=3):
    """A random LoRA adapter (nonzero lora_B) on every conv / FiLM layer of the policy's UNet."""
    lora.add_lora(adapter.network, rank=4, alpha=4, target_modules=adapter.lora_targets)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.lora_parameters(adapter.network):
            p.copy_(0.2 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("scheduler,horizon,steps,image", CASES)
def test_samplers_at_tol_0_equal_lerobots_conditional_sample(scheduler, horizon, steps, image):
    policy = build_policy(scheduler, horizon, steps, image)
    a = LerobotDiffusion(policy)
    assert a.solver == scheduler.lower() and a.num_steps == (steps or 100)
    cond = a.condition(obs_batch(policy, B, seed=1))
    x_T = a.draw_x_T(B, torch.Generator().manual_seed(2))
    assert x_T.shape == (B, horizon, 2)

    def gen():  # DDPM's step noise: lerobot's scheduler.step and draw_step_noise read the same stream
        return torch.Generator().manual_seed(4)

    with torch.no_grad():
        ref = policy.diffusion.conditional_sample(B, global_cond=cond, generator=gen(), noise=x_T)
    seq, _ = a.sample(a.sampler("ddim"), cond, x_T=x_T, generator=gen())  # sequential on the policy's own grid
    assert (seq - ref).abs().max().item() <= 1e-6
    for name in ("picard", "taa"):
        x, stats = a.sample(a.sampler(name, tol=0.0), cond, x_T=x_T, generator=gen())
        assert stats.converged and (x - ref).abs().max().item() <= TOL, name

    random_lora(a)
    t = torch.full((B,), int(a.scheduler.config.num_train_timesteps) // 2)
    assert (a.model_fn(x_T, t, cond, lora_scale=1.0) - a.model_fn(x_T, t, cond)).abs().max() > 1e-2  # it is live
    pcm = SamplerSpec("pcm", num_steps=a.num_steps, tol=0.0, switch=Switch(1, 3))
    x, stats = a.sample(a.sampler(pcm), cond, x_T=x_T, generator=gen())
    assert stats.lambdas[:3] == [1.0, 1.0, 0.5] and stats.lambdas[-1] == 0.0
    assert stats.converged and (x - ref).abs().max().item() <= TOL
    first_pcm, _ = a.sample(a.sampler(pcm.replace(k=1)), cond, x_T=x_T, generator=gen())
    first_picard, _ = a.sample(a.sampler("picard", k=1, tol=0.0), cond, x_T=x_T, generator=gen())
    assert (first_pcm - first_picard).abs().max() > 1e-3  # the adapter moved the early iterates


@pytest.mark.parametrize("image", [False, True])
def test_condition_is_lerobots_own(image):
    """predict_action_chunk on an observation batch (lerobot's offline path) = the adapter's chunk on
    ``condition(batch)``, sliced to the executed actions."""
    policy = build_policy("DDIM", 16, 10, image)
    a = LerobotDiffusion(policy)
    batch = obs_batch(policy, B, seed=5)
    x_T = a.draw_x_T(B, torch.Generator().manual_seed(6))
    ref = policy.predict_action_chunk(batch, noise=x_T)
    x, _ = a.sample(a.sampler("picard", tol=0.0), a.condition(batch), x_T=x_T)
    assert ref.shape == (B, 8, 2) and (x[:, a.action_slice] - ref).abs().max().item() <= TOL


def test_ddpm_draws_follow_lerobots_rng():
    """With no generator (select_action's case) x_T and DDPM's step noise come from torch's global RNG in
    lerobot's order, and leave it where lerobot leaves it."""
    policy = build_policy("DDPM", 16, 20)
    a = LerobotDiffusion(policy)
    cond = a.condition(obs_batch(policy, B, seed=7))
    torch.manual_seed(8)
    with torch.no_grad():
        ref = policy.diffusion.conditional_sample(B, global_cond=cond)
    after_ref = torch.randn(3)
    torch.manual_seed(8)
    x, _ = a.sample(a.sampler("taa", tol=0.0), cond)
    assert (x - ref).abs().max().item() <= TOL and torch.equal(torch.randn(3), after_ref)
    noise = a.draw_step_noise(a.sampler("ddim").grid, x)
    assert noise.shape == (20, B, 16, 2) and torch.equal(noise[-1], torch.zeros_like(x))  # no draw at t = 0


def test_lora_targets_and_per_row_scale():
    policy = build_policy("DDIM", 16, 10)
    a = LerobotDiffusion(policy)
    kinds = {type(a.network.get_submodule(n)).__name__ for n in a.lora_targets}
    assert kinds == {"Conv1d", "Linear"}
    assert any(n.endswith("cond_encoder.1") for n in a.lora_targets)  # FiLM
    random_lora(a)
    assert sorted({n.removesuffix(".base_layer") for n in LerobotDiffusion(policy).lora_targets}) == a.lora_targets
    x = torch.randn(3, 16, 2)
    t, cond = torch.tensor([90, 50, 10]), a.condition(obs_batch(policy, 3))
    rows = a.model_fn(x, t, cond, lora_scale=torch.tensor([0.0, 1.0, 0.4]))
    for i, lam in enumerate((0.0, 1.0, 0.4)):
        assert torch.allclose(rows[i], a.model_fn(x, t, cond, lora_scale=lam)[i], atol=1e-6)
    lora.remove_lora(a.network)
    assert not lora.has_lora(policy.diffusion.unet)


@pytest.mark.slow
@pytest.mark.parametrize("horizon,image", [(64, True), (16, False)])
def test_ddim_100_is_exact_in_float64(horizon, image):
    """DDIM-100 (lerobot's default inference steps) on a random network amplifies float32 rounding: evaluating
    lerobot's own sampler with one row instead of two already moves its actions by ~2e-5 (docs), so a parallel
    sampler, which batches rows differently, cannot match it to 1e-5 in float32. The two exactness facts behind
    it are tested tightly instead: the core's sequential DDIM is lerobot's ``conditional_sample`` bit for bit
    (float32), and Picard / TAA / PCM at tol 0 equal that sequential DDIM to 1e-9 in float64."""
    policy = build_policy("DDIM", horizon, None, image)
    a = LerobotDiffusion(policy)
    assert a.num_steps == 100
    batch = obs_batch(policy, B, seed=1)
    cond, x_T = a.condition(batch), a.draw_x_T(B, torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = policy.diffusion.conditional_sample(B, global_cond=cond, noise=x_T)
    seq, _ = a.sample(a.sampler("ddim"), cond, x_T=x_T)
    assert torch.equal(seq, ref)

    policy.double()
    cond64, x64 = a.condition({k: v.double() for k, v in batch.items()}), x_T.double()
    seq64, _ = a.sample(a.sampler("ddim"), cond64, x_T=x64)
    assert seq64.dtype == torch.float64 and (seq64 - ref).abs().max() < 1e-3
    for name in ("picard", "taa"):
        x, stats = a.sample(a.sampler(name, tol=0.0), cond64, x_T=x64)
        assert stats.converged and (x - seq64).abs().max().item() <= 1e-9, name
    random_lora(a)
    pcm = SamplerSpec("pcm", num_steps=100, tol=0.0, switch=Switch(1, 3))
    x, stats = a.sample(a.sampler(pcm), cond64, x_T=x64)
    assert stats.converged and (x - seq64).abs().max().item() <= 1e-9
