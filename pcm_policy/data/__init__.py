"""Data: the zarr replay buffer, edge-padded sequence windows, the episode split, PushT datasets.

The PushT dataset (which imports torch) loads on first use, so scripts that only need the replay
buffer (demo collection workers) stay light.
"""

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
    "PushTLowdimDataset",
    "ReplayBuffer",
    "ReplayBufferError",
    "SequenceSampler",
    "StoreNotFoundError",
    "disk_compressor",
    "downsample_mask",
    "pusht_obs",
    "sample_sequence",
    "split_masks",
    "to_uint8_image",
    "val_mask",
    "window_indices",
    "wrap_angle",
]

_LAZY = {"PushTLowdimDataset", "pusht_obs", "wrap_angle"}


def __getattr__(name):
    if name in _LAZY:
        from . import pusht_dataset

        return getattr(pusht_dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
