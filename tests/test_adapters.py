"""The adapter folder (pcm_policy.adapters): one format, one return shape, written and read back exactly."""

import json

import pytest
import torch

from pcm_policy.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    load_adapter_folder,
    load_sampler,
    read_adapter_config,
    save_adapter_folder,
)
from pcm_policy.lora import add_lora, lora_parameters, set_lora_scale
from pcm_policy.pusht.unet1d import ConditionalUnet1D
from pcm_policy.sampling import TAA, Jump, Sampler, SamplerSpec, Switch, spec_with

CFG = dict(input_dim=2, global_cond_dim=6, diffusion_step_embed_dim=16, down_dims=(16, 32), attn_levels=(0,),
           n_heads=2)
SPEC = SamplerSpec(name="pcm", num_steps=20, init="prior", safeguard=1.0, taa=TAA(memory=3),
                   switch=Switch(0, 0), jump=Jump(positions=(4, 19), lambdas=(1.0, 0.0)))


def base():
    torch.manual_seed(0)
    return ConditionalUnet1D(**CFG).eval()


def adapted():
    m = add_lora(base(), rank=2, alpha=4)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in lora_parameters(m):
            p.normal_(0.0, 0.3)
    return m


def inputs():
    g = torch.Generator().manual_seed(2)
    return torch.randn(3, 8, 2, generator=g), torch.randint(0, 100, (3,), generator=g), torch.randn(3, 6, generator=g)


def test_round_trip_gives_the_spec_the_meta_and_the_same_outputs(tmp_path):
    m = adapted()
    out = save_adapter_folder(m, tmp_path / "a", SPEC, extra={"metrics": {"px": 0.5}, "steps": 7})
    assert out == tmp_path / "a" and {p.name for p in out.iterdir()} == {ADAPTER_WEIGHTS, ADAPTER_CONFIG}
    fresh = base()
    spec, meta = load_adapter_folder(fresh, out)
    assert spec == SPEC and meta["metrics"] == {"px": 0.5} and meta["steps"] == 7
    assert meta["sampler"] == SPEC.to_dict() and read_adapter_config(out) == (spec, meta)
    x = inputs()
    for lam in (1.0, torch.tensor([0.0, 0.5, 1.0])):
        set_lora_scale(m, lam)
        set_lora_scale(fresh, lam)
        assert torch.equal(fresh(*x), m(*x))


def test_full_copy_needs_a_receiver_and_loads_into_it(tmp_path):
    copy = base()
    with torch.no_grad():
        next(copy.parameters()).add_(1.0)
    save_adapter_folder(copy, tmp_path / "full", SPEC, extra={"steps": 1}, full=True)
    spec, meta = read_adapter_config(tmp_path / "full")
    assert spec == SPEC and meta["finetune"] == "full" and meta["steps"] == 1
    with pytest.raises(ValueError, match="fully fine-tuned copy"):
        load_adapter_folder(base(), tmp_path / "full")
    received = []
    load_adapter_folder(base(), tmp_path / "full", full_copy=lambda: received.append(base()) or received[-1])
    x = inputs()
    assert len(received) == 1 and torch.equal(received[0](*x), copy(*x))


def test_bad_folders_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="missing adapter.safetensors"):
        load_adapter_folder(base(), tmp_path)
    save_adapter_folder(adapted(), tmp_path / "a", SPEC)
    with pytest.raises(ValueError, match="does not fit"):
        load_adapter_folder(add_lora(base(), rank=3), tmp_path / "a")
    (tmp_path / "a" / ADAPTER_CONFIG).write_text(json.dumps({"schedule": {"k_on": 1, "k_off": 1}}))
    with pytest.raises(ValueError, match="no valid sampler entry"):
        read_adapter_config(tmp_path / "a")
    (tmp_path / "a" / ADAPTER_CONFIG).unlink()
    with pytest.raises(ValueError, match="missing adapter.json"):
        read_adapter_config(tmp_path / "a")


def scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")


def test_override_rule_none_keeps_nested_keys_set_one_field_unknown_keys_fail():
    assert spec_with("taa", k=None, tol=None) == SamplerSpec.named("taa")
    assert spec_with("ddim-k", k=5) == SamplerSpec(name="ddim-k", k=5)  # built in one step (ddim-k needs k)
    assert spec_with("taa", taa_memory=2, taa_mixing=0.7).taa == TAA(memory=2, mixing=0.7)
    s = spec_with(SPEC, switch_k_off=2, switch_space=None, tol=0.0)
    assert s.switch == Switch(0, 2, "weight") and s.tol == 0.0 and s.taa == SPEC.taa and s.jump == SPEC.jump
    assert spec_with(SPEC, num_steps=40).jump == SPEC.jump.rescaled(20, 40)  # replace's rule for a jump
    for bad in ("kk", "taa_size", "switch_on", "name"):
        with pytest.raises(ValueError, match=f"unknown sampler setting '{bad}'"):
            spec_with("taa", **{bad: None})
    with pytest.raises(ValueError, match="taa_memory: this picard spec has no taa"):
        spec_with("picard", taa_memory=3)
    with pytest.raises(ValueError, match="unknown sampler 'ddim2'"):
        spec_with("ddim2")


def test_load_sampler_from_a_name_a_spec_or_a_folder(tmp_path):
    sch = scheduler()
    s = load_sampler("taa", sch, num_steps=20, taa_memory=2)
    assert isinstance(s, Sampler) and s.spec == SamplerSpec.named("taa", num_steps=20, taa=TAA(memory=2))
    assert load_sampler(SPEC, sch, k=3).spec == SPEC.replace(k=3)
    m = adapted()
    save_adapter_folder(m, tmp_path / "a", SPEC)
    fresh = base()
    s = load_sampler(tmp_path / "a", sch, module=fresh, k=2, switch_k_on=None)
    assert s.spec == SPEC.replace(k=2)
    x = inputs()
    set_lora_scale(m, 1.0)
    set_lora_scale(fresh, 1.0)
    assert torch.equal(fresh(*x), m(*x))  # the folder's LoRA went onto the given module
    with pytest.raises(ValueError, match="needs the module"):
        load_sampler(tmp_path / "a", sch)
    with pytest.raises(ValueError, match="unknown sampler setting 'steps'"):
        load_sampler(tmp_path / "a", sch, module=base(), steps=10)
    with pytest.raises(ValueError, match="no such adapter folder, and not a sampler name"):
        load_sampler("pcmm", sch)
