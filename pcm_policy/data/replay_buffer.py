"""Replay buffer: episodes of step-aligned arrays, in memory (numpy) or on disk (zarr).

Layout, the reference dataset's (`pusht_cchi_v7_replay.zarr`):

    data/<key>          arrays sharing their first dimension (one row per env step)
    meta/episode_ends   int64, exclusive end row of each episode
    meta/episode_<name> optional per-episode extras, e.g. `meta/episode_seed`

Episode i spans rows [episode_ends[i-1], episode_ends[i]) (0 for i = 0). On disk the store is zarr
FORMAT 2 (read and written with zarr-python 3), data arrays Blosc zstd clevel 5 bit-shuffle (the
reference's "disk" preset), chunked along time only; `meta/*` arrays are uncompressed.

Crash safety: `add_episode` first resizes and fills every data array and extra, and extends
`meta/episode_ends` LAST. Readers trust `episode_ends`: rows past its last value (left by an
interrupted write) are invisible and the next `add_episode` overwrites them. Each file write is
atomic (zarr's LocalStore writes a temporary file and renames it); the only window between two
writes of the commit (`episode_ends` grown, its new value not yet written) leaves a trailing 0, which
can never be a valid end, so it is dropped on open.

Several writers: `add_episode` holds the store's writer lock (`io.exclusive` on `<store>/.writer.lock`,
waiting for it) and first re-reads `meta/episode_ends`: a handle that another writer has appended to since
it was opened (two collect_demos runs on one --out) refuses with a `ReplayBufferError` instead of writing
its rows over the committed episodes (zarr-python issue 2077: appends are resize + write, uncoordinated).
A committed episode is never lost.

Damage: `open` checks every chunk that holds committed rows before anything is decoded: a chunk file that
is absent (zarr would read it as the fill value, zeros) or whose stored size does not match what its codec
needs (a truncated Blosc chunk can crash the decoder) is refused with a `CorruptStoreError` naming the
store, the array and the chunks (a chunk that another writer replaces between the check's two reads is read
again, not refused). Stores written here store every chunk, fill-value ones included; for a
store written elsewhere with zarr's `write_empty_chunks=False`, `open(..., allow_missing_chunks=True)`
reads absent chunks as the fill value.

Images: the reference release stores `img` as float32 with integer values 0..255. Methods that load
data for use (`get_episode`, `get_steps`, `load`, `to_numpy`) cast a floating `img` to uint8 unless
`img_uint8=False`; raw access (`buffer[key]`) and `copy_to` keep the stored dtype.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import zarr

from ..io import exclusive
from .errors import CorruptStoreError, MissingKeyError, ReplayBufferError, StoreNotFoundError
from .storage import (
    ARRAY_CONFIG,
    IMG_KEY,
    META_CHUNK,
    ZarrRows,
    check_chunks,
    disk_compressor,
    time_chunks,
    to_uint8_image,
)

COPY_BLOCK_BYTES = 2**26
WRITER_LOCK = ".writer.lock"  # held while an episode is appended (module doc)


class ReplayBuffer:
    """Episodes of step-aligned arrays. Build with `create`, `open` or `open_or_create`."""

    def __init__(self, data, meta, episode_ends, *, group=None, path=None, read_only=False):
        self._data = dict(data)  # key -> np.ndarray (with spare capacity) or zarr.Array
        self._meta = dict(meta)  # extra name -> per-episode array (numpy or zarr)
        self._ends = np.asarray(episode_ends, dtype=np.int64)  # committed ends: the truth
        self._group, self._path, self._read_only = group, path, read_only
        self._ee = group["meta/episode_ends"] if group is not None else None

    # ---------------------------------------------------------------- construction
    @classmethod
    def create(cls, path: str | os.PathLike | None = None, *, overwrite: bool = False) -> ReplayBuffer:
        """An empty buffer: in memory (numpy) for `path=None`, else a new zarr format-2 store."""
        if path is None:
            return cls({}, {}, np.zeros(0, np.int64))
        path = Path(path)
        if path.exists():
            if not overwrite:
                raise ReplayBufferError(
                    f"{path}: already exists; open it with ReplayBuffer.open(path, mode='a') to append, "
                    "or pass overwrite=True to replace it")
            shutil.rmtree(path)
        group = zarr.open_group(str(path), mode="w", zarr_format=2)
        group.require_group("data")
        group.require_group("meta").create_array(
            "episode_ends", shape=(0,), chunks=(META_CHUNK,), dtype="int64", compressors=None, config=ARRAY_CONFIG)
        return cls.open(path, mode="a")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r", *, allow_missing_chunks: bool = False) -> ReplayBuffer:
        """Open a zarr store (format 2 or 3; a `.zip` file read-only) for reading ('r') or appending ('a').

        Every chunk holding committed rows is checked first (module doc); ``allow_missing_chunks`` reads
        absent ones as the fill value (stores written with zarr's ``write_empty_chunks=False``)."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' (read-only) or 'a' (append), got {mode!r}")
        path = Path(path)
        if not path.exists():
            raise StoreNotFoundError(
                f"{path}: no such replay buffer store; check the path (or create one with "
                "ReplayBuffer.create(path))")
        try:
            if path.is_file() and path.suffix == ".zip":
                if mode != "r":
                    raise ReplayBufferError(f"{path}: zip stores open read-only; unzip it to append")
                store = zarr.storage.ZipStore(str(path), mode="r")
            else:
                store = str(path)
            group = zarr.open_group(store, mode="r" if mode == "r" else "r+", use_consolidated=False)
            return cls._from_group(group, path, read_only=mode == "r", allow_missing_chunks=allow_missing_chunks)
        except ReplayBufferError:
            raise
        except Exception as e:
            raise CorruptStoreError(
                f"{path}: cannot read it as a zarr replay buffer ({type(e).__name__}: {e}); expected a "
                "zarr group with data/<key> arrays and meta/episode_ends. Restore or re-create the store"
            ) from e

    @classmethod
    def open_or_create(cls, path: str | os.PathLike) -> ReplayBuffer:
        """Open `path` for appending, creating an empty store there first if it does not exist."""
        return cls.open(path, mode="a") if Path(path).exists() else cls.create(path)

    @classmethod
    def _from_group(cls, group, path: Path, read_only: bool, allow_missing_chunks: bool = False) -> ReplayBuffer:
        meta = group.get("meta")
        if not isinstance(group.get("data"), zarr.Group) or not isinstance(meta, zarr.Group) \
                or not isinstance(meta.get("episode_ends"), zarr.Array):
            raise ReplayBufferError(
                f"{path}: not a replay buffer store (needs groups data/ and meta/ and the array "
                "meta/episode_ends); check the path")
        ee = meta["episode_ends"]
        # its last entry may be a commit in progress (or interrupted) between the resize and the write: when it
        # opens a new chunk, that chunk is not there yet and the entry reads as 0, which is dropped below
        _check_chunks(path, "meta/episode_ends", ee, max(ee.shape[0] - 1, 0), allow_missing_chunks)
        try:
            ends = np.asarray(ee[:])
        except Exception as e:
            raise CorruptStoreError(f"{path}: meta/episode_ends cannot be read ({e}); restore or "
                                    "re-create the store") from e
        if ends.ndim != 1 or not np.issubdtype(ends.dtype, np.integer):
            raise ReplayBufferError(f"{path}: meta/episode_ends must be a 1-D integer array, found "
                                    f"shape {ends.shape} dtype {ends.dtype}")
        if len(ends) and ends[-1] == 0:  # commit interrupted between resize and write
            ends = ends[:-1]
        if len(ends) and (ends[0] <= 0 or np.any(np.diff(ends) <= 0)):
            raise ReplayBufferError(f"{path}: meta/episode_ends must be strictly increasing and "
                                    f"positive, found {ends.tolist()[:10]}...; the store is damaged")
        n_steps, n_eps = (int(ends[-1]) if len(ends) else 0), len(ends)
        data = dict(group["data"].arrays())
        for key, arr in data.items():
            if arr.ndim == 0 or arr.shape[0] < n_steps:
                raise ReplayBufferError(
                    f"{path}: data/{key} has {arr.shape[0] if arr.ndim else 0} rows but "
                    f"meta/episode_ends says {n_steps} steps (arrays of unequal length); the store "
                    "is truncated or damaged: restore or re-create it")
        extras = {n[len("episode_"):]: a for n, a in meta.arrays()
                  if n.startswith("episode_") and n != "episode_ends"}
        for name, arr in extras.items():
            if arr.ndim == 0 or arr.shape[0] < n_eps:
                raise ReplayBufferError(f"{path}: meta/episode_{name} has fewer rows than the {n_eps} "
                                        "episodes; restore or re-create the store")
        for key, arr in data.items():
            _check_chunks(path, f"data/{key}", arr, n_steps, allow_missing_chunks)
        for name, arr in extras.items():
            _check_chunks(path, f"meta/episode_{name}", arr, n_eps, allow_missing_chunks)
        return cls(data, extras, ends, group=group, path=path, read_only=read_only)

    # ---------------------------------------------------------------- inspection
    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def backend(self) -> str:
        return "numpy" if self._group is None else "zarr"

    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends.copy()

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self._ends, prepend=0)

    def keys(self) -> list[str]:
        return list(self._data)

    def meta_keys(self) -> list[str]:
        """Names of the per-episode extras (`meta/episode_<name>`), e.g. ['seed']."""
        return list(self._meta)

    def __contains__(self, key) -> bool:
        return key in self._data

    def __repr__(self) -> str:
        return (f"ReplayBuffer({self._where()}, {self.n_episodes} episodes, {self.n_steps} steps, "
                f"keys={self.keys()})")

    def _where(self) -> str:
        return str(self._path) if self._path is not None else "<in-memory replay buffer>"

    def _check_key(self, key: str) -> None:
        if key not in self._data:
            raise MissingKeyError(f"{self._where()}: no array data/{key}; it has {self.keys()}. Use one "
                                  "of those keys, or re-create the store with this key")

    def __getitem__(self, key: str):
        """The committed rows of `data/<key>`: a numpy view, or a lazy array-like for zarr."""
        self._check_key(key)
        if self._group is None:
            return self._data[key][: self.n_steps]
        return ZarrRows(self, key)

    def _read(self, key: str, sel) -> np.ndarray:
        try:
            return np.asarray(self._data[key][sel])
        except Exception as e:
            raise CorruptStoreError(
                f"{self._where()}: cannot read data/{key} ({type(e).__name__}: {e}); a chunk is "
                "damaged: restore the store from a copy or re-create it") from e

    def episode_meta(self, name: str) -> np.ndarray:
        """Per-episode extra `meta/episode_<name>` (e.g. 'seed'), one entry per complete episode."""
        if name not in self._meta:
            raise MissingKeyError(f"{self._where()}: no meta/episode_{name}; it has "
                                  f"{self.meta_keys()}")
        return np.asarray(self._meta[name][: self.n_episodes])

    # ---------------------------------------------------------------- reading
    def get_episode_slice(self, i: int) -> slice:
        """Rows of episode i (negative i counts from the end)."""
        n = self.n_episodes
        if not -n <= i < n:
            raise IndexError(f"episode {i} out of range: {self._where()} has {n} episodes")
        i %= n
        return slice(int(self._ends[i - 1]) if i else 0, int(self._ends[i]))

    def get_steps(self, start: int, stop: int, keys: Iterable[str] | None = None,
                  img_uint8: bool = True) -> dict[str, np.ndarray]:
        """Rows [start, stop) of each key as numpy copies (floating `img` cast to uint8)."""
        out = {}
        for key in self.keys() if keys is None else keys:
            self._check_key(key)
            x = np.array(self[key][start:stop])
            out[key] = to_uint8_image(x) if img_uint8 and key == IMG_KEY else x
        return out

    def get_episode(self, i: int, keys: Iterable[str] | None = None,
                    img_uint8: bool = True) -> dict[str, np.ndarray]:
        """Episode i as a dict of numpy arrays (copies)."""
        s = self.get_episode_slice(i)
        return self.get_steps(s.start, s.stop, keys, img_uint8)

    def load(self, keys: Iterable[str] | None = None, img_uint8: bool = True) -> dict[str, np.ndarray]:
        """Every committed row of each key, as numpy."""
        return self.get_steps(0, self.n_steps, keys, img_uint8)

    # ---------------------------------------------------------------- writing
    def add_episode(self, data: Mapping[str, np.ndarray], meta: Mapping[str, object] | None = None) -> None:
        """Append one episode: `data` maps key -> array of L >= 1 rows; `meta` maps name -> value,
        stored in `meta/episode_<name>` (e.g. `meta={"seed": 3}`). Crash safe (see module doc)."""
        if self._read_only:
            raise ReplayBufferError(f"{self._where()}: opened read-only; use ReplayBuffer.open(path, "
                                    "mode='a') to append")
        episode = {k: np.asarray(v) for k, v in data.items()}
        extras = {k: np.asarray(v) for k, v in (meta or {}).items()}
        lengths = {k: (v.shape[0] if v.ndim else 0) for k, v in episode.items()}
        if not episode or len(set(lengths.values())) != 1 or min(lengths.values()) < 1:
            raise ReplayBufferError(f"{self._where()}: an episode needs arrays of one common length "
                                    f">= 1, got lengths {lengths}")
        self._check_same_keys("data/", set(self._data), set(episode))
        self._check_same_keys("meta/episode_", set(self._meta), set(extras))
        for name, value in episode.items():  # refuse bad rows before writing anything
            self._check_rows(self._data.get(name), f"data/{name}", value)
        for name, value in extras.items():
            self._check_rows(self._meta.get(name), f"meta/episode_{name}", value[None])
        if self._group is None:
            self._append(episode, extras, next(iter(lengths.values())))
            return
        with exclusive(Path(self._path) / WRITER_LOCK, wait=True, what="replay buffer"):
            self._check_not_stale()
            self._append(episode, extras, next(iter(lengths.values())))

    def _check_not_stale(self) -> None:
        """Under the writer lock: refuse to append when another handle committed episodes since this one read
        ``meta/episode_ends`` (its rows would overwrite them)."""
        try:
            ends = np.asarray(self._group["meta/episode_ends"][:])
        except Exception as e:
            raise CorruptStoreError(f"{self._where()}: meta/episode_ends cannot be read ({e}); restore or "
                                    "re-create the store") from e
        if len(ends) and ends[-1] == 0:  # an interrupted commit (module doc)
            ends = ends[:-1]
        if not np.array_equal(ends, self._ends):
            raise ReplayBufferError(
                f"{self._where()}: another writer changed the store since this handle opened it ({len(ends)} "
                f"episodes there, {len(self._ends)} here); appending would overwrite its episodes. Run one writer "
                "per store, or re-open it with ReplayBuffer.open(path, mode='a') and append again")

    def _append(self, episode: dict, extras: dict, length: int) -> None:
        start, k = self.n_steps, self.n_episodes
        stop = start + length
        for key, value in episode.items():
            self._data[key] = self._write(self._data.get(key), "data", key, start, stop, value)
        for name, value in extras.items():
            self._meta[name] = self._write(self._meta.get(name), "meta", f"episode_{name}", k, k + 1,
                                           value[None])
        if self._group is not None:  # the commit: episode_ends is extended last
            self._ee.resize((k + 1,))
            self._ee[k] = stop
        self._ends = np.append(self._ends, np.int64(stop))

    def _check_same_keys(self, prefix: str, have: set, given: set) -> None:
        if given == have or (self.n_episodes == 0 and have <= given):
            return
        raise ReplayBufferError(
            f"{self._where()}: episode keys {sorted(prefix + k for k in given)} differ from the "
            f"store's {sorted(prefix + k for k in have)}; every episode must give the same keys")

    def _check_rows(self, arr, name: str, value: np.ndarray) -> None:
        if arr is not None and (arr.shape[1:] != value.shape[1:]
                                or not np.can_cast(value.dtype, arr.dtype, "same_kind")):
            raise ReplayBufferError(f"{self._where()}: {name} holds rows of shape {arr.shape[1:]} "
                                    f"{arr.dtype}, got {value.shape[1:]} {value.dtype}")

    def _write(self, arr, group: str, name: str, start: int, stop: int, value: np.ndarray):
        """Write rows [start, stop) of one array, creating or growing it; returns the array."""
        if arr is not None:
            value = value.astype(arr.dtype, copy=False)
        if self._group is None:  # numpy: grow capacity geometrically, rows past `stop` are spare
            if arr is None or arr.shape[0] < stop:
                new = np.empty((max(stop, 2 * (0 if arr is None else arr.shape[0])), *value.shape[1:]),
                               value.dtype)
                if arr is not None:
                    new[:start] = arr[:start]
                arr = new
            arr[start:stop] = value
            return arr
        if arr is None:
            fmt = self._group.metadata.zarr_format
            chunks = time_chunks(value.shape[1:], value.dtype) if group == "data" \
                else (META_CHUNK, *value.shape[1:])
            arr = self._group[group].create_array(
                name, shape=(0, *value.shape[1:]), chunks=chunks, dtype=value.dtype,
                compressors=disk_compressor(fmt) if group == "data" else None, config=ARRAY_CONFIG)
        arr.resize((stop, *value.shape[1:]))  # also drops any uncommitted tail of a crashed write
        arr[start:stop] = value
        return arr

    # ---------------------------------------------------------------- conversion
    def to_numpy(self, keys: Iterable[str] | None = None, img_uint8: bool = True) -> ReplayBuffer:
        """An in-memory copy holding the complete episodes (floating `img` cast to uint8)."""
        data = self.load(keys, img_uint8)
        extras = {n: self.episode_meta(n).copy() for n in self.meta_keys()}
        return ReplayBuffer(data, extras, self._ends.copy())

    def copy_to(self, path: str | os.PathLike, keys: Iterable[str] | None = None,
                overwrite: bool = False) -> ReplayBuffer:
        """Write the complete episodes to a new zarr format-2 store at `path` (stored dtypes kept),
        via a temporary directory renamed at the end; returns it opened for appending."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise ReplayBufferError(f"{path}: already exists; pass overwrite=True to replace it")
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        dst = ReplayBuffer.create(tmp, overwrite=True)
        for key in self.keys() if keys is None else keys:
            src = self[key]
            chunks = src.zarr.chunks if isinstance(src, ZarrRows) else time_chunks(src.shape[1:], src.dtype)
            arr = dst._group["data"].create_array(key, shape=src.shape, chunks=chunks, dtype=src.dtype,
                                                  compressors=disk_compressor(2), config=ARRAY_CONFIG)
            row_bytes = max(1, int(np.prod(src.shape[1:], dtype=np.int64)) * src.dtype.itemsize)
            block = max(1, COPY_BLOCK_BYTES // row_bytes // chunks[0]) * chunks[0]
            for a in range(0, self.n_steps, block):
                arr[a: a + block] = np.asarray(src[a: a + block])
        for name in self.meta_keys():
            v = self.episode_meta(name)
            dst._group["meta"].create_array(f"episode_{name}", shape=v.shape, dtype=v.dtype,
                                            chunks=(META_CHUNK, *v.shape[1:]), compressors=None,
                                            config=ARRAY_CONFIG)[:] = v
        dst._ee.resize((self.n_episodes,))
        dst._ee[:] = self._ends
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return ReplayBuffer.open(path, mode="a")


def _check_chunks(path: Path, name: str, arr, rows: int | None, allow_missing: bool) -> None:
    """Refuse a store whose array `name` has absent or damaged chunks among those holding `rows` rows."""
    try:
        missing, damaged = check_chunks(arr, rows)
    except Exception as e:  # the store itself cannot be listed or read
        raise CorruptStoreError(f"{path}: cannot check the chunks of {name} ({type(e).__name__}: {e}); restore "
                                "the store from a copy or re-create it") from e
    if damaged:
        raise CorruptStoreError(f"{path}: {name} has {len(damaged)} damaged chunk(s): {'; '.join(damaged[:5])}"
                                f"{' ...' if len(damaged) > 5 else ''}. Restore the store from a copy or re-create it")
    if missing and not allow_missing:
        raise CorruptStoreError(
            f"{path}: {name} is missing {len(missing)} chunk(s) ({', '.join(missing[:10])}"
            f"{' ...' if len(missing) > 10 else ''}); zarr would read them as zeros. Restore the store from a "
            "copy or re-create it (a store written with zarr's write_empty_chunks=False: "
            "ReplayBuffer.open(path, allow_missing_chunks=True))")
