"""PushT env: the reference's test vectors (the Diffusion Policy reference), gymnasium API, determinism."""

import copy
import math
import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.pusht import PushTEnv
from envs.pusht import geometry as G

LEGACY_START = {  # seed: (agent x, agent y, block x, block y, angle), the reference
    0: (222, 97, 222.9938, 381.5990, 3.0080),
    1: (87, 285, 158.1625, 357.1803, 5.9706),
    100000: (235, 124, 299.6129, 145.2016, 5.3783),
    100001: (365, 182, 234.9343, 304.5125, 5.1851),
    100002: (159, 417, 302.5497, 339.6378, 0.1686),
}


@pytest.mark.parametrize("seed", sorted(LEGACY_START))
def test_legacy_start_states(seed):
    obs, _ = PushTEnv(legacy=True).reset(seed=seed)
    np.testing.assert_allclose(obs, LEGACY_START[seed], atol=5e-5)


@pytest.mark.parametrize("seed, block", [(0, (217, 292, 3.0080)), (100000, (335, 128, 5.3783))])
def test_non_legacy_start_states(seed, block):
    obs, _ = PushTEnv(legacy=False).reset(seed=seed)
    np.testing.assert_allclose(obs[2:], block, atol=5e-5)


@pytest.mark.parametrize("offset, coverage, reward, done", [
    ((0, 0, 0), 1.0, 1.0, True),
    ((10, 0, 0), 0.746499, 0.785788, False),
    ((0, 5, 0), 0.869281, 0.915033, False),
    ((0, 0, 0.1), 0.834166, 0.878069, False),
    ((3, 3, 0.02), 0.931395, 0.980416, False),
    ((50, 0, 0), 0.142857, 0.150376, False),
])
def test_coverage_vectors(offset, coverage, reward, done):
    env = PushTEnv()
    env.reset(seed=0)
    pose = np.add(G.GOAL_POSE, offset)
    # Agent far away so the step does not touch the block; angle before position (exact origin).
    env.set_physics_state((20, 20), (0, 0), pose[:2], pose[2])
    _, r, terminated, truncated, info = env.step(np.array([20.0, 20.0]))
    assert info["coverage"] == pytest.approx(coverage, abs=1e-6)
    assert r == pytest.approx(reward, abs=1e-6)
    assert terminated is done and truncated is False
    assert G.coverage_fast(pose) == pytest.approx(info["coverage"], abs=1e-9)


def test_step_response():
    env = PushTEnv()
    env.reset(options={"reset_to_state": [100, 100, 400, 400, 0]})
    start = env.agent.position.x
    covered = [env.step(np.array([start + 100, 100.0]))[4]["pos_agent"][0] - start for _ in range(5)]
    np.testing.assert_allclose(covered, [29.6, 61.6, 80.8, 90.7, 95.6], atol=0.05)


def test_physics_quirks_and_goal():
    env = PushTEnv()
    assert env.block.moment == 3000 and tuple(env.block.center_of_gravity) == (0, 45)
    assert env.space.damping == 0 and all(s.friction == 0 for s in env.space.shapes)
    expected = [(213.574, 213.574), (298.426, 298.426), (277.213, 319.640), (192.360, 234.787),
                (224.180, 266.607), (245.393, 287.820), (181.754, 351.459), (160.541, 330.246)]
    got = np.vstack([G.to_world(G.BAR, G.GOAL_POSE), G.to_world(G.STEM, G.GOAL_POSE)])
    assert sorted(map(tuple, np.round(got, 3))) == sorted(expected)


@pytest.mark.parametrize("obs_type", ["state", "keypoints", "pixels", "pixels_agent_pos"])
def test_check_env(obs_type):
    check_env(PushTEnv(obs_type=obs_type), skip_render_check=False)


def test_registered_and_keypoints_layout():
    env = gym.make(envs.ENV_ID, obs_type="keypoints", legacy=True)
    obs, info = env.reset(seed=0)
    assert obs.shape == (20,)
    np.testing.assert_allclose(obs[:18].reshape(9, 2), G.keypoints(info["block_pose"]))
    np.testing.assert_allclose(obs[18:], info["pos_agent"])
    assert env.spec.max_episode_steps == 300


def test_same_seed_same_rollout_and_unseeded_resets_differ():
    actions = np.random.default_rng(0).uniform(50, 450, size=(40, 2))

    def run():
        env = PushTEnv()
        obs = [env.reset(seed=7)[0]]
        obs += [env.step(a)[0] for a in actions]
        return np.array(obs), env.reset()[0]

    (a, next_a), (b, next_b) = run(), run()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(next_a, next_b)
    assert not np.array_equal(a[0], next_a)


def _push_until_contact(env):
    """Drive the pusher at the block's centre of gravity until they touch."""
    for _ in range(60):
        x, y, th = env.block_pose
        info = env.step(np.array([x, y]) + G.rotation(th) @ np.array(G.BLOCK_COG))[4]
        if info["n_contacts"] > 0:
            return
    raise AssertionError("the pusher never reached the block")


@pytest.mark.parametrize("copier", [lambda e: pickle.loads(pickle.dumps(e)), copy.deepcopy], ids=["pickle", "deepcopy"])
def test_copy_continues_exactly_also_in_contact(copier):
    """A copy taken while the pusher touches the block continues bit-identically (pymunk issue 181: the
    solver's cached contact impulses and bias velocities are not part of the 10-number physics state)."""
    env = PushTEnv(obs_type="keypoints", render_mode=None)
    env.reset(seed=0)
    env.set_physics_state(*env.get_physics_state())  # set_physics_state is part of what a copy replays
    _push_until_contact(env)
    clone = copier(env)
    np.testing.assert_array_equal(clone._get_obs(), env._get_obs())
    x, y, _ = env.block_pose
    for a in np.array([x, y]) + np.random.default_rng(0).uniform(-20, 20, (20, 2)):
        (o1, r1, t1, _, i1), (o2, r2, t2, _, i2) = env.step(a), clone.step(a)
        np.testing.assert_array_equal(o2, o1)
        assert (r2, t2, i2["n_contacts"]) == (r1, t1, i1["n_contacts"])
    np.testing.assert_array_equal(clone.reset()[0], env.reset()[0])  # the legacy reset stream is carried too


def test_pickle_round_trip_before_any_reset_and_after_reset():
    env = PushTEnv(obs_type="state", render_mode=None)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(env))._get_obs(), env._get_obs())
    env.reset(seed=3)
    clone = pickle.loads(pickle.dumps(env))
    for a in np.random.default_rng(1).uniform(100, 400, size=(5, 2)):
        np.testing.assert_array_equal(clone.step(a)[0], env.step(a)[0])


def _random_start(rng):
    return [*rng.uniform(0, 512, 4), rng.uniform(-10, 10)]


def _actions(rng, env, n):
    """In-space actions that also ram the block into the walls: corners, uniform, and 'push it out'."""
    out_dir = rng.choice([-1.0, 1.0], 2)
    for t in range(n):
        r = rng.random()
        if r < 0.3:
            yield rng.choice([0.0, 512.0], 2)
        elif r < 0.7:
            x, y, th = env.block_pose
            cog = np.array([x, y]) + G.rotation(th) @ np.array(G.BLOCK_COG)
            yield np.clip(cog + out_dir * (60 if t > n // 3 else -90) + rng.normal(0, 15, 2), 0, 512)
        else:
            yield rng.uniform(0, 512, 2)


@pytest.mark.parametrize("obs_type, episodes, steps", [
    ("state", 40, 60), ("keypoints", 40, 60), ("pixels", 3, 15), ("pixels_agent_pos", 3, 15)])
def test_every_observation_is_in_the_observation_space(obs_type, episodes, steps):
    rng = np.random.default_rng(7)
    env = PushTEnv(obs_type=obs_type, render_mode=None)
    space = env.observation_space
    for ep in range(episodes):
        options = {"reset_to_state": _random_start(rng)} if ep % 2 else None
        obs, _ = env.reset(seed=int(rng.integers(2**31)), options=options)
        assert space.contains(obs)
        for a in _actions(rng, env, steps):
            assert env.action_space.contains(a)
            obs = env.step(a)[0]
            assert space.contains(obs), (ep, a, obs if obs_type in ("state", "keypoints") else env.block_pose)


def test_case_block_pressed_into_the_bottom_wall():
    """One valid step from a valid state pressed a keypoint to y = 514.3, outside the old Box(0, 512)."""
    env = gym.make(envs.ENV_ID, obs_type="keypoints", render_mode=None)
    env.reset(seed=0, options={"reset_to_state": [256, 330, 256, 360, 0.0]})
    obs = env.step(np.array([256.0, 512.0]))[0]
    assert obs.max() > 512 and env.observation_space.contains(obs)


def test_block_reach_covers_the_geometry():
    points = np.vstack([G.BLOCK_KEYPOINTS, [[0.0, 0.0]]])
    reach = np.linalg.norm(points[:, None] - np.array(G.BAR + G.STEM)[None], axis=-1).max() + G.AGENT_RADIUS
    assert reach < G.BLOCK_REACH


@pytest.mark.parametrize("state", [[-1, 100, 200, 200, 0], [100, 100, 200, 600, 0], [1, 2, 3, 4]])
def test_reset_to_state_outside_the_window_raises(state):
    with pytest.raises(ValueError, match=r"positions in \[0, 512\]"):
        PushTEnv().reset(options={"reset_to_state": state})


def test_actions_outside_the_box_are_applied_unclipped():
    env = PushTEnv(render_mode=None)
    env.reset(options={"reset_to_state": [256, 256, 100, 400, 0]})
    for _ in range(30):
        obs = env.step(np.array([700.0, 256.0]))[0]
    assert obs[0] > 600  # as the reference: the pusher follows the target out of the window


@pytest.mark.parametrize("bad", [[math.nan, 1.0], [1.0, math.inf]])
def test_non_finite_action_raises(bad):
    env = PushTEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite numbers.*applied unclipped"):
        env.step(np.array(bad))


def test_render_marker_only_in_rendered_frames():
    env = PushTEnv(obs_type="pixels", render_size=96)
    env.reset(seed=0)
    obs, *_ = env.step(np.array([480.0, 480.0]))
    frame = env.render()
    red = (frame[..., 0] > 200) & (frame[..., 1] < 60) & (frame[..., 2] < 60)
    red_obs = (obs[..., 0] > 200) & (obs[..., 1] < 60) & (obs[..., 2] < 60)
    assert frame.shape == (96, 96, 3) and frame.dtype == np.uint8
    assert red.sum() > 0 and red_obs.sum() == 0
    assert abs(np.argwhere(red).mean(0) - [90, 90]).max() < 2  # centred on the action / 512 * 96
