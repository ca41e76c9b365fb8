"""ConditionalUnet1D: shapes, conditioning, validation, reference size, forward-mode AD."""

import pytest
import torch
from helpers import assert_jvp_matches_finite_difference

from pcm_policy.pusht.unet1d import UNET_PRESETS, ConditionalUnet1D, build_unet, count_parameters

TINY = dict(diffusion_step_embed_dim=16, down_dims=(16, 32, 32), attn_levels=(0, 1), n_heads=2)


def tiny(**kw):
    torch.manual_seed(0)
    return ConditionalUnet1D(input_dim=2, global_cond_dim=6, **{**TINY, **kw}).eval()


def inputs(b=3, horizon=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, horizon, 2, generator=g)
    return x, torch.randint(0, 100, (b,), generator=g), torch.randn(b, 6, generator=g)


@pytest.mark.parametrize("b,horizon", [(1, 16), (3, 16), (2, 8), (2, 32)])
def test_output_shape(b, horizon):
    x, t, c = inputs(b, horizon)
    assert tiny()(x, t, c).shape == (b, horizon, 2)


def test_timestep_forms_agree():
    model, (x, _, c) = tiny(), inputs()
    out = model(x, torch.full((3,), 7), c)
    for t in (7, 7.0, torch.tensor(7), torch.tensor([7]), torch.full((3,), 7.0)):
        torch.testing.assert_close(model(x, t, c), out)


def test_output_depends_on_timestep_and_cond():
    model, (x, t, c) = tiny(), inputs()
    out = model(x, t, c)
    assert not torch.allclose(out, model(x, t + 1, c))
    assert not torch.allclose(out, model(x, t, c + 0.5))


def test_rows_are_independent():
    """Each batch row is computed alone (GroupNorm/attention never mix rows)."""
    model, (x, t, c) = tiny(), inputs()
    out = model(x, t, c)
    for i in range(3):
        torch.testing.assert_close(model(x[i : i + 1], t[i : i + 1], c[i : i + 1]), out[i : i + 1])


def test_validation_errors():
    model, (x, t, c) = tiny(), inputs()
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(3, 10, 2), t, c)
    with pytest.raises(ValueError, match="sample must be"):
        model(torch.randn(3, 16, 3), t, c)
    with pytest.raises(ValueError, match="global_cond"):
        model(x, t, c[:, :5])
    with pytest.raises(ValueError, match="global_cond"):
        model(x, t, None)
    with pytest.raises(ValueError, match="timestep"):
        model(x, torch.zeros(2), c)
    with pytest.raises(ValueError, match="n_groups"):
        ConditionalUnet1D(down_dims=(12, 24))
    with pytest.raises(ValueError, match="attn_levels"):
        ConditionalUnet1D(down_dims=(16, 32), attn_levels=(2,))
    with pytest.raises(ValueError, match="n_heads"):
        ConditionalUnet1D(down_dims=(24, 48), n_heads=5)
    with pytest.raises(ValueError, match="unknown UNet size"):
        build_unet("huge")


def test_variants_unconditional_and_bias_only_film():
    x, t, _ = inputs()
    m = ConditionalUnet1D(global_cond_dim=0, cond_predict_scale=False, **TINY)
    assert m(x, t).shape == x.shape
    with pytest.raises(ValueError, match="global_cond_dim=0"):
        m(x, t, torch.zeros(3, 1))


def test_attention_projections_named_for_lora():
    names = [n for n, _ in tiny().named_modules()]
    for proj in ("to_q", "to_k", "to_v", "to_out"):
        hits = [n for n in names if n.endswith("." + proj)]
        # level 0 and 1 down, level 1 up, mid
        assert len(hits) == 4, hits
        assert all(isinstance(tiny().get_submodule(n), torch.nn.Linear) for n in hits)


def test_config_rebuilds_model():
    model = tiny()
    clone = ConditionalUnet1D(**model.get_config()).eval()
    clone.load_state_dict(model.state_dict())
    x, t, c = inputs()
    assert torch.equal(clone(x, t, c), model(x, t, c))


def test_reference_size_matches_spec():
    """Without its mid transformer block the reference preset is the reference UNet (65,783,298)."""
    with torch.device("meta"):
        ref = build_unet("reference")
    mid_attn = count_parameters(ref.mid_modules[1])
    assert count_parameters(ref) - mid_attn == 65_783_298
    assert set(UNET_PRESETS) >= {"reference"}


def test_no_unused_parameters():
    model, (x, t, c) = tiny(), inputs()
    model(x, t, c).square().sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused


# torch's forward-AD decompositions call torch.jit.script on first use
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_jvp_matches_finite_difference():
    model = tiny().double()
    x, t, c = inputs()
    assert_jvp_matches_finite_difference(model, x.double(), t, c.double())
