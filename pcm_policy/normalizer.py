"""Moved to ``pcm_policy.pusht.normalizer``; this alias keeps old imports working."""

from .pusht.normalizer import MinMaxNormalizer, NormalizerDict

__all__ = ["MinMaxNormalizer", "NormalizerDict"]
