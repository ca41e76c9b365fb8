"""PushT conditions for comparing samplers off the evaluation seeds: start states and visited states.

Evaluation seeds (100000-100049) never tune or pick anything here; these helpers draw training-seed
conditions (PCT's rollout seeds start at 400000, ``pct_data.TrajDataConfig.rollout_seed``).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["EVAL_SEEDS", "check_seeds", "reset_conditions", "rollout_conditions"]

EVAL_SEEDS = range(100_000, 100_050)


def check_seeds(seeds) -> None:
    """ValueError if any seed is an evaluation seed (those never tune or select settings)."""
    bad = sorted(set(seeds) & set(EVAL_SEEDS))
    if bad:
        raise ValueError(f"seeds {bad[:3]}... are evaluation seeds (100000-100049), which never tune anything; "
                         "use training seeds (e.g. 400000 on)")


def reset_conditions(policy, seeds) -> torch.Tensor:
    """Conditions ``(len(seeds), cond_dim)`` of the env's start states (legacy reset of each seed; the first
    observation repeated over the history, as a rollout's first chunk sees it)."""
    from envs.pusht import PushTEnv

    obs = []
    for s in seeds:
        o, _ = PushTEnv(obs_type=policy.cfg.obs_type).reset(seed=s)
        obs.append(np.stack([o] * policy.cfg.n_obs_steps))
    return policy.condition(torch.as_tensor(np.stack(obs), dtype=torch.float32))


@torch.no_grad()
def rollout_conditions(policy, seeds, *, max_steps: int = 96, k: int = 10) -> torch.Tensor:
    """Conditions of every chunk of DDIM-``k`` rollouts of ``policy`` on ``seeds`` (``max_steps`` env steps
    each): states the policy visits, not only start states. Returns ``(N, cond_dim)``."""
    from ..sampling import make_sampler
    from .rollout import run_rollouts

    check_seeds(seeds)
    shown = []
    run_rollouts(policy, make_sampler("ddim-k", policy.noise_scheduler, k=k), list(seeds), max_steps=max_steps,
                 on_chunk=lambda c, obs, out: shown.append(obs.clone()))
    return policy.condition(torch.cat(shown))
