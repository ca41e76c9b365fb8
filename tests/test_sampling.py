"""Property tests of the sampler core against diffusers and against sequential sampling."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import (
    DDIMParallelScheduler,
    DDIMScheduler,
    DDPMParallelScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
)
from torch import nn

from pcm_policy.sampling import (
    TAA,
    Jump,
    SamplerSpec,
    Switch,
    ddim_step,
    hard_switch,
    initial_trajectory,
    linear_schedule,
    sample_newton,
    sample_pcm,
    sample_picard,
    sample_sequential,
    sample_with_scheduler,
    step_grid,
)

SHAPE, COND, T = (8, 2), 3, 12  # a small action chunk (horizon 8, 2-D actions)
SCHED = dict(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")  # the PushT noise schedule


def ddim(**kw):
    return DDIMScheduler(**{**SCHED, "clip_sample": True, **kw})


def ddpm(**kw):
    return DDPMScheduler(**{**SCHED, "clip_sample": True, **kw})


def temb(t: torch.Tensor, dim: int = 8) -> torch.Tensor:
    f = torch.exp(-math.log(1000.0) * torch.arange(dim // 2) / (dim // 2))
    a = t.float()[:, None] * f
    return torch.cat([a.sin(), a.cos()], 1)


class MLPDenoiser(nn.Module):
    """eps = net(x, t, cond) + lora_scale * delta(x, t, cond): the adapter is a random delta network."""

    def __init__(self, seed: int = 0, delta_gain: float = 3.0):
        super().__init__()
        torch.manual_seed(seed)
        d = math.prod(SHAPE) + 8 + COND
        self.net = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, math.prod(SHAPE)))
        self.delta = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, math.prod(SHAPE)))
        with torch.no_grad():
            for p in self.delta.parameters():
                p.mul_(delta_gain)
        self.scales: list = []

    def forward(self, x, t, cond, lora_scale=None):
        h = torch.cat([x.flatten(1), temb(t), cond], 1)
        out = self.net(h)
        if lora_scale is not None:
            self.scales.append(lora_scale)
            s = lora_scale.view(-1, 1) if torch.is_tensor(lora_scale) else lora_scale
            out = out + s * self.delta(h)
        return out.view_as(x)


class ConvDenoiser(nn.Module):
    """Conv1d over the horizon with FiLM from (t, cond); takes cond as a dict."""

    def __init__(self, seed: int = 1):
        super().__init__()
        torch.manual_seed(seed)
        self.c1, self.c2 = nn.Conv1d(2, 16, 3, padding=1), nn.Conv1d(16, 2, 3, padding=1)
        self.film = nn.Linear(8 + COND, 32)

    def forward(self, x, t, cond):
        s, b = self.film(torch.cat([temb(t), cond["obs"]], 1)).chunk(2, 1)
        h = torch.tanh(self.c1(x.transpose(1, 2)) * (1 + s[..., None]) + b[..., None])
        return self.c2(h).transpose(1, 2)


def gaussian_denoiser(scheduler, std: float = 0.5):
    """Optimal eps for data x0 ~ N(mu(cond), std^2): linear in x."""
    ac = scheduler.alphas_cumprod
    w = torch.linspace(-0.5, 0.5, COND * 2).view(COND, 2)

    def denoise(x, t, cond):
        a = ac[t].view(-1, 1, 1)
        mu = (cond @ w)[:, None, :]
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * std**2 + 1 - a)

    return denoise


def inputs(batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *SHAPE, generator=g), torch.randn(batch, COND, generator=g)


def close(a, b, atol=1e-5):
    return torch.allclose(a, b, atol=atol, rtol=0)


# ---------------------------------------------------------------- the step, against diffusers


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n_train,n", [(100, 50), (100, 12), (1000, 50), (100, 8), (1000, 3), (100, 100)])
@pytest.mark.parametrize("offset", [0, 1])
def test_timesteps_match_diffusers(spacing, n_train, n, offset):
    for cls in (DDIMScheduler, DDPMScheduler):
        s = cls(num_train_timesteps=n_train, timestep_spacing=spacing, steps_offset=offset)
        if spacing == "leading" and offset and n == n_train:
            continue  # diffusers itself would index past the schedule
        s.set_timesteps(n)
        assert step_grid(s, n).timesteps.tolist() == s.timesteps.tolist()


@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_matches_diffusers_step(pred, clip, eta):
    s = ddim(prediction_type=pred, clip_sample=clip)
    s.set_timesteps(T)
    g = step_grid(s, T, eta=eta)
    x, out, z = (torch.randn(T, 4, *SHAPE) * 1.5 for _ in range(3))
    idx = torch.arange(T).repeat_interleave(4)
    ours = ddim_step(g, x.flatten(0, 1), out.flatten(0, 1), idx).view_as(x)
    ours = ours + g.std.view(-1, 1, 1, 1) * z
    for i, t in enumerate(s.timesteps):
        ref = s.step(out[i], t, x[i], eta=eta, variance_noise=z[i] if eta else None).prev_sample
        assert close(ours[i], ref, 1e-6)


@pytest.mark.parametrize("cls", [DDIMParallelScheduler, DDPMParallelScheduler])
def test_step_matches_batch_step_no_noise(cls):
    s = cls(**SCHED, clip_sample=True)
    s.set_timesteps(T)
    x, out = torch.randn(2 * T, *SHAPE), torch.randn(2 * T, *SHAPE)
    idx = torch.randperm(2 * T) % T
    ref = s.batch_step_no_noise(out, s.timesteps[idx], x)
    assert close(ddim_step(step_grid(s, T), x, out, idx), ref, 1e-6)


@pytest.mark.parametrize("make", [ddim, ddpm])
def test_sequential_matches_diffusers_loop(make):
    model, (x_T, cond) = MLPDenoiser(), inputs()
    s = make()
    s.set_timesteps(T)
    x, gen = x_T, torch.Generator().manual_seed(5)
    with torch.no_grad():
        for t in s.timesteps:
            x = s.step(model(x, t.repeat(len(x)), cond), t, x, generator=gen).prev_sample
    ours, stats = sample_sequential(model, x_T, cond, grid=step_grid(make(), T),
                                    generator=torch.Generator().manual_seed(5))
    assert close(ours, x, 1e-5) and stats.nfe == T


def test_sample_with_scheduler_dpm_solver():
    model, (x_T, cond) = MLPDenoiser(), inputs()
    s = DPMSolverMultistepScheduler(**SCHED)
    s.set_timesteps(T)
    x = x_T
    with torch.no_grad():
        for t in s.timesteps:
            x = s.step(model(x, t.repeat(len(x)), cond), t, x).prev_sample
    ours, stats = sample_with_scheduler(model, x_T, cond, scheduler=DPMSolverMultistepScheduler(**SCHED),
                                        num_steps=T)
    assert close(ours, x, 1e-6) and stats.iterations == T


def test_truncate_is_the_kth_position():
    model, (x_T, cond) = MLPDenoiser(), inputs()
    _, full = sample_sequential(model, x_T, cond, grid=step_grid(ddim(), T), return_trajectory=True)
    x5, stats = sample_sequential(model, x_T, cond, grid=step_grid(ddim(), T), truncate=5)
    assert close(x5, full.trajectory[5], 0) and stats.iterations == 5 and not stats.converged


# ---------------------------------------------------------------- Picard exactness


def denoisers():
    s = ddim(clip_sample=False)
    return [
        ("mlp", MLPDenoiser(), ddim(), lambda c: c),
        ("conv", ConvDenoiser(), ddim(), lambda c: {"obs": c}),
        ("gaussian", gaussian_denoiser(s), s, lambda c: c),
    ]


@pytest.mark.parametrize("case", range(3))
def test_picard_full_window_tol0_equals_sequential(case, update=None):
    """(``update``: another Picard update rule with the same fixed point, ``test_paper_variants.py``.)"""
    _, model, s, wrap = denoisers()[case]
    x_T, cond = inputs()
    seq, _ = sample_sequential(model, x_T, wrap(cond), grid=step_grid(s, T), return_trajectory=True)
    x, stats = sample_picard(model, x_T, wrap(cond), grid=step_grid(s, T), window=T, tol=0.0,
                             return_iterates=True, **({} if update is None else {"update": update}))
    assert close(x, seq, 1e-5)
    assert stats.iterations <= T and len(stats.residuals) == stats.iterations
    assert stats.nfe <= T * (T + 1) // 2
    _, st = sample_sequential(model, x_T, wrap(cond), grid=step_grid(s, T), return_trajectory=True)
    for k, Xk in enumerate(stats.iterates):  # triangular exactness: positions 0..k exact after k iterations
        assert close(Xk[: k + 1], st.trajectory[: k + 1], 1e-5), k


@pytest.mark.parametrize("window", [1, 3, 5, T + 4])
def test_sliding_window_equals_sequential(window):
    model, (x_T, cond) = MLPDenoiser(), inputs()
    seq, _ = sample_sequential(model, x_T, cond, grid=step_grid(ddim(), T))
    x, stats = sample_picard(model, x_T, cond, grid=step_grid(ddim(), T), window=window, tol=0.0)
    assert close(x, seq, 1e-5) and stats.iterations <= T
    x, stats = sample_picard(model, x_T, cond, grid=step_grid(ddim(), T), window=window, tol=0.03)
    assert stats.iterations <= T and (x - seq).abs().max() < 0.05  # per sample: 0.1 leaves one sample 0.19 off


@pytest.mark.parametrize("case", range(3))
@pytest.mark.parametrize("window,init", [(None, None), (None, "prior"), (5, None)])
@pytest.mark.parametrize("m", [2, 4])
def test_anderson_keeps_the_fixed_point_and_triangular_exactness(case, window, init, m):
    """TAA moves only positions after the anchor: tol 0 gives sequential DDIM, the first k positions are
    exact after k iterations, at most T iterations; and it does change the iterates (it is active)."""
    _, model, s, wrap = denoisers()[case]
    x_T, cond = inputs()
    _, st = sample_sequential(model, x_T, wrap(cond), grid=step_grid(s, T), return_trajectory=True)
    kw = dict(grid=step_grid(s, T), window=window, tol=0.0, init=init, return_iterates=True)
    x, stats = sample_picard(model, x_T, wrap(cond), taa=TAA(memory=m), **kw)
    assert close(x, st.trajectory[T], 1e-5) and stats.iterations <= T
    for k, Xk in enumerate(stats.iterates):
        assert close(Xk[: k + 1], st.trajectory[: k + 1], 1e-5), k
    _, plain = sample_picard(model, x_T, wrap(cond), **kw)
    assert (stats.iterates[3] - plain.iterates[3]).abs().max() > 1e-4


@pytest.mark.parametrize("w,beta", [(0.0, 1.0), (1.0, 1.0), (1.0, 0.8)])
def test_anderson_step_is_the_weighted_triangular_least_squares(w, beta):
    """Position j's correction is (1 - beta) R_j + sum_n gamma[n] (dX[n] + beta dR[n]), gamma the least-squares fit
    of the last residual by the residual differences over positions i <= j, each scaled by weight_i (solved
    directly here); with no difference yet it is (1 - beta) R_j (None when beta = 1)."""
    from pcm_policy.sampling.picard import _anderson

    g = torch.Generator().manual_seed(3)
    L, B, m = 6, 2, 3
    hist = [(torch.randn(L + 1, B, *SHAPE, generator=g), torch.randn(L + 1, B, *SHAPE, generator=g)) for _ in range(m)]
    weight = torch.rand(L + 1, generator=g) ** w
    win = torch.ones(L, B, dtype=torch.bool)  # every position in every sample's window
    corr = _anderson(hist, torch.full((L + 1, B), m), win, 0.0, weight, beta)
    X, R = (torch.stack([h[i][1:] for h in hist]).flatten(3).double() for i in (0, 1))  # (m, L, B, d)
    dX, dR = X[1:] - X[:-1], R[1:] - R[:-1]
    wt = weight[1:].double().view(-1, 1)
    for j in range(L):
        for b in range(B):
            A = (dR[:, : j + 1, b] * wt[: j + 1]).reshape(m - 1, -1).T  # rows: (position i <= j, element)
            gamma = torch.linalg.lstsq(A, (R[-1, : j + 1, b] * wt[: j + 1]).reshape(-1, 1)).solution[:, 0]
            want = torch.einsum("p,pd->d", gamma, dX[:, j, b] + beta * dR[:, j, b]) + (1 - beta) * R[-1, j, b]
            assert close(corr[j, b].flatten().double(), want, 1e-4), (j, b)
    first = _anderson(hist[:1], torch.ones(L + 1, B, dtype=torch.long), win, 0.0, weight, beta)
    assert first is None if beta == 1.0 else close(first, (1 - beta) * hist[0][1][1:], 1e-6)


def test_anderson_weight_and_mixing_change_the_path_not_the_fixed_point():
    model, (x_T, cond) = MLPDenoiser(seed=5), inputs()
    seq, _ = sample_sequential(model, x_T, cond, grid=step_grid(ddim(), T))
    kw = dict(grid=step_grid(ddim(), T), tol=0.0, init="prior", return_iterates=True)
    runs = [sample_picard(model, x_T, cond, taa=TAA(memory=3, weight=w, mixing=beta), **kw)
            for w, beta in ((0.0, 1.0), (1.0, 1.0), (1.0, 0.8))]
    for x, _ in runs:
        assert close(x, seq, 1e-5)
    for (_, a), (_, b) in zip(runs, runs[1:], strict=False):
        assert (a.iterates[4] - b.iterates[4]).abs().max() > 1e-4


def test_pcm_with_anderson_equals_sequential(space="weight"):
    model, (x_T, cond) = MLPDenoiser(seed=7), inputs()
    seq, _ = sample_sequential(model, x_T, cond, grid=step_grid(ddim(), T))
    x, _ = sample_pcm(model, x_T, cond, grid=step_grid(ddim(), T), schedule=Switch(1, 3, space), tol=0.0,
                      taa=TAA(memory=3))
    assert close(x, seq, 1e-5)


def test_tolerance_stops_early_and_max_iters_caps():
    model, (x_T, cond) = MLPDenoiser(), inputs()
    seq, _ = sample_sequential(model, x_T, cond, grid=step_grid(ddim(), T))
    x, stats = sample_picard(model, x_T, cond, grid=step_grid(ddim(), T), tol=0.03)
    assert stats.iterations < T and stats.converged and (x - seq).abs().max() < 0.05
    x, stats = sample_picard(model, x_T, cond, grid=step_grid(ddim(), T), tol=0.0, max_iters=2,
                             return_trajectory=True)
    assert stats.iterations == 2 and not stats.converged and close(x, stats.trajectory[T], 0)


class RowCounter:
    """A model function that counts the rows it is asked to evaluate."""

    def __init__(self, model):
        self.model, self.rows = model, 0

    def __call__(self, x, t, cond, **kw):
        self.rows += x.shape[0]
        return self.model(x, t, cond, **kw)


PER_SAMPLE = {
    "picard": lambda m, x, c, **kw: sample_picard(m, x, c, **kw),
    "picard-window": lambda m, x, c, **kw: sample_picard(m, x, c, window=4, **kw),
    "taa": lambda m, x, c, **kw: sample_picard(m, x, c, taa=TAA(), init="prior", safeguard=1.0, **kw),
    "pcm": lambda m, x, c, **kw: sample_pcm(m, x, c, schedule=linear_schedule(1, 3), taa=TAA(), **kw),
}


@pytest.mark.parametrize("name", PER_SAMPLE)
def test_per_sample_windows_leave_the_batch_as_they_converge(name):
    """Each sample has its own anchor, window, TAA history and safeguard: at tol 0.1 it ends with the iterations
    and output it has alone, whatever shares the batch; a converged sample's rows are no longer evaluated, so the
    batch costs its slowest sample's iterations and NFE counts the rows evaluated."""
    model, (x_T, cond) = MLPDenoiser(seed=7), inputs(batch=4, seed=1)
    counter, kw = RowCounter(model), dict(grid=step_grid(ddim(), T), tol=0.1)
    x, st = PER_SAMPLE[name](counter, x_T, cond, **kw)
    assert len(set(st.sample_iterations)) > 1 and st.iterations == max(st.sample_iterations)  # they differ here
    assert counter.rows == sum(st.sample_nfe) < 4 * max(st.sample_nfe)  # the early ones stopped being evaluated
    assert st.nfe == pytest.approx(sum(st.sample_nfe) / 4) and st.converged and all(st.sample_converged)
    for i in range(4):
        alone, sa = PER_SAMPLE[name](model, x_T[i:i + 1], cond[i:i + 1], **kw)
        assert close(x[i:i + 1], alone, 1e-5), i
        assert sa.iterations == st.sample_iterations[i] and sa.sample_nfe[0] == st.sample_nfe[i], i


@pytest.mark.parametrize("name", ["picard", "taa", "pcm"])
def test_time_budget(name):
    """budget_s = 0 runs exactly the first iteration (max_iters=1's output, out_of_budget set); a budget that is
    never spent changes nothing."""
    model, (x_T, cond) = MLPDenoiser(seed=7), inputs()
    kw = dict(grid=step_grid(ddim(), T), tol=0.0)
    free, sf = PER_SAMPLE[name](model, x_T, cond, **kw)
    x0, s0 = PER_SAMPLE[name](model, x_T, cond, budget_s=0.0, **kw)
    one, _ = PER_SAMPLE[name](model, x_T, cond, max_iters=1, **kw)
    assert s0.iterations == 1 and s0.out_of_budget and not s0.converged and torch.equal(x0, one)
    big, sb = PER_SAMPLE[name](model, x_T, cond, budget_s=1e9, **kw)
    assert torch.equal(big, free) and sb.iterations == sf.iterations and not sb.out_of_budget and sb.converged
    with pytest.raises(ValueError, match="budget_s"):
        PER_SAMPLE[name](model, x_T, cond, budget_s=-1.0, **kw)


def test_time_budget_newton_and_sampler():
    from pcm_policy.sampling import make_sampler

    model, (x_T, cond) = MLPDenoiser(), inputs()
    x, st = sample_newton(model, x_T, cond, grid=step_grid(ddim(), T), tol=0.0, budget_s=0.0)
    assert st.iterations == 1 and st.out_of_budget and st.sample_iterations == [1, 1, 1]
    _, st = make_sampler("taa", ddim(), num_steps=T)(model, x_T, cond, budget_s=0.0)
    assert st.iterations == 1 and st.out_of_budget
    with pytest.raises(ValueError, match="budget_s"):
        make_sampler("ddim", ddim(), num_steps=T)(model, x_T, cond, budget_s=1.0)


def test_warm_start_from_the_fixed_point_takes_one_iteration():
    model, (x_T, cond) = MLPDenoiser(), inputs()
    seq, st = sample_sequential(model, x_T, cond, grid=step_grid(ddim(), T), return_trajectory=True)
    x, stats = sample_picard(model, x_T, cond, grid=step_grid(ddim(), T), tol=1e-3, init=st.trajectory)
    assert stats.iterations == 1 and close(x, seq, 1e-5)


@pytest.mark.parametrize("window", [None, 4])
def test_prior_init_keeps_the_fixed_point(window):
    """init="prior" starts later positions at sqrt((1-abar_j)/(1-abar_0)) x_T; the output is still sequential's,
    and the first iterate is that trajectory exactly."""
    model, (x_T, cond) = MLPDenoiser(), inputs()
    seq, _ = sample_sequential(model, x_T, cond, grid=step_grid(ddim(), T))
    x, stats = sample_picard(model, x_T, cond, grid=step_grid(ddim(), T), window=window, tol=0.0, init="prior",
                             return_iterates=True)
    assert close(x, seq, 1e-5) and stats.iterations <= T
    grid = step_grid(ddim(), T)
    abar = torch.cat([grid.alpha, grid.alpha_prev[-1:]])
    X0 = stats.iterates[0]
    assert close(X0[0], x_T, 0) and close(X0[T // 2], ((1 - abar[T // 2]) / (1 - abar[0])).sqrt() * x_T, 1e-6)
    xn, _ = sample_newton(model, x_T, cond, grid=step_grid(ddim(), T), tol=0.0, init="prior")
    assert close(xn, seq, 1e-5)
    guess = torch.randn_like(x_T)  # an x0 guess: prior trajectory around it, same fixed point
    x, stats = sample_picard(model, x_T, cond, grid=step_grid(ddim(), T), window=window, tol=0.0, init=guess,
                             return_iterates=True)
    assert close(x, seq, 1e-5) and close(stats.iterates[0][0], x_T, 0)
    j = T // 2
    want = abar[j].sqrt() * guess + ((1 - abar[j]) / (1 - abar[0])).sqrt() * x_T
    assert close(stats.iterates[0][j], want, 1e-6)
    with pytest.raises(ValueError, match="init must be one of"):
        sample_picard(model, x_T, cond, grid=step_grid(ddim(), T), init="zeros")


def _jump_chain(model, grid, x_T, cond, positions, lambdas):
    """The jump's estimates written out step by step: x0 at x_T, then one DDIM step (clipped x0, the model's
    eps) to the next position and x0 there."""
    x, j, outs, e = x_T, positions[0], [], None
    for n, (p, lam) in enumerate(zip(positions, lambdas, strict=True)):
        if n:
            x, j = grid.alpha[p].sqrt() * outs[-1] + (1 - grid.alpha[p]).sqrt() * e, p
        e = model(x, grid.timesteps[j].expand(len(x)), cond, lora_scale=lam)
        outs.append(((x - (1 - grid.alpha[j]).sqrt() * e) / grid.alpha[j].sqrt()).clamp(-1, 1))
    return outs


@pytest.mark.parametrize("taa", [None, TAA()])
def test_jump_is_the_output_until_picard_takes_over_and_keeps_the_fixed_point(taa, space="weight"):
    """A Jump rides on PCM's calls (one more row per running sample): its x0 estimates are the output for
    k < len(positions) + 1, Picard's X[T] from then on; the trajectory is untouched (same iterates as without it),
    so with tol 0 the output is sequential's; each jump row counts one model evaluation, and a budget the jump
    alone answers evaluates only its rows."""
    model, (x_T, cond) = MLPDenoiser(), inputs()
    grid = step_grid(ddim(), T)
    jump = Jump(positions=(0, 5, 9), lambdas=(1.0, 0.0, 0.5))
    want = _jump_chain(model, grid, x_T, cond, jump.positions, jump.lambdas)
    kw = dict(grid=grid, schedule=Switch(0, 2, space), taa=taa, init="prior", tol=0.0)
    for k in (1, 2, 3, 4, 6):
        x, st = sample_pcm(model, x_T, cond, max_iters=k, jump=jump, **kw)
        plain, st0 = sample_pcm(model, x_T, cond, max_iters=k, **kw)
        assert close(x, want[k - 1] if k <= 3 else plain, 1e-5), k
        if k < jump.until:  # the output is the jump's: only its rows are evaluated (a mixed one twice in feature space)
            nfe = sum(2 if space == "feature" and 0 < lam < 1 else 1 for lam in jump.lambdas[:k])
            assert st.sample_nfe == [nfe] * len(x_T) and st.iterations == k
        elif space == "weight":  # one more row per call while the jump runs (feature space doubles mixed calls)
            assert st.sample_nfe == [n + len(jump.positions) for n in st0.sample_nfe]
    seq, _ = sample_sequential(model, x_T, cond, grid=grid)
    x, st = sample_pcm(model, x_T, cond, jump=jump, **kw)
    assert close(x, seq, 1e-5) and st.converged


def test_jump_checks_and_spec():
    model, (x_T, cond) = MLPDenoiser(), inputs()
    grid = step_grid(ddim(), T)
    for bad in (dict(positions=(-1, 4), lambdas=(1, 0)), dict(positions=(0, 4, 4), lambdas=(1, 0, 0)),
                dict(positions=(0, 4), lambdas=(1,)), dict(positions=(0,), lambdas=(2,))):
        with pytest.raises(ValueError, match="Jump"):
            Jump(**bad)
    with pytest.raises(ValueError, match="< T"):
        sample_pcm(model, x_T, cond, grid=grid, schedule=hard_switch(1), jump=Jump((0, T), (1, 0)))
    with pytest.raises(ValueError, match="no adapter"):
        sample_picard(model, x_T, cond, grid=grid, jump=Jump())
    base = _jump_chain(model, grid, x_T, cond, (0, 6), (0.0, 0.0))  # a base-model jump needs no adapter
    x, _ = sample_picard(model, x_T, cond, grid=grid, tol=0.0, max_iters=2, jump=Jump((0, 6), (0, 0)))
    assert close(x, base[1], 1e-5)
    later = _jump_chain(model, grid, x_T, cond, (3, 6), (1.0, 0.0))  # x_T read as a sample at position 3
    for k in (1, 2):
        x, _ = sample_pcm(model, x_T, cond, grid=grid, schedule=hard_switch(1), tol=0.0, max_iters=k,
                          jump=Jump((3, 6), (1, 0)))
        assert close(x, later[k - 1], 1e-5)
    held = Jump((3, 6), (1, 0), hold=2)  # the last estimate stays the output two iterations more
    for k in (3, 4, 5):
        x, st = sample_pcm(model, x_T, cond, grid=grid, schedule=hard_switch(1), tol=0.0, max_iters=k, jump=held)
        plain, _ = sample_pcm(model, x_T, cond, grid=grid, schedule=hard_switch(1), tol=0.0, max_iters=k)
        assert close(x, later[1] if k < held.until else plain, 1e-5), k
        assert st.iterations == (2 if k < held.until else k)  # held without Picard: no call is made for it
    with pytest.raises(ValueError, match="hold"):
        Jump((0,), (1,), hold=-1)
    spec = SamplerSpec.named("pcm", jump=Jump((0, 6), (1, 0), hold=1), k=2, tol=0.0)
    assert SamplerSpec.from_dict(spec.to_dict()) == spec and spec.to_dict()["jump"]["hold"] == 1
    assert "hold" not in spec.replace(jump=Jump((0, 6), (1, 0))).to_dict()["jump"]  # older keys stay valid
    spec = SamplerSpec.named("pcm", jump=Jump((0, 6), (1, 0)), k=2, tol=0.0)
    assert SamplerSpec.from_dict(spec.to_dict()) == spec
    assert json.loads(json.dumps(spec.to_dict())) == spec.to_dict()  # what a JSON cache key reads back
    assert spec.replace(num_steps=25).jump == Jump((0, 3), (1, 0))  # positions follow the grid (6 of 50 -> 3 of 25)
    assert Jump((0, 35, 45), (1, 0, 0)).rescaled(50, 10) == Jump((0, 7, 9), (1, 0, 0))
    assert Jump((0, 1, 2), (1, 0, 0)).rescaled(50, 2) == Jump((0, 1), (1, 0))
    with pytest.raises(ValueError, match="only pcm has an adapter"):
        SamplerSpec.named("taa", jump=Jump())


def test_spec_form_names_the_update_rule_and_keeps_old_keys(monkeypatch):
    """SamplerSpec.form names Picard's update rule in ``FORMS`` (the core's own: "paradigms", left out of to_dict so
    keys written before it stay valid); a name nobody registered is refused, saying where the paper's come from; a
    registered one reaches the samplers (the paper's "chain": ``test_paper_variants.py``)."""
    from pcm_policy.sampling import FORMS, Switch, make_sampler
    from pcm_policy.sampling.picard import paradigms_update

    spec = SamplerSpec.named("pcm", switch=Switch(1, 1), num_steps=T, tol=0.0)
    assert "form" not in spec.to_dict() and SamplerSpec.from_dict(spec.to_dict()) == spec
    monkeypatch.delitem(FORMS, "chain", raising=False)
    with pytest.raises(ValueError, match="pcm_policy.paper"):
        SamplerSpec.named("pcm", form="chain")
    calls = []

    def counted(*a):
        calls.append(1)
        return paradigms_update(*a)

    monkeypatch.setitem(FORMS, "counted", counted)
    model, (x_T, cond) = MLPDenoiser(), inputs()
    x, st = make_sampler(spec.replace(form="counted"), ddim())(model, x_T, cond)
    ref, _ = make_sampler(spec, ddim())(model, x_T, cond)
    assert torch.equal(x, ref) and len(calls) == st.iterations > 0 and spec.replace(form="counted").to_dict()["form"]
    with pytest.raises(ValueError, match="form"):
        SamplerSpec.named("ddim", form="counted")


@pytest.mark.parametrize("make,eta", [(ddpm, 0.0), (ddim, 0.8)])
def test_stochastic_picard_with_presampled_noise_equals_sequential(make, eta, update=None):
    model, (x_T, cond) = MLPDenoiser(), inputs()
    noise = torch.randn(T, *x_T.shape, generator=torch.Generator().manual_seed(3))
    grid = step_grid(make(), T, eta=eta)
    seq, _ = sample_sequential(model, x_T, cond, grid=grid, noise=noise)
    x, stats = sample_picard(model, x_T, cond, grid=grid, window=5, tol=0.0, noise=noise,
                             **({} if update is None else {"update": update}))
    assert close(x, seq, 1e-5) and stats.iterations <= T


def test_safeguard_keeps_the_fixed_point():
    model, (x_T, cond) = MLPDenoiser(), inputs()  # a random network: its Picard iterates blow up
    seq, _ = sample_sequential(model, x_T, cond, grid=step_grid(ddim(), T))
    kw = dict(grid=step_grid(ddim(), T), tol=0.0, return_iterates=True)
    plain, s0 = sample_picard(model, x_T, cond, **kw)
    x, s1 = sample_picard(model, x_T, cond, safeguard=1.0, **kw)
    assert close(x, seq, 1e-5) and close(plain, seq, 1e-5)
    assert max(X.abs().max() for X in s0.iterates) > 50 * x_T.abs().max()
    assert s1.clamped > 0 and max(X.abs().max() for X in s1.iterates) < 1.5 * x_T.abs().max()



def test_safeguard_without_clip_sample_does_nothing():
    # SD and LDM schedulers have no clip_sample: nothing bounds x0, so the safeguard leaves every iterate as is
    model, (x_T, cond) = MLPDenoiser(), inputs()
    grid = step_grid(ddim(clip_sample=False), T)
    seq, _ = sample_sequential(model, x_T, cond, grid=grid)
    _, plain = sample_picard(model, x_T, cond, grid=grid, tol=0.0, return_iterates=True)
    x, st = sample_picard(model, x_T, cond, grid=grid, tol=0.0, safeguard=0.05, return_iterates=True)
    assert close(x, seq, 1e-5) and st.clamped == 0
    assert all(torch.equal(a, b) for a, b in zip(st.iterates, plain.iterates, strict=True))
    with pytest.raises(ValueError, match="safeguard"):
        sample_picard(model, x_T, cond, grid=grid, safeguard=-1.0)


# ---------------------------------------------------------------- PCM and Newton


@pytest.mark.parametrize("schedule", [(2, 5), (3, 3)])
@pytest.mark.parametrize("window", [None, 4])
def test_pcm_reaching_lambda_0_equals_sequential(schedule, window, space="weight"):
    model, (x_T, cond) = MLPDenoiser(seed=7), inputs()
    schedule = Switch(*schedule, space)
    seq, _ = sample_sequential(model, x_T, cond, grid=step_grid(ddim(), T))
    x, stats = sample_pcm(model, x_T, cond, grid=step_grid(ddim(), T), schedule=schedule, window=window, tol=0.0)
    assert close(x, seq, 1e-5)
    assert stats.lambdas[:3] == [schedule(k) for k in range(3)] and stats.lambdas[-1] == 0.0
    if space == "feature" and schedule(3) not in (0.0, 1.0):  # the mix was batched into one call
        assert any(torch.is_tensor(s) and set(s.tolist()) == {0.0, 1.0} for s in model.scales)
    # the adapter matters: without switching, PCM ends elsewhere
    x1, _ = sample_pcm(model, x_T, cond, grid=step_grid(ddim(), T), schedule=lambda k: 1.0, max_iters=T)
    assert (x1 - seq).abs().max() > 1e-2


def test_schedules():
    s = linear_schedule(2, 6)
    assert [s(k) for k in range(8)] == [1, 1, 1, 0.75, 0.5, 0.25, 0, 0]
    assert [hard_switch(2)(k) for k in range(4)] == [1, 1, 0, 0]
    with pytest.raises(ValueError):
        linear_schedule(3, 2)
    model, (x_T, cond) = MLPDenoiser(), inputs()
    with pytest.raises(ValueError, match="never reaches"):
        sample_pcm(model, x_T, cond, grid=step_grid(ddim(), T), schedule=lambda k: 0.5)


def test_newton_linear_denoiser_converges_in_one_iteration():
    s = ddim(clip_sample=False)
    model, (x_T, cond) = gaussian_denoiser(s), inputs()
    _, st = sample_sequential(model, x_T, cond, grid=step_grid(s, T), return_trajectory=True)
    x, stats = sample_newton(model, x_T, cond, grid=step_grid(s, T), tol=1e-3, return_iterates=True)
    assert close(stats.iterates[1], st.trajectory, 1e-5) and stats.iterations == 2
    assert close(x, st.trajectory[-1], 1e-5)


def test_newton_converges_on_a_network():
    model, (x_T, cond) = MLPDenoiser(), inputs()
    seq, _ = sample_sequential(model, x_T, cond, grid=step_grid(ddim(), T))
    x, stats = sample_newton(model, x_T, cond, grid=step_grid(ddim(), T), tol=0.0)
    assert close(x, seq, 1e-5) and stats.iterations <= T
    s = ddim(clip_sample=False)  # smooth F: Newton needs fewer iterations than Picard
    _, picard = sample_picard(model, x_T, cond, grid=step_grid(s, T), tol=1e-3)
    _, newton = sample_newton(model, x_T, cond, grid=step_grid(s, T), tol=1e-3)
    assert newton.iterations < picard.iterations


def test_tolerance_scale_is_the_variance_of_the_step_leaving_each_position():
    from pcm_policy.sampling.picard import tol_scale

    g = step_grid(ddim(), T)
    scale = tol_scale(g)
    assert len(scale) == T + 1 and close(scale[1:T - 1], g.var[1:T - 1], 0)
    assert g.var[-1] == 0 and scale[T] == scale[T - 1] == g.var[g.var > 0].min()


# ---------------------------------------------------------------- argument checks


def test_bad_arguments_raise_clear_errors():
    model, (x_T, cond) = MLPDenoiser(), inputs()
    kw = dict(grid=step_grid(ddim(), T))
    with pytest.raises(ValueError, match="memory"):
        TAA(memory=1)
    with pytest.raises(ValueError, match="weight"):
        TAA(weight=-1.0)
    with pytest.raises(ValueError, match="mixing"):
        TAA(mixing=0.0)
    with pytest.raises(ValueError, match="taa must be"):
        sample_picard(model, x_T, cond, taa=3, **kw)
    with pytest.raises(ValueError, match="window"):
        sample_picard(model, x_T, cond, window=0, **kw)
    with pytest.raises(ValueError, match="tol"):
        sample_picard(model, x_T, cond, tol=-1.0, **kw)
    with pytest.raises(ValueError, match="init"):
        sample_picard(model, x_T, cond, init=torch.zeros(T, *x_T.shape), **kw)
    with pytest.raises(ValueError, match="rows"):
        sample_picard(model, x_T, cond[:2], **kw)
    with pytest.raises(ValueError, match="update"):
        sample_picard(model, x_T, cond, update="jacobi", **kw)
    with pytest.raises(ValueError, match="shaped like x"):
        sample_sequential(lambda x, t, c: x[:, :1], x_T, cond, **kw)
    with pytest.raises(ValueError, match="noise"):
        sample_sequential(model, x_T, cond, grid=step_grid(ddpm(), T), noise=torch.zeros(3))
    with pytest.raises(ValueError, match="num_steps"):
        sample_sequential(model, x_T, cond, grid=step_grid(ddim(), 101))
    with pytest.raises(ValueError, match="space"):
        Switch(1, 1, "both")
    with pytest.raises(ValueError, match="solver"):
        step_grid(DPMSolverMultistepScheduler(), T)


def test_non_finite_settings_are_refused_naming_the_setting():
    """--tol nan ran 50 iterations per chunk and --tol inf one: every non-finite setting is refused."""
    model, (x_T, cond) = MLPDenoiser(), inputs()
    kw = dict(grid=step_grid(ddim(), T))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tol must be a finite number"):
            sample_picard(model, x_T, cond, tol=bad, **kw)
        with pytest.raises(ValueError, match="tol must be a finite number"):
            SamplerSpec.named("picard", tol=bad)
        with pytest.raises(ValueError, match="safeguard"):
            sample_picard(model, x_T, cond, safeguard=bad, **kw)
        with pytest.raises(ValueError, match="safeguard"):
            SamplerSpec.named("taa", safeguard=bad)
        with pytest.raises(ValueError, match="budget_s"):
            sample_picard(model, x_T, cond, budget_s=bad, **kw)
        with pytest.raises(ValueError, match="TAA weight"):
            TAA(weight=bad)
        with pytest.raises(ValueError, match="TAA weight"):
            TAA(reg=bad)
        with pytest.raises(ValueError, match="x_T holds non-finite"):
            sample_picard(model, torch.full_like(x_T, bad), cond, **kw)
        with pytest.raises(ValueError, match="init .* non-finite"):
            sample_picard(model, x_T, cond, init=torch.full_like(x_T, bad), **kw)


@pytest.mark.parametrize("make, msg", [
    (lambda: step_grid(ddpm(), 2.5), r"num_steps must be an integer in 1\.\.100"),
    (lambda: step_grid(ddim(), 10, eta=float("nan")), "eta must be >= 0"),
    (lambda: SamplerSpec.named("picard", k=2.5), "k must be an integer"),
    (lambda: SamplerSpec.named("picard", window=1.5), "window must be an integer"),
    (lambda: SamplerSpec.named("picard", tol="0.1"), "tol must be a number"),
    (lambda: SamplerSpec(name="picard", num_steps=None), "num_steps None .* is for ddpm only"),
    (lambda: SamplerSpec.named("picard", num_steps=50, jump=Jump((50,), (0.0,))),
     r"jump positions must be in 0\.\.num_steps - 1 = 49"),
    (lambda: SamplerSpec.from_dict({"name": "taa", "taa": {"memory": 1}}), "TAA memory must be an int >= 2"),
])
def test_bad_grid_and_spec_settings_name_the_setting_and_range(make, msg):
    """Never a TypeError or IndexError from deep inside: a ValueError naming the setting and its valid range."""
    with pytest.raises(ValueError, match=msg):
        make()


class Overflowing(nn.Module):
    """MLPDenoiser plus 1e-30 x^3: negligible below |x| ~ 1e8, inf (float32 overflow) from |x| ~ 1e13: a network
    that is fine on the data's scale and not on a runaway iterate."""

    def __init__(self):
        super().__init__()
        self.m = MLPDenoiser()

    def forward(self, x, t, cond, lora_scale=None):
        return self.m(x, t, cond, lora_scale) + 1e-30 * x**3


@torch.no_grad()
def test_finite_inputs_never_give_non_finite_outputs(updates=lambda pick: {}, settings=24):
    """Random samplers, k, tol, window, first iterates and warm starts (the previous chunk's output, at times
    blown up the way an unconverged iterate carried forward grows) over many chunks: every output is finite."""
    model, rng = Overflowing(), torch.Generator().manual_seed(0)
    restarts = 0
    for setting in range(settings):
        def pick(options):
            return options[int(torch.randint(len(options), (1,), generator=rng))]

        sched = pick([ddim, lambda: ddim(clip_sample=False)])()
        name = pick(["picard", "taa", "pcm"])
        k = pick([None, 1, 2, 3, T // 2, T])
        kw = dict(grid=step_grid(sched, T), tol=pick([0.0, 1e-3, 0.1, 1.0]), max_iters=k,
                  window=pick([None, 1, 3, T]), **updates(pick))
        if name == "taa":
            kw.update(taa=TAA(), safeguard=pick([None, 1.0]))

        def sample(x_T, cond, init, kw=kw, name=name):
            if name == "pcm":
                return sample_pcm(model, x_T, cond, schedule=hard_switch(1), init=init, **kw)
            return sample_picard(model, x_T, cond, init=init, **kw)

        guess = None
        for chunk in range(5):
            x_T, cond = inputs(3, seed=100 * setting + chunk)
            scale = pick([1.0, 1.0, 1e4, 1e15, 1e30])
            init = None if guess is None else pick([guess * scale, initial_trajectory(kw["grid"], x_T, guess) * scale])
            if init is not None and not bool(torch.isfinite(init).all()):  # finite inputs only
                init = guess
            out, st = sample(x_T, cond, init)
            assert out.shape == x_T.shape and bool(torch.isfinite(out).all()), (setting, chunk, scale)
            restarts += st.cold_restarts
            guess = out
    assert restarts > 0  # the draws did reach runaway warm starts


def test_a_diverged_sample_is_re_solved_cold_and_counted():
    """A warm start far outside the model's range makes the iterate overflow: that sample alone is re-solved from
    the cold first iterate ("prior" for an x0 guess), its output is that cold solve's, and stats count it."""
    model, (x_T, cond) = Overflowing(), inputs()
    kw = dict(grid=step_grid(ddim(), T), tol=0.0, max_iters=4)
    guess = torch.zeros_like(x_T)
    guess[1] = 1e30
    out, st = sample_picard(model, x_T, cond, init=guess, **kw)
    cold, _ = sample_picard(model, x_T, cond, init=torch.zeros_like(x_T), **kw)
    assert st.cold_restarts == 1 and bool(torch.isfinite(out).all())
    assert close(out, cold, atol=1e-6)
    assert st.sample_iterations[1] > st.sample_iterations[0]  # both solves are counted
    with pytest.raises(ValueError, match="non-finite values .* from finite inputs"):  # a model that is NaN anyway
        sample_picard(lambda x, t, c: x * float("nan"), x_T, cond, **kw)


def test_newton_converges_on_the_policy_unet():
    from pcm_policy.pusht.unet1d import build_unet

    torch.manual_seed(0)
    unet = build_unet("small", input_dim=2, global_cond_dim=COND).eval()
    x_T, cond = torch.randn(2, 8, 2), torch.randn(2, COND)
    kw = dict(grid=step_grid(ddim(), 6))
    seq, _ = sample_sequential(unet, x_T, cond, **kw)
    x, stats = sample_newton(unet, x_T, cond, tol=0.0, **kw)
    assert close(x, seq, 1e-5) and stats.iterations <= 6


@pytest.mark.parametrize("sampler", ["sequential", "picard", "pcm", "newton"])
def test_per_row_generators_make_each_row_independent_of_the_batch(sampler):
    """Step noise drawn from one generator per row: a row's sample is the same alone or batched, whatever the
    global seed (diffusers issue 6222: batch-wide draws make a sample depend on the batch)."""
    model, (x_T, cond) = MLPDenoiser(), inputs(batch=3)
    kw = dict(grid=step_grid(ddpm(), T))
    run = {"sequential": lambda x, c, g: sample_sequential(model, x, c, generator=g, **kw),
           "picard": lambda x, c, g: sample_picard(model, x, c, window=5, tol=0.0, generator=g, **kw),
           "pcm": lambda x, c, g: sample_pcm(model, x, c, window=T, tol=0.0, schedule=hard_switch(2), generator=g,
                                             **kw),
           "newton": lambda x, c, g: sample_newton(model, x, c, tol=0.0, generator=g, **kw)}[sampler]

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    torch.manual_seed(0)
    batched, _ = run(x_T, cond, gens([10, 11, 12]))
    torch.manual_seed(1)
    alone, _ = run(x_T[1:2], cond[1:2], gens([11]))
    assert close(batched[1:2], alone, 1e-5)
    want, _ = sample_sequential(model, x_T, cond, generator=gens([10, 11, 12]), **kw)  # same noise, same fixed point
    assert close(batched, want, 1e-4)
    other, _ = run(x_T, cond, gens([10, 99, 12]))
    assert not close(other[1], batched[1], 1e-3) and close(other[0], batched[0], 1e-5)
    with pytest.raises(ValueError, match="one per row"):
        run(x_T, cond, gens([1, 2]))
