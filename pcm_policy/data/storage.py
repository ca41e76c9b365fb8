"""Storage helpers for the replay buffer: codecs, chunk shapes, image casting, committed-row views."""

from __future__ import annotations

import itertools
import math
import struct

import numcodecs
import numpy as np
import zarr

IMG_KEY = "img"
CHUNK_TARGET_BYTES = 2**21  # ~2 MB per data chunk, as the reference aims for
META_CHUNK = 1024
# Every chunk is written, also one that equals the fill value (zarr 3 skips those by default), so that a
# chunk file that is absent means a damaged store: `check_chunks` refuses it instead of reading zeros.
ARRAY_CONFIG = {"write_empty_chunks": True}
BLOSC_HEADER = struct.Struct("<BBBBIII")  # version, versionlz, flags, typesize, nbytes, blocksize, cbytes
# A chunk's size and header are two reads; a writer appending to the store may atomically replace the file
# between them. A chunk is called damaged only when two reads in a row agree (or after this many reads).
CHECK_READS = 4


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


def check_chunks(arr, rows: int | None = None) -> tuple[list[str], list[str]]:
    """(missing, damaged) chunk keys of a zarr array, found WITHOUT decoding anything.

    Checks the chunks that hold rows [0, rows) (every chunk for None): each must be stored, and its stored
    size must be what its codec needs: a Blosc chunk's 16-byte header gives its compressed size (the
    file's length) and its decompressed size (the chunk's bytes, without filters); an uncompressed chunk
    is the chunk's bytes. The Blosc decoder trusts that header and can crash the process (segmentation
    fault) on a truncated chunk, so this runs before any chunk reaches it. ``damaged`` entries read
    ``"key (reason)"``. Sharded arrays and other codecs are only checked for presence. A chunk that a
    concurrent writer replaces (atomically) between its size and its header read is read again, not
    reported (`CHECK_READS`).
    """
    from zarr.abc.store import RangeByteRequest
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    store, prefix = arr.store_path.store, arr.store_path.path
    chunks = arr.shards or arr.chunks
    shape = (arr.shape[0] if rows is None else min(rows, arr.shape[0]), *arr.shape[1:])
    if arr.ndim == 0 or math.prod(shape) == 0:
        return [], []
    compressors, filters = tuple(arr.compressors), tuple(arr.filters)
    blosc = len(compressors) == 1 and isinstance(compressors[0], (numcodecs.Blosc, zarr.codecs.BloscCodec))
    raw = not compressors and not filters and arr.shards is None
    chunk_bytes = math.prod(arr.chunks) * arr.dtype.itemsize
    missing, damaged = [], []
    for coords in itertools.product(*(range(math.ceil(n / c)) for n, c in zip(shape, chunks, strict=True))):
        name = arr.metadata.encode_chunk_key(coords)
        key = f"{prefix}/{name}" if prefix else name
        if not sync(store.exists(key)):
            missing.append(name)
            continue
        if arr.shards is not None or not (blosc or raw):
            continue
        problem, seen = None, None
        for _ in range(CHECK_READS):  # a writer may replace the file between the two reads (CHECK_READS)
            size = sync(store.getsize(key))
            head = b"" if raw else sync(store.get(key, prototype=default_buffer_prototype(),
                                                  byte_range=RangeByteRequest(0, BLOSC_HEADER.size)))
            head = head if isinstance(head, bytes) else (b"" if head is None else head.to_bytes())
            problem = _chunk_problem(size, head, chunk_bytes, raw, bool(filters))
            if problem is None or (size, head) == seen:
                break
            seen = (size, head)
        if problem is not None:
            damaged.append(f"{name} ({problem})")
    return missing, damaged


def _chunk_problem(size: int, head: bytes, chunk_bytes: int, raw: bool, filtered: bool) -> str | None:
    """Why a chunk file of `size` bytes starting with `head` cannot be the chunk (None when it can)."""
    if raw:
        return None if size == chunk_bytes else f"{size} bytes stored, an uncompressed chunk has {chunk_bytes}"
    if len(head) < BLOSC_HEADER.size:
        return f"{size} bytes stored, shorter than a Blosc header"
    _, _, _, _, nbytes, _, cbytes = BLOSC_HEADER.unpack(head)
    if cbytes != size:
        return f"{size} bytes stored, its Blosc header says {cbytes}: truncated or overwritten"
    if not filtered and nbytes != chunk_bytes:
        return f"its Blosc header says {nbytes} bytes decompressed, a chunk has {chunk_bytes}"
    return None
