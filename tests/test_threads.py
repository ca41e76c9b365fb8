"""ThreadPolicy: same output as the wrapped denoiser, thread count chosen per call width and restored."""

import pytest
import torch
from diffusers import DDIMScheduler

from pcm_policy import paper  # noqa: F401  (registers the feature space one test mixes in)
from pcm_policy.lora import add_lora
from pcm_policy.pusht.policy import DiffusionPolicy, PolicyConfig
from pcm_policy.sampling import (
    Switch,
    ThreadPolicy,
    num_threads,
    sample_pcm,
    sample_picard,
    sample_sequential,
    step_grid,
    switch_cost_us,
)


@pytest.fixture(autouse=True)
def one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    cfg = PolicyConfig(unet_size="small", unet=dict(down_dims=(16, 32, 64), diffusion_step_embed_dim=32))
    return DiffusionPolicy(cfg).eval()


def rows(policy, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, policy.cfg.horizon, policy.cfg.action_dim, generator=g)
    t = torch.randint(0, policy.cfg.num_train_timesteps, (n,), generator=g)
    return x, t, torch.randn(n, policy.cfg.obs_dim * policy.cfg.n_obs_steps, generator=g)


class Spy:
    """A denoiser that records the thread count it ran under."""

    def __init__(self, fail=False):
        self.seen, self.kw, self.fail = [], [], fail

    def __call__(self, x, t, cond, **kw):
        self.seen.append(torch.get_num_threads())
        self.kw.append(kw)
        if self.fail:
            raise RuntimeError("boom")
        return torch.zeros_like(x)


def test_threads_chosen_by_rows_and_restored():
    spy = Spy()
    d = ThreadPolicy(spy, narrow_threads=1, wide_threads=2, switch_rows=4)
    x = torch.zeros(3, 16, 2)
    for n in (1, 3, 4, 50, 2):
        d(torch.zeros(n, 16, 2), torch.zeros(n, dtype=torch.long), None)
        assert torch.get_num_threads() == 1
    assert spy.seen == [1, 1, 2, 2, 1]
    assert d.calls == 5 and d.switches == 2
    assert d.threads_for(3) == 1 and d.threads_for(4) == 2
    torch.set_num_threads(2)  # the count in force before the call is restored, whatever it was
    d(x, torch.zeros(3, dtype=torch.long), None)
    assert spy.seen[-1] == 1 and torch.get_num_threads() == 2


def test_none_leaves_the_count_alone():
    spy = Spy()
    d = ThreadPolicy(spy, narrow_threads=None, wide_threads=None)
    d(torch.zeros(50, 2), torch.zeros(50, dtype=torch.long), None)
    d(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), None)
    assert spy.seen == [1, 1] and d.switches == 0


def test_restored_on_exception():
    d = ThreadPolicy(Spy(fail=True), narrow_threads=2, wide_threads=2)
    for n in (1, 50):
        with pytest.raises(RuntimeError, match="boom"):
            d(torch.zeros(n, 2), torch.zeros(n, dtype=torch.long), None)
        assert torch.get_num_threads() == 1
    with pytest.raises(RuntimeError, match="boom"), num_threads(2):
        assert torch.get_num_threads() == 2
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 1


def test_kwargs_pass_through():
    spy = Spy()
    scale = torch.ones(8)
    ThreadPolicy(spy)(torch.zeros(8, 2), torch.zeros(8, dtype=torch.long), None, lora_scale=scale)
    assert spy.kw == [{"lora_scale": scale}]


@pytest.mark.parametrize("bad", [dict(narrow_threads=0), dict(wide_threads=1.5), dict(switch_rows=0)])
def test_bad_settings(bad):
    with pytest.raises(ValueError):
        ThreadPolicy(Spy(), **bad)
    with pytest.raises(ValueError, match="callable"):
        ThreadPolicy(None)


@pytest.mark.parametrize("n", [1, 3, 4, 50])
def test_same_output_as_the_unwrapped_denoiser(policy, n):
    x, t, c = rows(policy, n)
    with torch.no_grad():
        ref = policy.model_fn(x, t, c)
        out = ThreadPolicy(policy.model_fn, narrow_threads=1, wide_threads=2, switch_rows=4)(x, t, c)
    assert torch.get_num_threads() == 1
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    if n < 4:  # same thread count: the very same computation
        assert torch.equal(out, ref)


def test_samplers_unchanged(policy):
    x_T, _, c = rows(policy, 2, seed=1)
    kw = dict(grid=step_grid(DDIMScheduler.from_config(policy.noise_scheduler.config), 20, solver="ddim"))
    d = ThreadPolicy(policy.model_fn, narrow_threads=1, wide_threads=2, switch_rows=4)
    ref, _ = sample_sequential(policy.model_fn, x_T, c, **kw)
    out, _ = sample_sequential(d, x_T, c, **kw)
    assert torch.equal(out, ref) and d.switches == 0  # 2-row calls stay narrow
    ref, _ = sample_picard(policy.model_fn, x_T, c, window=20, tol=0.0, **kw)
    same, _ = sample_picard(ThreadPolicy(policy.model_fn, 1, 1), x_T, c, window=20, tol=0.0, **kw)
    assert torch.equal(same, ref)
    out, _ = sample_picard(d, x_T, c, window=20, tol=0.0, **kw)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert d.switches > 0 and torch.get_num_threads() == 1


def test_pcm_lora_scale_reaches_the_adapter():
    torch.manual_seed(0)
    cfg = PolicyConfig(unet_size="small", unet=dict(down_dims=(16, 32, 64), diffusion_step_embed_dim=32))
    pol = DiffusionPolicy(cfg).eval()
    add_lora(pol.model)
    with torch.no_grad():
        for name, p in pol.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    x_T, _, c = rows(pol, 1, seed=2)
    kw = dict(grid=step_grid(pol.noise_scheduler, 10, solver="ddim"), tol=0.0, max_iters=3)
    for space in ("weight", "feature"):  # feature: the paper's mixing (pcm_policy.paper, registered on import)
        kw["schedule"] = Switch(1, 3, space)
        ref, _ = sample_pcm(pol.model_fn, x_T, c, **kw)
        same, _ = sample_pcm(ThreadPolicy(pol.model_fn, 1, 1), x_T, c, **kw)
        assert torch.equal(same, ref)  # same threads: bitwise, so lora_scale arrives unchanged
        out, _ = sample_pcm(ThreadPolicy(pol.model_fn, 1, 2), x_T, c, **kw)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # truncated iterates: |x| up to ~10
    assert torch.get_num_threads() == 1


def test_switch_cost_is_measured_and_restores():
    us = switch_cost_us(1, 2, n=20)
    assert us >= 0 and torch.get_num_threads() == 1
