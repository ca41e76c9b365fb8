"""pcm-policy: diffusion policies sampled with the Picard Consistency Model (PCM)."""

__version__ = "0.1.0"
