"""DAgger relabelling: the policy drives, the scripted expert takes over and its segment is stored.

For a training seed: reset the env (``legacy=False``, as the demonstrations), roll the policy out with
receding horizon for ``takeover_chunks(seed, max_chunks)`` chunks (uniform in 1..max_chunks, drawn
from the seed; the policy also stops early on success, as in evaluation), read the full physics state
there, and let ``run_expert_episode`` continue from exactly that state until coverage >=
``success_coverage`` (or ``max_steps`` expert steps). The expert's rows are the labelled states.

Replaying a stored segment: ``env = PushTEnv(legacy=False); env.reset(seed=seed);
env.set_physics_state(*unflatten_state(takeover_state))``, then step the stored actions.

The policy half is ``pcm_policy.pusht.rollout.run_rollouts`` itself (same noise per (seed, chunk), same
observation history and stopping rule), limited to the takeover chunk.
"""

from __future__ import annotations

import numpy as np

from envs.pusht.env import flatten_state, unflatten_state  # noqa: F401 (re-exported: the stores' state layout)
from envs.pusht.expert import ScriptedExpert, run_expert_episode

from .rollout import run_rollouts

TAKEOVER_STREAM = 0xDA66E  # separates the takeover draw from any other use of the seed


def takeover_chunks(seed: int, max_chunks: int) -> int:
    """How many policy chunks run before the expert takes over: uniform in 1..max_chunks, from the seed."""
    return 1 + int(np.random.default_rng((TAKEOVER_STREAM, seed)).integers(max_chunks))


def policy_prefix(policy, sampler, seed: int, n_chunks: int, *, legacy: bool = False, noise_seed: int = 0) -> dict:
    """Run ``policy`` from the reset of ``seed`` for ``n_chunks`` chunks (fewer if it succeeds first).

    Returns ``env`` (left at the takeover state), ``physics_state``, ``steps``, ``chunks``, ``coverage``,
    ``success`` (coverage > 0.95 reached) and ``n_contacts`` (of the last step).
    """
    # Every chunk executes n_action_steps unless the episode succeeds, so a step limit is a chunk limit.
    out = run_rollouts(policy, sampler, [seed], max_steps=n_chunks * policy.cfg.n_action_steps, legacy=legacy,
                       noise_seed=noise_seed)
    ep, env = out["episodes"][0], out["envs"][0]
    return {"env": env, "physics_state": env.get_physics_state(), "steps": ep["steps"], "chunks": len(ep["chunks"]),
            "coverage": float(ep["final_coverage"]), "success": ep["success"],
            "n_contacts": int(ep["final_n_contacts"])}


def relabel_episode(policy, sampler, seed: int, *, max_chunks: int = 20, success_coverage: float = 0.97,
                    max_steps: int = 300, legacy: bool = False, expert: ScriptedExpert | None = None,
                    noise_seed: int = 0) -> dict:
    """Policy prefix, then the expert from the takeover state; ``run_expert_episode``'s dict plus
    ``takeover_step``, ``takeover_chunks``, ``takeover_state`` (10 float64), ``policy_coverage``,
    ``policy_success`` and ``reason`` (None when the segment is usable, else why it is dropped)."""
    pre = policy_prefix(policy, sampler, seed, takeover_chunks(seed, max_chunks), legacy=legacy,
                        noise_seed=noise_seed)
    ep = run_expert_episode(seed, success_coverage=success_coverage, max_steps=max_steps, legacy=legacy,
                            expert=expert, start_state=pre["physics_state"])
    if ep["steps"]:
        ep["n_contacts"][0] = pre["n_contacts"]  # the contacts of the policy's last step, as a demo row has
    reason = None
    if ep["steps"] == 0:
        reason = "policy already at success_coverage"
    elif not ep["success"]:
        reason = f"expert did not reach {success_coverage} in {max_steps} steps"
    ep.update(takeover_step=pre["steps"], takeover_chunks=pre["chunks"],
              takeover_state=flatten_state(pre["physics_state"]), policy_coverage=pre["coverage"],
              policy_success=pre["success"], reason=reason, success=reason is None)
    return ep
