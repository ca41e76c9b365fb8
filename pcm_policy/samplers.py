"""Moved to ``pcm_policy.sampling.spec`` (``SamplerSpec``, ``make_sampler``, which also takes a sampler
name); this alias keeps old imports working."""

from .sampling.spec import SAMPLERS, make_sampler

__all__ = ["SAMPLERS", "make_sampler"]
