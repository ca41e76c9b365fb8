"""Data, generic: the zarr replay buffer, edge-padded sequence windows, the episode split.
(The PushT dataset is ``pcm_policy.pusht.dataset``.)"""

from .errors import CorruptStoreError, MissingKeyError, ReplayBufferError, StoreNotFoundError
from .replay_buffer import ReplayBuffer, disk_compressor, to_uint8_image
from .sequence import (
    SequenceSampler,
    downsample_mask,
    sample_sequence,
    split_masks,
    val_mask,
    window_indices,
)

__all__ = [
    "CorruptStoreError",
    "MissingKeyError",
    "ReplayBuffer",
    "ReplayBufferError",
    "SequenceSampler",
    "StoreNotFoundError",
    "disk_compressor",
    "downsample_mask",
    "sample_sequence",
    "split_masks",
    "to_uint8_image",
    "val_mask",
    "window_indices",
]
