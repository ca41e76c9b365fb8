"""Fixed-length windows over episodes with edge padding, and the episode-level train/val split.

A window of `horizon` steps may start up to `pad_before` steps before an episode and end up to
`pad_after` steps after it; positions outside the episode repeat its first / last frame (never
zeros). An episode of length L gives L - horizon + pad_before + pad_after + 1 windows (none if that
is <= 0); PushT (horizon 16, pad_before 1, pad_after 7) gives L - 7.

The split follows the reference recipe so its seeds select the same episodes: `val_mask` draws
round(n * val_ratio) validation episodes (at least 1, at most n - 1) with
`np.random.default_rng(seed).choice`; `downsample_mask` keeps a seeded subset of max_n episodes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numba
import numpy as np


@numba.njit(cache=True)
def _window_indices(episode_ends, keep, horizon, pad_before, pad_after):  # pragma: no cover (jitted)
    n = 0
    for i in range(len(episode_ends)):
        if keep[i]:
            length = episode_ends[i] - (episode_ends[i - 1] if i > 0 else 0)
            n += max(0, length - horizon + pad_before + pad_after + 1)
    out = np.empty((n, 4), dtype=np.int64)
    row = 0
    for i in range(len(episode_ends)):
        if not keep[i]:
            continue
        ep_start = episode_ends[i - 1] if i > 0 else 0
        length = episode_ends[i] - ep_start
        for w in range(-pad_before, length - horizon + pad_after + 1):  # w: window start in the episode
            lo, hi = max(w, 0), min(w + horizon, length)
            out[row, 0] = ep_start + lo  # buffer rows [lo, hi) are real frames ...
            out[row, 1] = ep_start + hi
            out[row, 2] = lo - w  # ... placed at window positions [lo - w, hi - w)
            out[row, 3] = hi - w
            row += 1
    return out


def window_indices(episode_ends, horizon: int, pad_before: int = 0, pad_after: int = 0,
                   episode_mask=None) -> np.ndarray:
    """Rows (buffer_start, buffer_end, sample_start, sample_end), one per window of the kept
    episodes, in episode order. Pads are clamped to [0, horizon - 1]."""
    ends = np.asarray(episode_ends, dtype=np.int64)
    keep = np.ones(len(ends), bool) if episode_mask is None else np.asarray(episode_mask, bool)
    if keep.shape != ends.shape:
        raise ValueError(f"episode_mask has shape {keep.shape}, expected {ends.shape}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    pad_before = min(max(int(pad_before), 0), horizon - 1)
    pad_after = min(max(int(pad_after), 0), horizon - 1)
    return _window_indices(ends, keep, int(horizon), pad_before, pad_after)


def sample_sequence(data: Mapping[str, np.ndarray], horizon: int, buffer_start: int, buffer_end: int,
                    sample_start: int, sample_end: int) -> dict[str, np.ndarray]:
    """One window per key: rows [buffer_start, buffer_end) placed at [sample_start, sample_end) of
    a `horizon`-step window; earlier / later positions repeat the first / last real row."""
    out = {}
    for key, arr in data.items():
        seg = np.asarray(arr[buffer_start:buffer_end])
        if sample_start > 0 or sample_end < horizon:
            seg = seg[np.clip(np.arange(horizon) - sample_start, 0, len(seg) - 1)]
        out[key] = seg
    return out


class SequenceSampler:
    """Edge-padded windows over step-aligned arrays (`data`: key -> array, rows of a buffer)."""

    def __init__(self, data: Mapping[str, np.ndarray], episode_ends, horizon: int, pad_before: int = 0,
                 pad_after: int = 0, episode_mask=None):
        self.data, self.horizon = dict(data), int(horizon)
        self.indices = window_indices(episode_ends, horizon, pad_before, pad_after, episode_mask)

    def __len__(self) -> int:
        return len(self.indices)

    def sample(self, i: int) -> dict[str, np.ndarray]:
        return sample_sequence(self.data, self.horizon, *(int(v) for v in self.indices[i]))


def val_mask(n_episodes: int, val_ratio: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of the validation episodes (reference semantics, see module doc)."""
    mask = np.zeros(n_episodes, dtype=bool)
    if val_ratio <= 0 or n_episodes == 0:
        return mask
    n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    mask[np.random.default_rng(seed).choice(n_episodes, size=n_val, replace=False)] = True
    return mask


def downsample_mask(mask, max_n: int | None, seed: int = 0) -> np.ndarray:
    """Keep a seeded random subset of at most `max_n` of the True entries of `mask`."""
    mask = np.asarray(mask, dtype=bool)
    if max_n is None or mask.sum() <= max_n:
        return mask.copy()
    chosen = np.flatnonzero(mask)[np.random.default_rng(seed).choice(int(mask.sum()), size=int(max_n),
                                                                    replace=False)]
    out = np.zeros_like(mask)
    out[chosen] = True
    return out


def split_masks(n_episodes: int, val_ratio: float, seed: int = 0,
                max_train_episodes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train_mask, val_mask): disjoint; train optionally downsampled to `max_train_episodes`."""
    val = val_mask(n_episodes, val_ratio, seed)
    return downsample_mask(~val, max_train_episodes, seed), val
