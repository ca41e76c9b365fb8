"""LoRA on the UNet's attention projections: frozen base, exact lambda=0, per-row lambda, save/load."""

import pytest
import torch
from helpers import assert_jvp_matches_finite_difference
from safetensors import safe_open

from pcm_policy.lora import (
    LoraScale,
    add_lora,
    get_lora_scale,
    has_lora,
    load_adapter,
    lora_bypassed,
    lora_disabled,
    lora_parameters,
    lora_scale,
    lora_state_dict,
    remove_lora,
    save_adapter,
    set_lora_scale,
)
from pcm_policy.pusht.unet1d import ConditionalUnet1D

CFG = dict(
    input_dim=2, global_cond_dim=6, diffusion_step_embed_dim=16, down_dims=(16, 32, 32),
    attn_levels=(0, 1), n_heads=2,
)  # fmt: skip
JIT_WARNING = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"  # torch's jvp decompositions


def base_model():
    torch.manual_seed(0)
    return ConditionalUnet1D(**CFG).eval()


def lora_model(rank=4, alpha=8):
    """Base model + LoRA with random (nonzero) adapter weights, and a copy of its base state."""
    model = base_model()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    add_lora(model, rank=rank, alpha=alpha)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(0.0, 0.3)
    return model, base_state


def inputs(b=4):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(b, 16, 2, generator=g)
    return x, torch.randint(0, 100, (b,), generator=g), torch.randn(b, 6, generator=g)


def test_targets_attention_projections_only():
    model, _ = lora_model()
    assert has_lora(model) and not has_lora(base_model())
    keys = lora_state_dict(model)
    assert keys and all(".to_q." in k or ".to_k." in k or ".to_v." in k or ".to_out." in k for k in keys)
    assert {k.split(".lora_")[1].split(".")[0] for k in keys} == {"A", "B"}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {id(p) for p in lora_parameters(model)} == {
        id(p) for p in model.parameters() if p.requires_grad
    }


def test_fresh_adapter_is_a_no_op():
    model, x = base_model(), inputs()
    ref = model(*x)
    add_lora(model)
    assert torch.equal(model(*x), ref)


def test_only_adapter_weights_train():
    model, _ = lora_model()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2, weight_decay=0.1)
    model(*inputs()).square().mean().backward()
    opt.step()
    after = model.state_dict()
    for k, v in before.items():
        if "lora_" in k:
            assert not torch.equal(after[k], v), f"adapter weight {k} did not change"
        else:
            assert torch.equal(after[k], v), f"base weight {k} changed"
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)


def test_lambda_zero_is_exactly_the_base_model():
    model, base_state = lora_model()
    x = inputs()
    base = base_model()
    base.load_state_dict(base_state)
    ref = base(*x)
    set_lora_scale(model, 0.0)
    assert torch.equal(model(*x), ref)
    set_lora_scale(model, torch.zeros(4))
    assert torch.equal(model(*x), ref)
    set_lora_scale(model, 1.0)
    assert (model(*x) - ref).abs().max() > 1e-3
    with lora_disabled(model):
        assert torch.equal(model(*x), ref)
    assert (model(*x) - ref).abs().max() > 1e-3
    assert all(p.requires_grad for p in lora_parameters(model))


def test_per_row_lambda_equals_per_call_lambda():
    model, _ = lora_model()
    x = inputs()
    lams = torch.tensor([0.0, 0.25, 1.0, 0.5])
    per_call = []
    for lam in lams.tolist():
        set_lora_scale(model, lam)
        per_call.append(model(*x))
    set_lora_scale(model, lams)
    mixed = model(*x)
    for i in range(4):
        torch.testing.assert_close(mixed[i], per_call[i][i], rtol=1e-5, atol=1e-6)
    assert torch.equal(mixed[0], per_call[0][0])  # the lambda = 0 row is exactly the base model
    with pytest.raises(ValueError, match="per-row scales"):
        model(*inputs(b=3))
    with pytest.raises(ValueError, match="shape"):
        set_lora_scale(model, torch.ones(2, 2))


def test_lora_scale_context_restores():
    model, _ = lora_model()
    assert get_lora_scale(model) == 1.0
    with lora_scale(model, 0.3):
        assert get_lora_scale(model) == 0.3
    assert get_lora_scale(model) == 1.0


def test_save_load_round_trip(tmp_path):
    model, base_state = lora_model()
    path = tmp_path / "adapter" / "adapter.safetensors"
    save_adapter(model, path)
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(lora_state_dict(model))
    fresh = base_model()
    fresh.load_state_dict(base_state)
    load_adapter(fresh, path)  # injects the adapters from the file's config
    x = inputs()
    for lam in (1.0, 0.5):
        set_lora_scale(model, lam)
        set_lora_scale(fresh, lam)
        assert torch.equal(fresh(*x), model(*x))
    with torch.no_grad():
        for p in lora_parameters(fresh):
            p.zero_()
    load_adapter(fresh, path)  # a model that already has matching adapters: weights overwritten
    assert torch.equal(fresh(*x), model(*x))
    with pytest.raises(ValueError, match="differs"):
        load_adapter(add_lora(base_model(), rank=2), path)
    with pytest.raises(FileNotFoundError):
        load_adapter(fresh, tmp_path / "missing.safetensors")


def test_lora_bypassed_runs_the_base_layers_and_puts_the_wrappers_back():
    """The base model's own layers for the duration (no peft wrapper in the call), the wrappers back on exit, also
    after an error; LoraScale's lambda = 0 path uses it; a removed and re-added adapter is found again."""
    model, base_state = lora_model()
    x = inputs()
    base = base_model()
    base.load_state_dict(base_state)
    ref, adapted = base(*x), model(*x)
    wrappers = [m for m in model.modules() if type(m).__module__.startswith("peft")]
    with lora_bypassed(model) as m:
        assert m is model and not has_lora(model) and torch.equal(model(*x), ref)
    assert has_lora(model) and torch.equal(model(*x), adapted)
    with pytest.raises(RuntimeError, match="inside"), lora_bypassed(model):
        raise RuntimeError("inside")
    assert [m for m in model.modules() if type(m).__module__.startswith("peft")] == wrappers
    fn = LoraScale(lambda x, t, c: model(x, t, c), model)
    assert torch.equal(fn(*x, lora_scale=0.0), ref) and torch.equal(fn(*x), ref)
    assert torch.equal(fn(*x, lora_scale=1.0), adapted) and has_lora(model)
    remove_lora(model)
    assert torch.equal(fn(*x), ref)  # no adapter now: the plain call
    with pytest.raises(ValueError, match="needs a LoRA adapter"):
        fn(*x, lora_scale=1.0)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        with lora_bypassed(model):
            pass
    add_lora(model)  # a new adapter (B = 0: a no-op) is bypassed too
    with lora_bypassed(model):
        assert not has_lora(model) and torch.equal(model(*x), ref)


def test_remove_lora_gives_back_the_base_model():
    model, base_state = lora_model()
    x = inputs()
    base_ref = base_model()(*x)
    assert not torch.equal(model(*x), base_ref)
    assert remove_lora(model) is model and not has_lora(model)
    assert model.state_dict().keys() == base_state.keys()
    assert all(torch.equal(v, base_state[k]) for k, v in model.state_dict().items())
    assert torch.equal(model(*x), base_ref) and all(p.requires_grad for p in model.parameters())
    add_lora(model)  # a fresh adapter can go on again
    assert has_lora(model)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        remove_lora(base_model())


def test_errors():
    with pytest.raises(ValueError, match="no LoRA adapters"):
        set_lora_scale(base_model(), 0.5)
    with pytest.raises(ValueError, match="no module"):
        add_lora(base_model(), target_modules=("query",))
    model, _ = lora_model()
    with pytest.raises(ValueError, match="already has"):
        add_lora(model)


@pytest.mark.filterwarnings(JIT_WARNING)
@pytest.mark.parametrize("lam", [0.7, torch.tensor([0.0, 0.3, 1.0, 0.6])])
def test_jvp_with_lora(lam):
    model, _ = lora_model()
    model.double()
    set_lora_scale(model, lam)
    x, t, c = inputs()
    assert_jvp_matches_finite_difference(model, x.double(), t, c.double())


@pytest.mark.slow
def test_a_policy_without_adapters_never_imports_peft():
    """has_lora on a model with no adapters answers without importing peft (about 3 s of every plain rollout's
    start-up): no layer can be peft's before peft is imported."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from pcm_policy.pusht.checkpoint import load_policy; from pcm_policy.lora import has_lora; "
            "p = load_policy('checkpoints/pusht_base'); p.freeze(True); "
            "print(has_lora(p.model), 'peft' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr
