"""Moved to ``pcm_policy.pusht.policy``; this alias keeps old imports working."""

from .pusht.policy import OBS_DIMS, DiffusionPolicy, PolicyConfig

__all__ = ["OBS_DIMS", "DiffusionPolicy", "PolicyConfig"]
