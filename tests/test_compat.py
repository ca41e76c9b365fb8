"""Old import paths (before the core / task split) still resolve to the same objects."""

import pcm_policy.normalizer as old_normalizer
import pcm_policy.policy as old_policy
import pcm_policy.rollout as old_rollout
import pcm_policy.samplers as old_samplers
from pcm_policy.pusht import normalizer, policy, rollout
from pcm_policy.sampling import SamplerSpec, make_sampler


def test_old_module_paths_are_aliases():
    assert old_policy.DiffusionPolicy is policy.DiffusionPolicy and old_policy.PolicyConfig is policy.PolicyConfig
    assert old_normalizer.NormalizerDict is normalizer.NormalizerDict
    assert old_rollout.run_rollouts is rollout.run_rollouts and old_rollout.summarize is rollout.summarize
    assert old_samplers.make_sampler is make_sampler


def test_old_make_sampler_call_by_name_builds_the_named_spec():
    from diffusers import DDPMScheduler

    s = old_samplers.make_sampler("taa", DDPMScheduler(num_train_timesteps=100))
    assert s.spec == SamplerSpec.named("taa")
