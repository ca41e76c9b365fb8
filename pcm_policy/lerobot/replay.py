"""Replay written episodes in gym-pusht (the real package) and compare its observations with the dataset.

For one episode: put gym-pusht's ``PushTEnv(obs_type="environment_state_agent_pos")`` at the episode's
exact start state through its public ``reset(options={"reset_to_state": ...})``, step the stored actions,
and compare its ``environment_state`` / ``agent_pos`` after every step with the written frames. The same
actions are replayed in this package's env (``envs.pusht``) from the same start, so a difference can be
split into "our physics vs gym-pusht's" and "what the dataset stores vs our physics" (float32 rounding).

Start states: an expert episode starts at the reset of its seed in our env (``legacy=False``, the
demonstrations' setting); a DAgger segment at its stored 10-number ``takeover_state``. gym-pusht's reset
sets the block position BEFORE its angle (pymunk then rotates about the centre of gravity (0, 45)), so the
position handed to it is pre-compensated (``gym_reset_position``) to land the body origin on the target;
a DAgger start's velocities are then written on gym-pusht's bodies (its reset has no velocity argument).
"""

from __future__ import annotations

import numpy as np

from envs.pusht import geometry as G

from .dataset import environment_state


def gym_reset_position(block_xy, angle: float, cog=G.BLOCK_COG) -> np.ndarray:
    """The position P to pass to gym-pusht's reset so that the origin ends at ``block_xy`` after its
    position-then-angle order: the CoG P + cog stays put while the angle turns, so the origin lands at
    P + cog - R(angle) cog; solve for P. Returns (2,) float64 px."""
    cog = np.asarray(cog, dtype=np.float64)
    return np.asarray(block_xy, dtype=np.float64) - cog + G.rotation(angle) @ cog


def start_states(source: dict) -> tuple[tuple, tuple]:
    """(reset state, start state): our env's exact float64 physics state after ``reset(seed)`` (legacy=False)
    and the state the episode started from (the same, or the DAgger ``takeover_state`` written over it),
    each as ``PushTEnv.get_physics_state()``."""
    from envs.pusht.env import PushTEnv

    env = PushTEnv(obs_type="state", legacy=False, render_mode=None)
    env.reset(seed=source["seed"])
    reset = env.get_physics_state()
    if "takeover_state" not in source:
        return reset, reset
    from envs.pusht.env import unflatten_state

    env.set_physics_state(*unflatten_state(source["takeover_state"]))
    return reset, env.get_physics_state()


def make_gym_env(source: dict, direct: bool = True):
    """gym-pusht's env at the episode's start; returns (env, first obs).

    Always through gym-pusht's public reset (``reset_to_state``, position pre-compensated). A DAgger segment
    starts mid-episode, often in contact; ``direct=True`` mirrors how the segment was recorded: reset to the
    seed's start state, then write the takeover state on gym-pusht's pymunk bodies (angle before position,
    velocities too, no physics step). ``direct=False`` resets to the takeover pose itself: gym-pusht's reset
    then runs a physics step with the pusher at rest, which moves a block in contact (reported, not used).
    """
    from gym_pusht.envs.pusht import PushTEnv as GymPushT

    reset, state = start_states(source)
    takeover = "takeover_state" in source
    (ax, ay), _, (bx, by), angle, _, _ = reset if direct else state
    env = GymPushT(obs_type="environment_state_agent_pos")
    px, py = gym_reset_position((bx, by), angle)
    obs, _ = env.reset(options={"reset_to_state": [ax, ay, px, py, angle]})
    if takeover:
        (ax, ay), agent_vel, (bx, by), angle, block_vel, block_w = state
        if direct:  # as PushTEnv.set_physics_state: angle before position, no physics step
            env.agent.position = (ax, ay)
            env.block.angle = float(angle)
            env.block.position = (bx, by)
        env.agent.velocity, env.block.velocity = tuple(agent_vel), tuple(block_vel)
        env.block.angular_velocity = float(block_w)
        obs = env.get_obs()
    return env, obs


def replay_episode(source: dict, frames: dict[str, np.ndarray], direct: bool = True) -> dict:
    """Replay one episode; returns max |difference| (px) over its frames:

    ``gym_vs_data_env`` / ``gym_vs_data_agent``: gym-pusht's observation against the written frames;
    ``gym_vs_ours_env`` / ``gym_vs_ours_agent``: gym-pusht against our env (float64, same actions);
    ``ours_vs_data_env``: our env against the written frames (float32 storage of the pose);
    ``first_step_over_1e3``: first frame where gym-pusht's environment_state is off the data by > 1e-3 px
    (None if never); ``frames``: number of frames compared (the episode length).
    """
    from envs.pusht.env import PushTEnv

    _, state = start_states(source)
    gym_env, gobs = make_gym_env(source, direct)
    ours = PushTEnv(obs_type="state", legacy=False, render_mode=None)
    ours.reset(seed=source["seed"])
    ours.set_physics_state(*state)
    data_env, data_agent = frames["observation.environment_state"], frames["observation.state"]
    actions = np.asarray(frames["action"], dtype=np.float64)
    out = {k: 0.0 for k in ("gym_vs_data_env", "gym_vs_data_agent", "gym_vs_ours_env", "gym_vs_ours_agent",
                            "ours_vs_data_env")}
    first = None
    for t in range(len(actions)):
        g_env, g_agent = np.asarray(gobs["environment_state"]), np.asarray(gobs["agent_pos"])
        o_env, o_agent = environment_state(np.array(ours.block_pose)), np.array(ours.agent.position)
        d = float(np.abs(g_env - data_env[t]).max())
        if first is None and d > 1e-3:
            first = t
        for key, val in (("gym_vs_data_env", d), ("gym_vs_data_agent", np.abs(g_agent - data_agent[t]).max()),
                         ("gym_vs_ours_env", np.abs(g_env - o_env).max()),
                         ("gym_vs_ours_agent", np.abs(g_agent - o_agent).max()),
                         ("ours_vs_data_env", np.abs(o_env - data_env[t]).max())):
            out[key] = max(out[key], float(val))
        if t + 1 < len(actions):
            gobs, *_ = gym_env.step(actions[t])
            ours.step(actions[t])
    return out | {"first_step_over_1e3": first, "frames": len(actions)}
