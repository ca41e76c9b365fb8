"""Environments. Importing this package registers ``pcm/PushT-v0`` with gymnasium."""

import gymnasium as gym

from .pusht import ENV_ID, PushTEnv

if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="envs.pusht.env:PushTEnv", max_episode_steps=300)

__all__ = ["PushTEnv", "ENV_ID"]
