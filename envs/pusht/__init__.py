"""PushT gymnasium environment (pymunk physics, pygame rendering), scripted expert and teleop."""

from .env import PushTEnv

ENV_ID = "pcm/PushT-v0"

__all__ = ["PushTEnv", "ENV_ID"]
