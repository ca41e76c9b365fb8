"""PushT low-dimensional dataset: edge-padded windows of (obs, action) from a replay buffer.

Observation types (per step):
    "keypoints": the 9 block keypoints flattened (18) + agent position `state[:, :2]` = 20-D,
                 as the reference lowdim dataset builds it;
    "state":     [agent_x, agent_y, block_x, block_y, block_angle] = 5-D, with the angle wrapped to
                 [0, 2pi) as the env reports it (the dataset stores the raw, unwrapped pymunk angle).

The arrays are loaded into numpy once; `__getitem__` only slices them. Episodes are split at the
episode level (`split_masks`, reference recipe: val_ratio 0.02, seed 42, and max_train_episodes=90
in the reference config; None here trains on every non-validation episode). The normaliser is
fitted on all episodes before the split: use `get_all_obs()` / `get_all_actions()`.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import torch

from ..data.errors import MissingKeyError
from ..data.replay_buffer import ReplayBuffer
from ..data.sequence import SequenceSampler, split_masks

OBS_DIMS = {"keypoints": 20, "state": 5}


def wrap_angle(theta: np.ndarray) -> np.ndarray:
    """Wrap angles to [0, 2pi) (guarding the float rounding of tiny negatives up to 2pi)."""
    two_pi = theta.dtype.type(2 * np.pi)
    out = np.mod(theta, two_pi)
    return np.where(out >= two_pi, out.dtype.type(0), out)


def pusht_obs(state: np.ndarray, keypoint: np.ndarray | None, obs_type: str) -> np.ndarray:
    """Per-step observations (N, D) float32 from the buffer's `state` (N, 5) and `keypoint` (N, 9, 2)."""
    state = np.asarray(state, dtype=np.float32)
    if obs_type == "keypoints":
        kp = np.asarray(keypoint, dtype=np.float32).reshape(len(state), -1)
        return np.concatenate([kp, state[:, :2]], axis=1)
    if obs_type == "state":
        return np.concatenate([state[:, :4], wrap_angle(state[:, 4:5])], axis=1)
    raise ValueError(f"obs_type must be one of {sorted(OBS_DIMS)}, got {obs_type!r}")


class PushTLowdimDataset(torch.utils.data.Dataset):
    """Windows {"obs": float32 (horizon, D), "action": float32 (horizon, 2)} as torch tensors.

    Args:
        buffer_or_path: a `ReplayBuffer` or the path of a store (opened read-only).
        horizon, pad_before, pad_after: window length and edge padding (PushT: 16, 1, 7).
        obs_type: "keypoints" (20-D) or "state" (5-D, angle wrapped).
        val_ratio, seed, max_train_episodes: the episode-level split (`split_masks`).
        split: "train" or "val".
    """

    def __init__(self, buffer_or_path: ReplayBuffer | str | os.PathLike, horizon: int = 16,
                 pad_before: int = 1, pad_after: int = 7, obs_type: str = "keypoints",
                 val_ratio: float = 0.02, seed: int = 42, split: str = "train",
                 max_train_episodes: int | None = None):
        if obs_type not in OBS_DIMS:
            raise ValueError(f"obs_type must be one of {sorted(OBS_DIMS)}, got {obs_type!r}")
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        buf = buffer_or_path
        if not isinstance(buf, ReplayBuffer):
            buf = ReplayBuffer.open(buf)
        needed = ["state", "action"] + (["keypoint"] if obs_type == "keypoints" else [])
        missing = [k for k in needed if k not in buf]
        if missing:
            raise MissingKeyError(f"{buf._where()}: obs_type={obs_type!r} needs data/{missing}, the store "
                                  f"has {buf.keys()}; use a PushT store with those keys")
        arrays = buf.load(needed)
        self.obs = pusht_obs(arrays["state"], arrays.get("keypoint"), obs_type)
        self.action = np.ascontiguousarray(arrays["action"], dtype=np.float32)
        self.episode_ends = buf.episode_ends
        self.obs_type, self.horizon = obs_type, horizon
        self.pad_before, self.pad_after = pad_before, pad_after
        self.train_mask, self.val_mask = split_masks(buf.n_episodes, val_ratio, seed, max_train_episodes)
        self._set_split(split)

    def _set_split(self, split: str) -> None:
        self.split = split
        mask = self.train_mask if split == "train" else self.val_mask
        self.sampler = SequenceSampler({"obs": self.obs, "action": self.action}, self.episode_ends,
                                       self.horizon, self.pad_before, self.pad_after, mask)

    def get_validation_dataset(self) -> PushTLowdimDataset:
        """The validation split of the same data (arrays shared, not reloaded)."""
        val = copy.copy(self)
        val._set_split("val")
        return val

    @property
    def obs_dim(self) -> int:
        return self.obs.shape[1]

    def get_all_obs(self) -> np.ndarray:
        """Observations of every step of every episode (N, D), for fitting the normaliser."""
        return self.obs

    def get_all_actions(self) -> np.ndarray:
        """Actions of every step of every episode (N, 2), for fitting the normaliser."""
        return self.action

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.sampler.sample(i).items()}
