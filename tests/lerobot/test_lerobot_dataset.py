"""The PushT LeRobotDataset writer against lerobot and gym-pusht themselves (runs in .venv-lerobot)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

# "lerobot" alone would import this folder as a namespace package where lerobot is not installed.
pytest.importorskip("lerobot.datasets.lerobot_dataset")
gym_pusht_env = pytest.importorskip("gym_pusht.envs.pusht")

from pcm_policy.data.errors import MissingKeyError  # noqa: E402
from pcm_policy.data.replay_buffer import ReplayBuffer  # noqa: E402
from pcm_policy.lerobot import dataset as D  # noqa: E402
from pcm_policy.lerobot.replay import make_gym_env, replay_episode  # noqa: E402

STORES = list(D.DEFAULT_STORES)


def _episode(store: str, i: int):
    for source, frames in D.read_episodes([store], max_episodes=i + 1):
        if source["episode"] == i:
            return source, frames
    raise AssertionError(f"{store} has no episode {i}")


def test_environment_state_is_gym_pusht_get_keypoints():
    """Our corners equal gym-pusht's own get_keypoints on its own pymunk block, at random poses."""
    env = gym_pusht_env.PushTEnv(obs_type="environment_state_agent_pos")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.uniform(0, 512, 2)
        angle = rng.uniform(-20, 20)
        env.block.angle = angle
        env.block.position = (x, y)
        want = env.get_obs()["environment_state"]
        got = D.environment_state(np.array([x, y, angle]))
        assert got.shape == (16,)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_write_and_read_back(tmp_path):
    """One episode per store through lerobot's writer; lerobot reads back exactly the frames we computed."""
    out = tmp_path / "ds"
    summary = D.write_dataset(out, STORES, max_episodes=1, progress=False)
    assert summary["episodes"] == 3
    ds = D.load_dataset(out)
    assert ds.num_episodes == 3 and ds.fps == 10
    sources = json.loads((out / "sources.json").read_text())["episodes"]
    assert [s["store"] for s in sources] == STORES
    assert "takeover_state" not in sources[0] and len(sources[1]["takeover_state"]) == 10
    row = 0
    for e, store in enumerate(STORES):
        _, frames = _episode(store, 0)
        n = len(frames["action"])
        assert sources[e]["length"] == n
        for t in (0, n - 1):
            item = ds[row + t]
            assert int(item["episode_index"]) == e and int(item["frame_index"]) == t
            for key, val in frames.items():
                np.testing.assert_array_equal(item[key].numpy(), val[t])
        row += n
    assert len(ds) == row
    assert not [p for p in tmp_path.iterdir() if p.name != "ds"]  # no temporary folder left


@pytest.mark.parametrize("store,episode", [(STORES[0], 1), (STORES[1], 2), (STORES[2], 0)])
def test_replay_in_gym_pusht(store, episode):
    """gym-pusht, put at the episode's start and fed the stored actions, observes what the dataset holds
    (to float32 storage) and steps bit-identically to our env. The DAgger episodes chosen start in contact."""
    source, frames = _episode(store, episode)
    r = replay_episode(source, frames)
    assert r["frames"] == len(frames["action"])
    assert r["gym_vs_ours_env"] < 1e-9 and r["gym_vs_ours_agent"] < 1e-9
    assert r["gym_vs_data_env"] < 1e-3 and r["gym_vs_data_agent"] < 1e-3
    assert r["first_step_over_1e3"] is None


def test_gym_reset_lands_on_the_start_pose():
    """gym-pusht's reset (position before angle) with the compensated position puts the origin on target."""
    source, frames = _episode(STORES[0], 0)
    _, obs = make_gym_env(source)
    np.testing.assert_allclose(obs["environment_state"], frames["observation.environment_state"][0], atol=1e-3)
    np.testing.assert_allclose(obs["agent_pos"], frames["observation.state"][0], atol=1e-3)


def test_existing_output_is_refused(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="already exists"):
        D.write_dataset(out, STORES, max_episodes=1, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_store_without_state_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.zarr"
    buf = ReplayBuffer.create(bad)
    buf.add_episode({"action": np.zeros((3, 2), np.float32)})
    with pytest.raises(MissingKeyError, match="state"):
        D.write_dataset(tmp_path / "ds", [STORES[0], bad], max_episodes=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zarr"]


def test_features_that_do_not_match():
    features = {k: dict(v) for k, v in D.FEATURES.items()}
    features["observation.environment_state"] = {"dtype": "float32", "shape": (18,)}
    with pytest.raises(ValueError, match=r"observation.environment_state is float32\(18,\)"):
        D.check_features(features, "x")
    del features["action"]
    with pytest.raises(ValueError, match="action missing"):
        D.check_features(features, "x")


def test_not_a_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a LeRobotDataset"):
        D.load_dataset(tmp_path)


def test_missing_lerobot_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "lerobot.datasets.lerobot_dataset", None)
    with pytest.raises(D.LerobotMissingError, match="make lerobot"):
        D.require_lerobot()


def test_reset_position_compensation_formula():
    """P + cog - R(angle) cog == target for the returned P."""
    from envs.pusht import geometry as G
    from pcm_policy.lerobot.replay import gym_reset_position

    target, angle = np.array([200.0, 300.0]), 2.1
    p = gym_reset_position(target, angle)
    cog = np.array(G.BLOCK_COG)
    np.testing.assert_allclose(p + cog - G.rotation(angle) @ cog, target, atol=1e-12)
    assert math.isclose(np.linalg.norm(p - target), np.linalg.norm(cog - G.rotation(angle) @ cog))
