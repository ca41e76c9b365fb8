"""Loading a lerobot policy folder offline (weights, processors), and the one-line errors for bad input."""

import json
import sys

import pytest

pytest.importorskip("lerobot.policies.diffusion")  # not "lerobot": tests/lerobot/ itself is a namespace "lerobot"

import torch  # noqa: E402
from lerobot_build import ACTION, STATE, build_policy, obs_batch, save_policy  # noqa: E402

from pcm_policy.lerobot.adapter import LerobotDiffusion, PolicyFolderError, load_policy  # noqa: E402


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("image", [False, True])
def test_load_round_trip(tmp_path, image):
    """A folder as lerobot-train writes it (OUTPUT/checkpoints/last/pretrained_model); an image policy's
    config.json names ImageNet backbone weights, which loading must not fetch (HF_HUB_OFFLINE, no torchvision
    download): the weights all come from model.safetensors."""
    policy = build_policy("DDIM", 16, 10, image)
    folder = tmp_path / "out" / "checkpoints" / "last" / "pretrained_model"
    pre, post = save_policy(policy, folder, "ResNet18_Weights.IMAGENET1K_V1" if image else None)
    if image:
        assert json.loads((folder / "config.json").read_text())["pretrained_backbone_weights"]
    a = LerobotDiffusion.from_folder(tmp_path / "out")
    assert same_weights(a.policy, policy) and not a.policy.training
    assert a.num_steps == 10 and a.solver == "ddim" and a.sample_shape == (16, 2)
    raw = {k: v[:, -1] for k, v in obs_batch(policy, 2, seed=3).items()}  # one observation step
    ours, theirs = a.preprocessor(dict(raw)), pre(dict(raw))
    assert all(torch.equal(ours[k], theirs[k]) for k in raw)
    assert torch.allclose(ours[STATE], (raw[STATE] + 3) / 4 - 1)  # min-max to [-1, 1], min -3, max 5
    act = torch.rand(2, 2)
    assert torch.equal(a.postprocessor(act), post(act))
    assert torch.allclose(a.postprocessor(act), act * 4 + 1)  # [-1, 1] -> [min, max] = [-3, 5]
    assert ACTION in policy.config.output_features


def test_not_a_policy(tmp_path):
    with pytest.raises(PolicyFolderError, match="is not a folder"):
        load_policy(tmp_path / "nowhere")
    with pytest.raises(PolicyFolderError, match="no config.json"):
        load_policy(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"type": "act"}))
    with pytest.raises(PolicyFolderError, match="'act' policy; only diffusion"):
        load_policy(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"type": "diffusion"}))
    with pytest.raises(PolicyFolderError, match="no model.safetensors"):
        load_policy(tmp_path)


def test_incomplete_or_mismatched_folder(tmp_path):
    policy = build_policy("DDIM", 16, 10)
    save_policy(policy, tmp_path / "p")
    (tmp_path / "p" / "policy_preprocessor.json").unlink()
    with pytest.raises(PolicyFolderError, match="no policy_preprocessor.json"):
        load_policy(tmp_path / "p")
    save_policy(policy, tmp_path / "q")
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    (tmp_path / "q" / "config.json").write_text(json.dumps({**cfg, "down_dims": [16, 32]}))
    with pytest.raises(PolicyFolderError, match="does not fit its config.json"):
        load_policy(tmp_path / "q")


def test_missing_lerobot_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lerobot.policies.diffusion.modeling_diffusion", None)
    with pytest.raises(ImportError, match="make lerobot"):
        load_policy(tmp_path)


@pytest.mark.parametrize("env_mode", [None, "MIN_MAX"])
def test_unnormalised_inputs_are_what_lerobot_leaves_raw(tmp_path, env_mode):
    """``unnormalised_inputs`` names exactly the inputs lerobot's own preprocessor passes through unchanged
    (lerobot 0.6.1's DiffusionConfig maps no ENV mode: observation.environment_state stays raw), and loading such a
    policy warns; with "ENV": "MIN_MAX" in its normalization_mapping nothing is raw and nothing is said."""
    import warnings

    from lerobot.configs.types import NormalizationMode

    from pcm_policy.lerobot.adapter import unnormalised_inputs

    policy = build_policy("DDIM", 16, 10)
    if env_mode:
        policy.config.normalization_mapping = {**policy.config.normalization_mapping,
                                               "ENV": NormalizationMode(env_mode)}
    save_policy(policy, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded, pre, _ = load_policy(tmp_path)
    raw = unnormalised_inputs(loaded.config)
    said = [str(w.message) for w in caught if "unnormalised" in str(w.message)]
    assert raw == ([] if env_mode else ["observation.environment_state"])
    assert bool(said) == bool(raw) and all("observation.environment_state" in m for m in said)
    batch = obs_batch(loaded, 2)
    out = pre({k: v.clone() for k, v in batch.items()})
    for key in batch:
        assert torch.equal(out[key], batch[key]) == (key in raw), key
