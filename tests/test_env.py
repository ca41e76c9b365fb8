"""PushT env: the reference's test vectors (shared/spec/pusht.md), gymnasium API, determinism."""

import math
import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.pusht import PushTEnv
from envs.pusht import geometry as G

LEGACY_START = {  # seed: (agent x, agent y, block x, block y, angle), pusht.md 2.8
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


def test_pickle_round_trip():
    env = PushTEnv(obs_type="keypoints")
    env.reset(seed=3)
    for a in np.random.default_rng(1).uniform(100, 400, size=(5, 2)):
        env.step(a)
    clone = pickle.loads(pickle.dumps(env))
    np.testing.assert_array_equal(clone._get_obs(), env._get_obs())
    target = np.array([30.0, 30.0])  # move away from the block: no cached contact impulses matter
    np.testing.assert_allclose(clone.step(target)[0], env.step(target)[0], atol=1e-9)
    np.testing.assert_array_equal(clone.reset()[0], env.reset()[0])


@pytest.mark.parametrize("bad", [[math.nan, 1.0], [1.0, math.inf]])
def test_non_finite_action_raises(bad):
    env = PushTEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
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
