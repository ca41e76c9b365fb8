"""Moved to ``pcm_policy.pusht.rollout``; this alias keeps old imports working."""

from .pusht.rollout import chunk_noise, run_rollouts, summarize

__all__ = ["chunk_noise", "run_rollouts", "summarize"]
