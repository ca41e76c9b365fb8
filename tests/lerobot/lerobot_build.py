"""Small lerobot diffusion policies built by lerobot itself (random weights), for the tests in this folder."""

import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
from lerobot.policies.factory import make_pre_post_processors

STATE, ENV, IMAGE, ACTION = "observation.state", "observation.environment_state", "observation.image", "action"
IMAGE_SHAPE = (3, 64, 64)  # ResNet18 leaves a 2x2 feature map for the spatial softmax


def build_policy(scheduler="DDIM", horizon=16, steps=10, image=False, n_action_steps=8, seed=0, down_dims=(32, 64)):
    """A lerobot DiffusionPolicy (eval mode) with random weights: state (2) + environment state (16) PushT-like
    inputs, or state + one 64x64 image through lerobot's ResNet18 encoder (no ImageNet weights)."""
    inputs = {STATE: PolicyFeature(FeatureType.STATE, (2,))}
    if image:
        inputs[IMAGE] = PolicyFeature(FeatureType.VISUAL, IMAGE_SHAPE)
    else:
        inputs[ENV] = PolicyFeature(FeatureType.ENV, (16,))
    cfg = DiffusionConfig(input_features=inputs, output_features={ACTION: PolicyFeature(FeatureType.ACTION, (2,))},
                          down_dims=down_dims, horizon=horizon, n_action_steps=n_action_steps, n_obs_steps=2,
                          noise_scheduler_type=scheduler, num_inference_steps=steps, device="cpu",
                          pretrained_backbone_weights=None)
    torch.manual_seed(seed)
    return DiffusionPolicy(cfg).eval()


def obs_batch(policy, batch_size, seed=0, steps=True):
    """Random normalised observations: (B, n_obs_steps, ...) per key (``steps``), else one step (B, ...)."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch_size, policy.config.n_obs_steps) if steps else (batch_size,)
    out = {}
    for key, ft in policy.config.input_features.items():
        x = torch.rand(*shape, *ft.shape, generator=g)
        out[key] = x if ft.type == FeatureType.VISUAL else 2 * x - 1
    return out


def dataset_stats(policy):
    """Normalisation statistics for every feature of ``policy`` (min/max/mean/std)."""
    stats = {}
    for key, ft in {**policy.config.input_features, **policy.config.output_features}.items():
        shape = (ft.shape[0], 1, 1) if ft.type == FeatureType.VISUAL else (ft.shape[0],)
        stats[key] = {"min": -3 * torch.ones(shape), "max": 5 * torch.ones(shape),
                      "mean": 0.4 * torch.ones(shape), "std": 0.2 * torch.ones(shape)}
    return stats


def save_policy(policy, folder, backbone_weights=None):
    """Write ``policy`` as lerobot writes a trained policy: config.json + model.safetensors + its processors.
    ``backbone_weights`` is written into config.json (a hub image checkpoint names ImageNet weights there)."""
    pre, post = make_pre_post_processors(policy.config, dataset_stats=dataset_stats(policy))
    saved = policy.config.pretrained_backbone_weights
    policy.config.pretrained_backbone_weights = backbone_weights
    try:
        policy.save_pretrained(folder)
    finally:
        policy.config.pretrained_backbone_weights = saved
    pre.save_pretrained(folder)
    post.save_pretrained(folder)
    return pre, post
