"""The paper's sampler variants over the sampler core (``pcm_policy.paper``): the chain form (a Picard update rule,
``chain_update``) and feature-space lambda (a model-function wrapper, ``FeatureMix``) keep the core's exactness
properties; the core finds them by the spec names shipped files use ("chain", "feature"), one rule."""

from __future__ import annotations

import json

import pytest
import test_sampling as core
import torch
from test_sampling import MLPDenoiser, T, close, ddim, inputs

from pcm_policy import paper
from pcm_policy.paper import FeatureMix, chain_update
from pcm_policy.sampling import (
    FORMS,
    SPACES,
    TAA,
    SamplerSpec,
    Switch,
    make_sampler,
    sample_pcm,
    sample_picard,
    sample_sequential,
    step_grid,
)
from pcm_policy.sampling.picard import paradigms_update


def test_importing_the_paper_registers_its_names_once():
    assert FORMS["chain"] is chain_update and SPACES["feature"] is FeatureMix
    assert FORMS["paradigms"] is paradigms_update and SPACES["weight"] is None
    paper.register()  # idempotent
    assert sorted(FORMS) == ["chain", "paradigms"] and sorted(SPACES) == ["feature", "weight"]


# ---------------------------------------------------------------- chain form (supplement eq. 1)


@pytest.mark.parametrize("case", range(3))
def test_chain_full_window_tol0_equals_sequential(case):
    core.test_picard_full_window_tol0_equals_sequential(case, update=chain_update)


@pytest.mark.parametrize("make,eta", [(core.ddpm, 0.0), (ddim, 0.8)])
def test_chain_with_presampled_noise_equals_sequential(make, eta):
    core.test_stochastic_picard_with_presampled_noise_equals_sequential(make, eta, update=chain_update)


def test_spec_form_chain_runs_the_chain_update_and_keeps_old_keys():
    """SamplerSpec.form "chain" reaches the samplers (the chain's iterates differ from the cumulative sum's, the
    fixed point is the same) and round-trips; the default is left out of to_dict, so older keys stay valid."""
    model, (x_T, cond) = MLPDenoiser(), inputs()
    spec = SamplerSpec.named("pcm", switch=Switch(1, 1), num_steps=T, tol=0.0, form="chain")
    assert SamplerSpec.from_dict(spec.to_dict()) == spec and "form" not in spec.replace(form="paradigms").to_dict()
    seq, _ = sample_sequential(model, x_T, cond, grid=step_grid(ddim(), T))
    chain, st = make_sampler(spec, ddim())(model, x_T, cond, return_iterates=True)
    _, st0 = make_sampler(spec.replace(form="paradigms"), ddim())(model, x_T, cond, return_iterates=True)
    assert close(chain, seq) and not close(st.iterates[2], st0.iterates[2])
    with pytest.raises(ValueError, match="form"):
        SamplerSpec.named("ddim", form="chain")


def test_chain_update_is_x_next_equals_F_of_x():
    """On the window rows, position j+1 takes F_j(x_j); every other position keeps its value."""
    X = torch.randn(5, 2, 3)
    jj, ss = torch.tensor([1, 2, 1]), torch.tensor([0, 0, 1])
    fx = torch.randn(3, 3)
    new = chain_update(X, torch.tensor([1, 1]), jj, ss, fx)
    want = X[1:].clone()
    want[jj, ss] = fx
    assert torch.equal(new, want)


@torch.no_grad()
def test_chain_finite_inputs_never_give_non_finite_outputs():
    core.test_finite_inputs_never_give_non_finite_outputs(updates=lambda pick: {"update": chain_update}, settings=10)


def test_pct_phi_by_update_rule():
    """PCT's Phi_theta (``training.pct.phi``) by the core's rule is the sampler core's full-window ``picard_update``
    bit for bit; ``pct.form=chain`` (``pct_loss(form="chain")``) takes Phi = F_j(x_j) at every position."""
    from pcm_policy.sampling import ddim_step, picard_update, repeat_cond
    from pcm_policy.training.pct import pct_loss, phi

    model, (x_T, cond) = MLPDenoiser(), inputs()
    grid = step_grid(ddim(), T)
    _, st = sample_picard(model, x_T, cond, grid=grid, tol=0.0, max_iters=2, return_iterates=True)
    X = st.iterates[2]  # a trajectory (T+1, B, ...) that is not the fixed point
    with torch.no_grad():
        B = X.shape[1]
        out = model(X[:T].flatten(0, 1), grid.timesteps.repeat_interleave(B), repeat_cond(cond, T), lora_scale=1.0)
        want = torch.cat([X[:1], picard_update(grid, X[:T], out, 0, X[0])])
        assert torch.equal(phi(model, X, cond, grid), want)
        fx = ddim_step(grid, X[:T].flatten(0, 1), out, torch.arange(T).repeat_interleave(B)).view_as(X[:T])
        assert torch.equal(phi(model, X, cond, grid, update=chain_update), torch.cat([X[:1], fx]))
        target = X + 1.0
        batch = {"x_k": X.transpose(0, 1), "x_star": target.transpose(0, 1), "cond": cond, "k": torch.zeros(B).long()}
        for form, new in (("paradigms", want), ("chain", torch.cat([X[:1], fx]))):
            got = pct_loss(model, batch, grid, torch.ones(1), form=form)
            assert torch.allclose(got, (new[1:] - target[1:]).pow(2).mean(), rtol=1e-6)
        with pytest.raises(ValueError, match="pct.form"):
            pct_loss(model, batch, grid, torch.ones(1), form="jacobi")


# ---------------------------------------------------------------- feature space (supplement Table 3)


def test_feature_mix_is_the_mixed_output_in_one_call():
    """FeatureMix at lambda: lambda eps(1) + (1 - lambda) eps(0) from one batched call of 2N rows; 0, 1 and
    per-row 0s and 1s pass through as one call of N rows; ``row_calls`` counts 2 only when it mixes."""
    model, (x_T, cond) = MLPDenoiser(), inputs()
    t = torch.full((len(x_T),), 40)
    mix = FeatureMix(model)
    with torch.no_grad():
        on, off = model(x_T, t, cond, lora_scale=1.0), model(x_T, t, cond, lora_scale=0.0)
        model.scales.clear()
        out = mix(x_T, t, cond, lora_scale=0.25)
        assert close(out, 0.25 * on + 0.75 * off, 1e-6) and len(model.scales) == 1
        assert model.scales[0].tolist() == [1.0] * len(x_T) + [0.0] * len(x_T)
        rows = torch.tensor([0.5, 1.0, 0.0][: len(x_T)] + [0.0] * (len(x_T) - 3))
        assert close(mix(x_T, t, cond, lora_scale=rows), rows.view(-1, 1, 1) * on + (1 - rows.view(-1, 1, 1)) * off,
                     1e-6)
        for lam in (0.0, 1.0, None, torch.tensor([1.0, 0.0] + [1.0] * (len(x_T) - 2))):
            model.scales.clear()
            assert torch.equal(mix(x_T, t, cond, lora_scale=lam), model(x_T, t, cond, lora_scale=lam))
            assert mix.row_calls(lam) == 1
    assert mix.row_calls(0.5) == 2 and mix.row_calls(rows) == 2


def test_pcm_with_anderson_equals_sequential_in_feature_space():
    core.test_pcm_with_anderson_equals_sequential(space="feature")


@pytest.mark.parametrize("taa", [None, TAA()])
def test_jump_in_feature_space(taa):
    core.test_jump_is_the_output_until_picard_takes_over_and_keeps_the_fixed_point(taa, space="feature")


@pytest.mark.parametrize("schedule", [(2, 5), (3, 3)])
@pytest.mark.parametrize("window", [None, 4])
def test_pcm_in_feature_space_reaching_lambda_0_equals_sequential(schedule, window):
    core.test_pcm_reaching_lambda_0_equals_sequential(schedule, window, space="feature")


def test_feature_space_is_the_wrapped_weight_space_run():
    """A Switch in feature space runs exactly the weight-space sampler over ``FeatureMix(model_fn)``, and its NFE
    counts the mixed iterations twice."""
    model, (x_T, cond) = MLPDenoiser(seed=7), inputs()
    kw = dict(grid=step_grid(ddim(), T), tol=0.0)
    x, st = sample_pcm(model, x_T, cond, schedule=Switch(1, 3, "feature"), **kw)
    y, sw = sample_pcm(FeatureMix(model), x_T, cond, schedule=Switch(1, 3), **kw)
    _, plain = sample_pcm(model, x_T, cond, schedule=Switch(1, 3), **kw)
    assert torch.equal(x, y) and st.sample_nfe == sw.sample_nfe and st.lambdas == [1, 1, 0.5] + [0.0] * (
        len(st.lambdas) - 3)
    assert sum(st.sample_nfe) > sum(plain.sample_nfe) and st.nfe == sum(st.sample_nfe) / len(x_T)


# ---------------------------------------------------------------- the spec names of shipped files: one rule


def test_spec_dicts_naming_the_paper_variants_load_and_run_them(tmp_path):
    """A spec dict as adapter.json, caches and configs hold it: "weight"/"paradigms" are the core's, "feature" and
    "chain" the paper's; to_dict gives the same dict back (same keys, same bytes) and the sampler runs the variant."""
    from pcm_policy.adapters import read_adapter_config

    model, (x_T, cond) = MLPDenoiser(seed=7), inputs()
    d = {"name": "pcm", "num_steps": T, "k": None, "tol": 0.0, "window": None, "init": "noise", "safeguard": 1.0,
         "taa": None, "switch": {"k_on": 1, "k_off": 3, "space": "feature"}, "form": "chain"}
    (tmp_path / "adapter.json").write_text(json.dumps({"sampler": d}))
    spec, _ = read_adapter_config(tmp_path)
    assert spec.to_dict() == d and json.dumps(spec.to_dict()) == json.dumps(d)
    x, _ = make_sampler(spec, ddim())(model, x_T, cond)
    y, _ = sample_pcm(FeatureMix(model), x_T, cond, grid=step_grid(ddim(), T), schedule=Switch(1, 3), tol=0.0,
                      init="noise", safeguard=1.0, update=chain_update)
    assert torch.equal(x, y)


def test_the_core_alone_refuses_the_paper_names_saying_what_to_import(monkeypatch):
    monkeypatch.delitem(SPACES, "feature")
    monkeypatch.delitem(FORMS, "chain")
    with pytest.raises(ValueError, match="pcm_policy.paper"):
        Switch(0, 2, "feature")
    with pytest.raises(ValueError, match="pcm_policy.paper"):
        SamplerSpec.from_dict({"name": "picard", "form": "chain"})


def test_every_shipped_adapter_spec_reads_back_to_the_same_dict():
    """Every shipped adapter.json names the core's space and form (or none): its spec reads and writes back the
    same dict, so shipped folders, their cache keys and the JSON written from them keep their bytes."""
    from pathlib import Path

    from pcm_policy.adapters import read_adapter_config

    folders = sorted(p.parent for p in (Path(__file__).resolve().parents[1] / "checkpoints").rglob("adapter.json"))
    assert len(folders) >= 4
    for folder in folders:
        spec, meta = read_adapter_config(folder)
        assert spec.to_dict() == meta["sampler"] and spec.form == "paradigms", folder
        assert spec.switch is None or spec.switch.space == "weight", folder
