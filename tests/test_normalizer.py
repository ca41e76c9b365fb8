"""MinMaxNormalizer: [min, max] -> [-1, 1] per feature, degenerate features, saved as buffers."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pcm_policy.pusht.normalizer import MinMaxNormalizer, NormalizerDict


def data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-5, 500, size=(n, 4))
    x[:, 1] = rng.normal(3.0, 0.1, size=n)
    x[:, 3] = 7.25  # constant feature
    return x


def test_maps_range_to_unit_interval():
    x = data()
    norm = MinMaxNormalizer.fit(x)
    y = norm.normalize(torch.as_tensor(x, dtype=torch.float32))
    live = [0, 1, 2]
    torch.testing.assert_close(y[:, live].min(0).values, -torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y[:, live].max(0).values, torch.ones(3), atol=1e-5, rtol=0)


def test_round_trip():
    x = torch.as_tensor(data(), dtype=torch.float64)
    norm = MinMaxNormalizer.fit(x)
    torch.testing.assert_close(norm.unnormalize(norm.normalize(x)), x, rtol=1e-6, atol=1e-4)
    z = torch.rand(5, 3, 4) * 2 - 1  # any leading shape
    torch.testing.assert_close(norm.normalize(norm.unnormalize(z)), z, rtol=1e-5, atol=1e-5)


def test_degenerate_feature_reference_rule():
    """Range < 1e-4: scale 1, offset -min, so the constant maps to 0 and round-trips."""
    x = data()
    norm = MinMaxNormalizer.fit(x)
    assert norm.scale[3] == 1.0 and norm.offset[3] == -7.25
    y = norm.normalize(torch.as_tensor(x))
    assert torch.all(y[:, 3] == 0)
    assert torch.all(norm.unnormalize(y)[:, 3] == 7.25)
    tiny_range = np.stack([np.zeros(10), np.linspace(0, 5e-5, 10)], axis=1)
    assert MinMaxNormalizer.fit(tiny_range).scale.tolist() == [1.0, 1.0]


def test_state_dict_round_trip(tmp_path):
    x = data()
    norm = MinMaxNormalizer.fit(x)
    assert set(norm.state_dict()) == {"scale", "offset", "input_min", "input_max"}
    save_file(norm.state_dict(), tmp_path / "norm.safetensors")
    loaded = MinMaxNormalizer(4)
    loaded.load_state_dict(load_file(tmp_path / "norm.safetensors"))
    t = torch.as_tensor(x, dtype=torch.float32)
    assert torch.equal(loaded.normalize(t), norm.normalize(t))
    assert torch.equal(loaded.unnormalize(t), norm.unnormalize(t))


def test_dict_container():
    obs, act = data(seed=1), data(seed=2)[:, :2]
    norms = NormalizerDict.fit({"obs": obs, "action": act})
    assert norms.dims() == {"obs": 4, "action": 2}
    rebuilt = NormalizerDict.from_dims(norms.dims())
    rebuilt.load_state_dict(norms.state_dict())
    a = torch.as_tensor(act, dtype=torch.float32)
    assert torch.equal(rebuilt.normalize("action", a), norms.normalize("action", a))
    with pytest.raises(KeyError, match="no normaliser"):
        norms.normalize("image", a)


def test_errors():
    norm = MinMaxNormalizer.fit(data())
    with pytest.raises(ValueError, match="last dimension 4"):
        norm.normalize(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="shape"):
        MinMaxNormalizer.fit(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        MinMaxNormalizer.fit(np.array([[0.0, np.nan]]))
