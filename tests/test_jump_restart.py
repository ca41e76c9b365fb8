"""Jump.restart (issue 23): Picard restarted from the jump's estimate re-noised along the grid keeps the fixed point
(tol 0 equals sequential DDIM to float tolerance: the cumulative sum adds in another order, so not bit for bit),
leaves the chain's estimates alone, and is a spec setting that older keys and adapters do not see."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from helpers import load_script
from test_sampling import MLPDenoiser, T, close, ddim, inputs

from pcm_policy.sampling import TAA, Jump, SamplerSpec, linear_schedule, sample_pcm, sample_sequential, step_grid
from pcm_policy.sampling.picard import restart_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("taa", [None, TAA()])
@pytest.mark.parametrize("restart_from", [0, 5])
@pytest.mark.parametrize("window,init", [(None, "prior"), (None, "noise"), (4, "noise"), (5, "prior")])
def test_restart_keeps_the_fixed_point(taa, restart_from, window, init):
    model, (x_T, cond) = MLPDenoiser(), inputs()
    grid = step_grid(ddim(), T)
    jump = Jump((2, 9), (1.0, 0.0), restart=(0,), restart_from=restart_from)
    seq, _ = sample_sequential(model, x_T, cond, grid=grid)
    x, st = sample_pcm(model, x_T, cond, grid=grid, schedule=linear_schedule(0, 0), taa=taa, init=init, tol=0.0,
                       window=window, jump=jump, safeguard=1.0)
    assert close(x, seq, 1e-5) and st.converged


def test_restart_changes_the_guesses_not_the_chain():
    """The chain's estimates (the output for k < until) are the same with and without the restart; from the
    restart on the iterates differ (positions after max(anchor, restart_from) only)."""
    model, (x_T, cond) = MLPDenoiser(), inputs()
    grid = step_grid(ddim(), T)
    kw = dict(grid=grid, schedule=linear_schedule(0, 0), taa=TAA(), init="prior", tol=0.0)
    plain, new = Jump((2, 9), (1.0, 0.0)), Jump((2, 9), (1.0, 0.0), restart=(0,), restart_from=6)
    for k in (1, 2):
        a, _ = sample_pcm(model, x_T, cond, max_iters=k, jump=plain, **kw)
        b, _ = sample_pcm(model, x_T, cond, max_iters=k, jump=new, **kw)
        assert torch.equal(a, b)
    _, sa = sample_pcm(model, x_T, cond, max_iters=3, jump=plain, return_iterates=True, **kw)
    _, sb = sample_pcm(model, x_T, cond, max_iters=3, jump=new, return_iterates=True, **kw)
    Xa, Xb = sa.iterates[1], sb.iterates[1]
    assert torch.equal(Xa[:7], Xb[:7]) and not torch.equal(Xa[7:], Xb[7:])


def test_restart_path_is_the_ddim_path_of_the_estimate():
    """Each position's x0 read with the path's own eps is the estimate; the path goes through X[b]."""
    grid = step_grid(ddim(), T)
    g = torch.Generator().manual_seed(0)
    X, x0 = torch.randn(T + 1, 3, 8, 2, generator=g), torch.rand(3, 8, 2, generator=g) * 2 - 1
    b = torch.tensor([0, 4, 7])
    path = restart_path(grid, X, x0, b)
    abar = torch.cat([grid.alpha, grid.alpha_prev[-1:]])
    for s in range(3):
        if b[s] > 0:
            assert close(path[b[s] - 1, s], X[b[s], s], 1e-5)
        eps = (X[b[s], s] - abar[b[s]].sqrt() * x0[s]) / (1 - abar[b[s]]).sqrt()
        for j in range(1, T):  # position j is row j - 1
            assert close((path[j - 1, s] - (1 - abar[j]).sqrt() * eps) / abar[j].sqrt(), x0[s], 1e-4)


def test_restart_settings_checks_and_spec_keys():
    with pytest.raises(ValueError, match="restart"):
        Jump((2, 9), (1.0, 0.0), restart=(2,))
    with pytest.raises(ValueError, match="restart"):
        Jump((2, 9), (1.0, 0.0), restart=(1, 0))
    with pytest.raises(ValueError, match="restart_from"):
        Jump((2, 9), (1.0, 0.0), restart=(0,), restart_from=-1)
    spec = SamplerSpec.named("pcm", jump=Jump((10, 45, 49), (1.0, 0.0, 0.0), restart=(0,), restart_from=30))
    d = spec.to_dict()
    assert d["jump"]["restart"] == [0] and d["jump"]["restart_from"] == 30
    assert SamplerSpec.from_dict(json.loads(json.dumps(d))) == spec
    assert spec.replace(num_steps=25).jump == Jump((5, 22, 24), (1.0, 0.0, 0.0), restart=(0,), restart_from=15)
    old = spec.replace(jump=dataclasses.replace(spec.jump, restart=(), restart_from=0)).to_dict()["jump"]
    assert set(old) == {"positions", "lambdas"}  # keys written before the restart stay valid


def test_the_shipped_adapter_loads_unchanged():
    """checkpoints/pusht_pcm's adapter.json reads back to the spec it holds: no restart unless it says so."""
    raw = json.loads((ROOT / "checkpoints/pusht_pcm/adapter.json").read_text())["sampler"]
    spec = SamplerSpec.from_dict(raw)
    assert spec.to_dict() == raw
    assert spec.jump.restart == tuple(raw["jump"].get("restart", ())) and spec.jump.hold == raw["jump"].get("hold", 0)


@pytest.mark.slow
def test_shipped_policy_with_the_restart_at_tol0_is_ddim50():
    """The shipped policy and adapter: PCM with the restart at tol 0 reaches sequential DDIM-50 (float tolerance)."""
    from pcm_policy.pusht.checkpoint import load_adapter_folder, load_policy
    from pcm_policy.sampling import make_sampler

    policy = load_policy(ROOT / "checkpoints/pusht_base")
    spec, _ = load_adapter_folder(policy, ROOT / "checkpoints/pusht_pcm")
    spec = spec.replace(tol=0.0, jump=dataclasses.replace(spec.jump, restart=(0,), restart_from=30))
    g = torch.Generator().manual_seed(0)
    x_T, cond = torch.randn(2, 16, 2, generator=g), torch.rand(2, 40, generator=g) * 2 - 1
    with torch.no_grad():
        want, _ = make_sampler("ddim", policy.noise_scheduler)(policy.model_fn, x_T, cond)
        got, st = make_sampler(spec, policy.noise_scheduler)(policy.model_fn, x_T, cond)
    assert st.converged and (got - want).abs().max().item() < 1e-4


def test_rollout_flag_sets_the_restart_and_refuses_bad_positions(capsys):
    mod = load_script("rollout")
    assert mod.parse_args(["--sampler", "pcm", "--jump-restart-from", "25"]).jump_restart_from == 25
    with pytest.raises(SystemExit) as e:
        mod.parse_args(["--sampler", "pcm", "--jump-restart-from", "50"])
    assert e.value.code == 2 and "--jump-restart-from" in capsys.readouterr().err


def test_picard_from_the_exact_trajectory_stops_after_one_call():
    """``bench_first_iterate.py``'s reference point: X^0 = the sequential trajectory is already the fixed point,
    so Picard + TAA at tol 0.1 stops after its first call with the sequential output; the prior needs more."""
    model, (x_T, cond) = MLPDenoiser(), inputs()
    grid = step_grid(ddim(), T)
    seq, st = sample_sequential(model, x_T, cond, grid=grid, return_trajectory=True)
    kw = dict(grid=grid, tol=0.1, taa=TAA(), safeguard=1.0)
    x, s1 = sample_pcm(model, x_T, cond, schedule=linear_schedule(0, 0), init=st.trajectory, **kw)
    _, s0 = sample_pcm(model, x_T, cond, schedule=linear_schedule(0, 0), init="prior", **kw)
    assert s1.sample_iterations == [1] * len(x_T) and close(x, seq, 1e-5)
    assert min(s0.sample_iterations) > 1


def test_first_iterate_bench_refuses_bad_settings(capsys):
    mod = load_script("bench_first_iterate")
    for bad in (["--conditions", "0"], ["--threads", "0"], ["--out", str(ROOT / "results/MANIFEST.md")]):
        with pytest.raises(SystemExit) as e:
            mod.parse_args(bad)
        assert e.value.code == 2
    assert "error" in capsys.readouterr().err
