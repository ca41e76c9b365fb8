"""Sequence windows, edge padding, the episode split and the PushT lowdim dataset."""

import numpy as np
import pytest
import torch

from pcm_policy.data import (
    ReplayBuffer,
    SequenceSampler,
    downsample_mask,
    split_masks,
    val_mask,
    window_indices,
)
from pcm_policy.pusht.dataset import PushTLowdimDataset, wrap_angle


def reference_windows(lengths, horizon, pad_before, pad_after, keep):
    """Pure-python windows: each is a list of buffer rows, frame index clamped into its episode."""
    pad_before, pad_after = min(pad_before, horizon - 1), min(pad_after, horizon - 1)
    out, start = [], 0
    for length, k in zip(lengths, keep, strict=True):
        if k:
            for w in range(-pad_before, length - horizon + pad_after + 1):
                out.append([start + min(max(w + t, 0), length - 1) for t in range(horizon)])
        start += length
    return out


@pytest.mark.parametrize("horizon,pad_before,pad_after", [(16, 1, 7), (4, 0, 0), (5, 3, 9), (1, 0, 0)])
def test_windows_match_pure_python(horizon, pad_before, pad_after):
    rng = np.random.default_rng(horizon)
    for _ in range(5):
        lengths = rng.integers(1, 40, size=rng.integers(1, 6))
        keep = rng.random(len(lengths)) < 0.8
        ends = np.cumsum(lengths)
        data = {"x": np.arange(ends[-1]), "y": np.arange(2 * ends[-1]).reshape(-1, 2)}
        sampler = SequenceSampler(data, ends, horizon, pad_before, pad_after, keep)
        want = reference_windows(lengths, horizon, pad_before, pad_after, keep)
        assert len(sampler) == len(want)
        for i, rows in enumerate(want):
            got = sampler.sample(i)
            np.testing.assert_array_equal(got["x"], rows)
            np.testing.assert_array_equal(got["y"], data["y"][rows])


def test_pusht_window_count_and_edge_padding():
    lengths = np.array([5, 8, 9, 30, 124])
    idx = window_indices(np.cumsum(lengths), 16, 1, 7)
    assert len(idx) == sum(max(0, n - 7) for n in lengths)
    ends = np.cumsum([30])
    frames = np.arange(30) * 10.0
    sampler = SequenceSampler({"obs": frames}, ends, 16, 1, 7)
    assert len(sampler) == 30 - 7
    first, last = sampler.sample(0)["obs"], sampler.sample(len(sampler) - 1)["obs"]
    np.testing.assert_array_equal(first[:2], [0.0, 0.0])  # frame 0 repeated, never zeros-by-default
    np.testing.assert_array_equal(first[2:], frames[1:15])
    np.testing.assert_array_equal(last[:9], frames[21:])  # starts at L - 16 + 7
    np.testing.assert_array_equal(last[9:], np.full(7, frames[-1]))


def test_split_matches_reference_and_is_seeded():
    val = val_mask(206, 0.02, seed=42)
    assert set(np.flatnonzero(val)) == {18, 90, 134, 157}  # spec §3.4 reference measurement
    train, val2 = split_masks(206, 0.02, seed=42, max_train_episodes=90)
    np.testing.assert_array_equal(val, val2)
    assert train.sum() == 90 and not np.any(train & val)
    assert list(np.flatnonzero(train))[:6] == [7, 9, 10, 11, 13, 16] and np.flatnonzero(train)[-1] == 203
    for n, ratio, seed in [(10, 0.3, 0), (50, 0.1, 7), (3, 0.9, 1)]:
        t, v = split_masks(n, ratio, seed)
        assert not np.any(t & v) and np.all(t | v)
        assert v.sum() == min(max(1, round(n * ratio)), n - 1)
        np.testing.assert_array_equal(v, val_mask(n, ratio, seed))
    assert not np.array_equal(val_mask(100, 0.2, 0), val_mask(100, 0.2, 1))
    assert val_mask(5, 0.0).sum() == 0 and val_mask(1, 0.5).sum() == 0
    np.testing.assert_array_equal(downsample_mask(train, None), train)


def test_wrap_angle():
    theta = np.array([-1e-8, -np.pi, 0.0, 2 * np.pi, 7.0, -20.0], dtype=np.float32)
    wrapped = wrap_angle(theta)
    assert wrapped.dtype == np.float32 and np.all((wrapped >= 0) & (wrapped < 2 * np.pi))
    np.testing.assert_allclose(np.cos(wrapped), np.cos(theta), atol=1e-5)


@pytest.fixture
def pusht_buffer():
    rng = np.random.default_rng(0)
    buf = ReplayBuffer.create()
    for length in (20, 9, 31, 12, 25):
        state = rng.uniform(0, 512, (length, 5)).astype(np.float32)
        state[:, 4] = rng.uniform(-20, 20, length)  # raw, unwrapped pymunk angle
        buf.add_episode({
            "state": state,
            "keypoint": rng.uniform(0, 512, (length, 9, 2)).astype(np.float32),
            "action": rng.uniform(0, 512, (length, 2)).astype(np.float32),
        })
    return buf


def test_keypoints_dataset(pusht_buffer):
    ds = PushTLowdimDataset(pusht_buffer, val_ratio=0.2, seed=0)
    val = ds.get_validation_dataset()
    lengths = pusht_buffer.episode_lengths
    assert len(ds) + len(val) == sum(n - 7 for n in lengths)
    assert len(ds) == sum(n - 7 for n in lengths[ds.train_mask])
    item = ds[0]
    assert item["obs"].shape == (16, 20) and item["action"].shape == (16, 2)
    assert item["obs"].dtype == torch.float32 and item["action"].dtype == torch.float32
    all_obs = ds.get_all_obs()
    assert all_obs.shape == (pusht_buffer.n_steps, 20)
    assert ds.get_all_actions().shape == (pusht_buffer.n_steps, 2)
    state, kp = pusht_buffer["state"], pusht_buffer["keypoint"]
    np.testing.assert_array_equal(all_obs[:, :18], kp.reshape(-1, 18))
    np.testing.assert_array_equal(all_obs[:, 18:], state[:, :2])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["obs"].shape == (4, 16, 20)


def test_state_dataset_wraps_angle(pusht_buffer, tmp_path):
    pusht_buffer.copy_to(tmp_path / "s.zarr")
    ds = PushTLowdimDataset(tmp_path / "s.zarr", obs_type="state", val_ratio=0.0)
    obs = ds.get_all_obs()
    assert obs.shape == (pusht_buffer.n_steps, 5) and ds[len(ds) - 1]["obs"].shape == (16, 5)
    assert np.all((obs[:, 4] >= 0) & (obs[:, 4] < 2 * np.pi))
    np.testing.assert_allclose(np.sin(obs[:, 4]), np.sin(pusht_buffer["state"][:, 4]), atol=1e-4)
    np.testing.assert_array_equal(obs[:, :4], pusht_buffer["state"][:, :4])
    assert len(ds) == sum(n - 7 for n in pusht_buffer.episode_lengths)
    with pytest.raises(ValueError, match="obs_type"):
        PushTLowdimDataset(pusht_buffer, obs_type="pixels")
