"""Storage helpers for the replay buffer: codecs, chunk shapes, image casting, committed-row views."""

from __future__ import annotations

import numcodecs
import numpy as np
import zarr

IMG_KEY = "img"
CHUNK_TARGET_BYTES = 2**21  # ~2 MB per data chunk, as the reference aims for
META_CHUNK = 1024


def disk_compressor(zarr_format: int = 2):
    """The reference "disk" preset: Blosc zstd, clevel 5, bit-shuffle."""
    if zarr_format == 2:
        return numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
    return zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")


def time_chunks(step_shape: tuple[int, ...], dtype, target_bytes: int = CHUNK_TARGET_BYTES) -> tuple:
    """Chunk shape (rows, *step_shape): whole steps, about `target_bytes` per chunk."""
    row_bytes = int(np.prod(step_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return (max(1, target_bytes // max(row_bytes, 1)), *step_shape)


def to_uint8_image(x: np.ndarray) -> np.ndarray:
    """Cast images stored as floats with values 0..255 to uint8 (uint8 input is returned as is)."""
    if x.dtype == np.uint8:
        return x
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


class ZarrRows:
    """A zarr array of a `ReplayBuffer` seen only up to its last complete episode.

    Supports numpy-style row indexing and `np.asarray`; read errors name the store (`buffer._read`).
    """

    def __init__(self, buffer, key: str):
        self._buffer, self._key = buffer, key
        self.zarr = buffer._data[key]  # the raw array (chunks, compressors, ...)

    shape = property(lambda self: (self._buffer.n_steps, *self.zarr.shape[1:]))
    dtype = property(lambda self: self.zarr.dtype)
    ndim = property(lambda self: self.zarr.ndim)

    def __len__(self) -> int:
        return self._buffer.n_steps

    def __getitem__(self, idx):
        idx = idx if isinstance(idx, tuple) else (idx,)
        first, rest, n = idx[0], idx[1:], self._buffer.n_steps
        if isinstance(first, (int, np.integer)):
            i = int(first) + (n if first < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"row {first} out of range for {n} rows")
            return self._buffer._read(self._key, (i, *rest))
        if isinstance(first, slice) and (first.step or 1) == 1:
            return self._buffer._read(self._key, (slice(*first.indices(n)[:2]), *rest))
        rows = np.arange(n)[first]  # any other numpy index: read the covering span, then index it
        if rows.size == 0:
            return np.empty((0, *self.shape[1:]), self.dtype)[(slice(None), *rest)]
        lo = int(rows.min())
        span = self._buffer._read(self._key, slice(lo, int(rows.max()) + 1))
        return span[(rows - lo, *rest)]

    def __array__(self, dtype=None, copy=None):
        a = self[:]
        return a if dtype is None else a.astype(dtype)
