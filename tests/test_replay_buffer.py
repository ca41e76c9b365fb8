"""ReplayBuffer: reference-schema stores written with zarr 3, round trips, crash safety, bad input."""

import asyncio
import json
import os
import shutil

import numcodecs
import numpy as np
import pytest
import zarr

from pcm_policy.data import (
    CorruptStoreError,
    MissingKeyError,
    ReplayBuffer,
    ReplayBufferError,
    StoreNotFoundError,
)
from pcm_policy.pusht.dataset import PushTLowdimDataset

KEYS = ("img", "state", "keypoint", "action", "n_contacts")


def make_episode(length, rng):
    """One episode in the reference schema (all float32; img holds integers 0..255)."""
    return {
        "img": rng.integers(0, 256, (length, 96, 96, 3)).astype(np.float32),
        "state": rng.uniform(0, 512, (length, 5)).astype(np.float32),
        "keypoint": rng.uniform(0, 512, (length, 9, 2)).astype(np.float32),
        "action": rng.uniform(0, 512, (length, 2)).astype(np.float32),
        "n_contacts": rng.integers(0, 3, (length, 1)).astype(np.float32),
    }


def write_reference_store(path, episodes):
    """Write a store the way the reference release is laid out, with zarr 3 directly (not our code)."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    blosc = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
    for key in KEYS:
        x = np.concatenate([ep[key] for ep in episodes])
        arr = root.require_group("data").create_array(
            key, shape=x.shape, chunks=(161, *x.shape[1:]), dtype="float32", compressors=blosc)
        arr[:] = x
    ends = np.cumsum([len(ep["state"]) for ep in episodes]).astype(np.int64)
    root.require_group("meta").create_array("episode_ends", shape=ends.shape, chunks=(208,),
                                            dtype="int64", compressors=None)[:] = ends


def assert_episode_equal(got, want):
    assert set(got) == set(want)
    for key in want:
        expected = want[key].astype(np.uint8) if key == "img" else want[key]
        np.testing.assert_array_equal(got[key], expected, err_msg=key)


@pytest.fixture
def episodes():
    rng = np.random.default_rng(0)
    return [make_episode(n, rng) for n in (7, 12, 5)]


def test_opens_reference_schema_store(tmp_path, episodes):
    path = tmp_path / "pusht_cchi_v7_replay.zarr"
    write_reference_store(path, episodes)
    buf = ReplayBuffer.open(path)
    assert buf.backend == "zarr" and buf.n_episodes == 3 and buf.n_steps == 24
    np.testing.assert_array_equal(buf.episode_ends, [7, 19, 24])
    assert buf.episode_ends.dtype == np.int64
    np.testing.assert_array_equal(buf.episode_lengths, [7, 12, 5])
    assert sorted(buf.keys()) == sorted(KEYS)
    assert buf["img"].shape == (24, 96, 96, 3) and buf["img"].dtype == np.float32
    assert buf.get_episode_slice(1) == slice(7, 19)
    for i, ep in enumerate(episodes):
        got = buf.get_episode(i)
        assert got["img"].dtype == np.uint8 and got["state"].dtype == np.float32
        assert_episode_equal(got, ep)
    assert buf.get_episode(-1, keys=["img"], img_uint8=False)["img"].dtype == np.float32
    with pytest.raises(ReplayBufferError, match="read-only"):
        buf.add_episode(episodes[0])


def test_written_store_has_reference_format(tmp_path, episodes):
    path = tmp_path / "demo.zarr"
    buf = ReplayBuffer.create(path)
    for seed, ep in enumerate(episodes):
        buf.add_episode(ep, meta={"seed": 100 + seed})
    zarray = json.loads((path / "data" / "state" / ".zarray").read_text())
    assert zarray["zarr_format"] == 2 and zarray["dtype"] == "<f4"
    assert zarray["compressor"] == {"id": "blosc", "cname": "zstd", "clevel": 5, "shuffle": 2, "blocksize": 0}
    assert zarray["shape"] == [24, 5] and zarray["chunks"][1:] == [5]
    ends = json.loads((path / "meta" / "episode_ends" / ".zarray").read_text())
    assert ends["dtype"] == "<i8" and ends["compressor"] is None

    again = ReplayBuffer.open(path)
    np.testing.assert_array_equal(again.episode_meta("seed"), [100, 101, 102])
    assert again.meta_keys() == ["seed"]
    for i, ep in enumerate(episodes):
        assert_episode_equal(again.get_episode(i), ep)


def test_backends_convert_both_ways(tmp_path, episodes):
    mem = ReplayBuffer.create()
    for seed, ep in enumerate(episodes):
        mem.add_episode(ep, meta={"seed": seed})
    assert mem.backend == "numpy" and mem["state"].shape == (24, 5)
    disk = mem.copy_to(tmp_path / "copy.zarr")
    assert disk.backend == "zarr" and not list(tmp_path.glob("*.tmp-*"))
    back = disk.to_numpy()
    assert back.backend == "numpy" and back["img"].dtype == np.uint8
    for buf in (mem, disk, back):
        np.testing.assert_array_equal(buf.episode_ends, [7, 19, 24])
        np.testing.assert_array_equal(buf.episode_meta("seed"), [0, 1, 2])
        for i, ep in enumerate(episodes):
            assert_episode_equal(buf.get_episode(i), ep)


def test_zarr_rows_indexing(tmp_path, episodes):
    write_reference_store(tmp_path / "s.zarr", episodes)
    buf = ReplayBuffer.open(tmp_path / "s.zarr")
    full = np.concatenate([ep["state"] for ep in episodes])
    rows = buf["state"]
    assert len(rows) == 24 and rows.ndim == 2
    np.testing.assert_array_equal(rows[-1], full[-1])
    np.testing.assert_array_equal(rows[3:30:4, 1], full[3:30:4, 1])
    np.testing.assert_array_equal(rows[[5, 2, 9]], full[[5, 2, 9]])
    np.testing.assert_array_equal(np.asarray(rows), full)
    with pytest.raises(IndexError):
        rows[24]


def test_zip_store_opens(tmp_path, episodes):
    write_reference_store(tmp_path / "s.zarr", episodes)
    zipped = shutil.make_archive(str(tmp_path / "s.zarr"), "zip", root_dir=tmp_path / "s.zarr")
    buf = ReplayBuffer.open(zipped)
    assert buf.n_episodes == 3
    assert_episode_equal(buf.get_episode(2), episodes[2])


def _interrupt_add(path, extra_rows, keys):
    """What a crash inside add_episode leaves: some data arrays grown, episode_ends untouched."""
    root = zarr.open_group(str(path), mode="r+")
    for key in keys:
        arr = root["data"][key]
        arr.resize((arr.shape[0] + extra_rows, *arr.shape[1:]))
        arr[-extra_rows:] = 7


@pytest.mark.parametrize("keys", [KEYS, ("state", "img")], ids=["all-arrays", "some-arrays"])
def test_interrupted_add_leaves_complete_episodes(tmp_path, episodes, keys):
    path = tmp_path / "demo.zarr"
    write_reference_store(path, episodes[:2])
    _interrupt_add(path, 30, keys)
    buf = ReplayBuffer.open(path)
    assert buf.n_episodes == 2 and buf.n_steps == 19 and buf["state"].shape == (19, 5)
    assert_episode_equal(buf.get_episode(-1), episodes[1])
    assert buf.load(["action"])["action"].shape == (19, 2)

    buf = ReplayBuffer.open(path, mode="a")
    buf.add_episode(episodes[2])
    again = ReplayBuffer.open(path)
    np.testing.assert_array_equal(again.episode_ends, [7, 19, 24])
    for i, ep in enumerate(episodes):
        assert_episode_equal(again.get_episode(i), ep)
    root = zarr.open_group(str(path), mode="r")
    assert all(root["data"][k].shape[0] == 24 for k in KEYS)  # the stale tail was overwritten


def test_interrupted_commit_of_episode_ends(tmp_path, episodes):
    """Crash between growing meta/episode_ends and writing its new value: a trailing 0 is dropped."""
    path = tmp_path / "demo.zarr"
    buf = ReplayBuffer.create(path)
    buf.add_episode(episodes[0], meta={"seed": 0})
    buf.add_episode(episodes[1], meta={"seed": 1})
    _interrupt_add(path, 5, KEYS)
    zarr.open_group(str(path), mode="r+")["meta/episode_ends"].resize((3,))
    buf = ReplayBuffer.open(path, mode="a")
    assert buf.n_episodes == 2
    buf.add_episode(episodes[2], meta={"seed": 2})
    again = ReplayBuffer.open(path)
    np.testing.assert_array_equal(again.episode_ends, [7, 19, 24])
    np.testing.assert_array_equal(again.episode_meta("seed"), [0, 1, 2])
    assert_episode_equal(again.get_episode(2), episodes[2])


def test_a_commit_in_progress_that_opens_a_new_chunk_of_episode_ends_is_not_a_missing_chunk(tmp_path, episodes):
    """A writer between growing meta/episode_ends and writing its new value, where that value starts a new chunk
    (the first episode, or every META_CHUNK-th): another handle opens the store with the committed episodes."""
    path = tmp_path / "demo.zarr"
    ReplayBuffer.create(path)
    zarr.open_group(str(path), mode="r+")["meta/episode_ends"].resize((1,))  # chunk 0 not written yet
    for mode in ("r", "a"):
        assert ReplayBuffer.open(path, mode=mode).n_episodes == 0
    buf = ReplayBuffer.open(path, mode="a")
    buf.add_episode(episodes[0], meta={"seed": 0})
    np.testing.assert_array_equal(ReplayBuffer.open(path).episode_ends, [len(episodes[0]["action"])])


def test_a_chunk_replaced_by_an_append_between_its_size_and_header_reads_is_not_damage(tmp_path, monkeypatch):
    """A reader checks a chunk with two reads (size, then header); another handle's append rewrites that chunk
    (an atomic rename) in between, as in the slow concurrent-writer test that failed in CI: the reader opens the
    store with the episodes it saw committed instead of refusing it as damaged."""
    path = tmp_path / "demo.zarr"
    writer = ReplayBuffer.create(path)
    writer.add_episode({"action": np.arange(6.0).reshape(3, 2)}, meta={"seed": 0})
    chunk = path / "data" / "action" / "0.0"
    getsize, appended = zarr.storage.LocalStore.getsize, []

    async def append_after_reading_the_size(self, key):
        size = await getsize(self, key)
        if key == "data/action/0.0" and not appended:
            before = chunk.read_bytes()  # the writer runs beside zarr's event loop, as another process would
            await asyncio.to_thread(writer.add_episode, {"action": np.full((4, 2), 7.0)}, meta={"seed": 1})
            appended.append(chunk.read_bytes() != before)
        return size

    monkeypatch.setattr(zarr.storage.LocalStore, "getsize", append_after_reading_the_size)
    seen = ReplayBuffer.open(path)
    assert appended == [True]  # the chunk really changed size between the two reads
    np.testing.assert_array_equal(seen.get_episode(0)["action"], np.arange(6.0).reshape(3, 2))
    monkeypatch.undo()
    assert ReplayBuffer.open(path).episode_meta("seed").tolist() == [0, 1]


def test_missing_path(tmp_path):
    path = tmp_path / "nope.zarr"
    with pytest.raises(StoreNotFoundError, match="nope.zarr") as info:
        ReplayBuffer.open(path)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)


def test_not_a_replay_buffer(tmp_path):
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=2)
    with pytest.raises(ReplayBufferError, match=r"g\.zarr.*meta/episode_ends"):
        ReplayBuffer.open(tmp_path / "g.zarr")


def test_unequal_lengths(tmp_path, episodes):
    path = tmp_path / "bad.zarr"
    write_reference_store(path, episodes)
    zarr.open_group(str(path), mode="r+")["data/action"].resize((20, 2))
    with pytest.raises(ReplayBufferError, match=r"bad\.zarr.*data/action has 20 rows.*24 steps"):
        ReplayBuffer.open(path)


def test_missing_key(tmp_path, episodes):
    path = tmp_path / "s.zarr"
    write_reference_store(path, episodes)
    shutil.rmtree(path / "data" / "keypoint")
    buf = ReplayBuffer.open(path)
    with pytest.raises(MissingKeyError, match=r"s\.zarr.*data/keypoint") as info:
        buf["keypoint"]
    assert isinstance(info.value, KeyError)
    with pytest.raises(MissingKeyError, match=r"s\.zarr.*keypoint"):
        PushTLowdimDataset(path)


def test_corrupt_chunk(tmp_path, episodes):
    path = tmp_path / "s.zarr"
    write_reference_store(path, episodes)
    (path / "data" / "state" / "0.0").write_bytes(b"not a blosc chunk" * 8)
    with pytest.raises(CorruptStoreError, match=r"s\.zarr: data/state has 1 damaged chunk\(s\): 0\.0"):
        ReplayBuffer.open(path)


@pytest.mark.parametrize("keep", [0, 5, 16, 0.5, -1], ids=["empty", "5-bytes", "header-only", "half", "1-short"])
@pytest.mark.parametrize("key", ["action", "img"])
def test_truncated_chunk_is_refused_before_decoding(tmp_path, episodes, key, keep):
    """A truncated Blosc chunk crashed the decoder (segfault) in about half the tries: it is refused on open,
    naming the store, the array and the chunk, and nothing is ever decoded."""
    path = tmp_path / "s.zarr"
    write_reference_store(path, episodes)
    chunk = path / "data" / key / ("0.0" if key == "action" else "0.0.0.0")
    data = chunk.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (len(data) + keep if keep < 0 else keep)
    chunk.write_bytes(data[:n])
    for _ in range(3):
        with pytest.raises(CorruptStoreError, match=rf"s\.zarr: data/{key} has 1 damaged chunk\(s\): "
                                                    rf"{chunk.name} \({n} bytes stored"):
            ReplayBuffer.open(path)
    with pytest.raises(CorruptStoreError, match=rf"data/{key}.*{chunk.name}"):
        PushTLowdimDataset(path)


def test_deleted_chunk_is_refused_not_read_as_zeros(tmp_path, episodes):
    path = tmp_path / "s.zarr"
    write_reference_store(path, episodes)  # 161-row chunks: one chunk per array
    (path / "data" / "action" / "0.0").unlink()
    with pytest.raises(CorruptStoreError, match=r"s\.zarr: data/action is missing 1 chunk\(s\) \(0\.0\).*zeros"):
        ReplayBuffer.open(path)
    buf = ReplayBuffer.open(path, allow_missing_chunks=True)  # the escape hatch reads the fill value
    assert not buf.get_episode(0)["action"].any()
    (path / "meta" / "episode_ends" / "0").unlink()
    with pytest.raises(CorruptStoreError, match=r"meta/episode_ends is missing 1 chunk"):
        ReplayBuffer.open(path)


def test_damaged_uncompressed_meta_chunk_and_uncommitted_chunks(tmp_path, episodes):
    path = tmp_path / "demo.zarr"
    buf = ReplayBuffer.create(path)
    for seed, ep in enumerate(episodes):
        buf.add_episode(ep, meta={"seed": seed})
    chunk = path / "meta" / "episode_seed" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-3])
    with pytest.raises(CorruptStoreError, match=r"meta/episode_seed has 1 damaged chunk\(s\): 0 \(8189 bytes"):
        ReplayBuffer.open(path)


def test_fill_value_chunks_are_stored_and_accepted(tmp_path, episodes):
    """zarr 3 skips chunks equal to the fill value unless told otherwise: the buffer stores them, so an
    all-zero array opens and a missing chunk can only mean damage."""
    path = tmp_path / "demo.zarr"
    buf = ReplayBuffer.create(path)
    for ep in episodes:
        buf.add_episode(dict(ep, n_contacts=np.zeros_like(ep["n_contacts"])), meta={"takeover_step": 0})
    assert (path / "data" / "n_contacts" / "0.0").exists() and (path / "meta" / "episode_takeover_step" / "0").exists()
    assert not ReplayBuffer.open(path).load(["n_contacts"])["n_contacts"].any()
    copy = ReplayBuffer.open(path).copy_to(tmp_path / "copy.zarr")
    assert (tmp_path / "copy.zarr" / "data" / "n_contacts" / "0.0").exists() and copy.n_episodes == 3


def test_corrupt_metadata(tmp_path, episodes):
    path = tmp_path / "s.zarr"
    write_reference_store(path, episodes)
    (path / "meta" / "episode_ends" / ".zarray").write_text("{not json")
    with pytest.raises(CorruptStoreError, match=r"s\.zarr"):
        ReplayBuffer.open(path)


def test_bad_episodes_are_refused(tmp_path, episodes):
    buf = ReplayBuffer.create(tmp_path / "s.zarr")
    bad = dict(episodes[0], action=np.zeros((3, 2), np.float32))
    with pytest.raises(ReplayBufferError, match="common length"):
        buf.add_episode(bad)
    buf.add_episode(episodes[0])
    with pytest.raises(ReplayBufferError, match="differ"):
        buf.add_episode({k: v for k, v in episodes[1].items() if k != "img"})
    with pytest.raises(ReplayBufferError, match=r"data/state holds rows of shape \(5,\)"):
        buf.add_episode(dict(episodes[1], state=np.zeros((12, 4), np.float32)))
    assert buf.n_episodes == 1
    with pytest.raises(ReplayBufferError, match="already exists"):
        ReplayBuffer.create(tmp_path / "s.zarr")


def test_open_or_create_resumes(tmp_path, episodes):
    path = tmp_path / "demo.zarr"
    buf = ReplayBuffer.open_or_create(path)
    buf.add_episode(episodes[0], meta={"seed": 5})
    buf = ReplayBuffer.open_or_create(path)
    assert buf.n_episodes == 1 and buf.episode_meta("seed").tolist() == [5]
    buf.add_episode(episodes[1], meta={"seed": 6})
    got = buf.get_episode(0)
    got["state"][:] = -1  # a copy: the store is untouched
    assert_episode_equal(ReplayBuffer.open(path).get_episode(0), episodes[0])
    with pytest.raises(ReplayBufferError, match="differ"):
        buf.add_episode(episodes[2])  # the store records seeds: every episode must give one


def test_a_stale_writer_refuses_instead_of_losing_a_committed_episode(tmp_path):
    """Two append handles on one store (zarr-python issue 2077's kind): the one opened before the other appended
    refuses; the committed episode stays, and a re-opened handle appends after it."""
    store = tmp_path / "demos.zarr"
    ReplayBuffer.create(store).add_episode({"action": np.full((5, 2), 1.0)}, meta={"seed": 1})
    a, b = ReplayBuffer.open(store, mode="a"), ReplayBuffer.open(store, mode="a")
    a.add_episode({"action": np.full((6, 2), 2.0)}, meta={"seed": 2})
    with pytest.raises(ReplayBufferError, match="another writer changed the store"):
        b.add_episode({"action": np.full((3, 2), 3.0)}, meta={"seed": 3})
    ReplayBuffer.open(store, mode="a").add_episode({"action": np.full((3, 2), 3.0)}, meta={"seed": 3})
    after = ReplayBuffer.open(store)
    assert after.episode_meta("seed").tolist() == [1, 2, 3] and after.episode_ends.tolist() == [5, 11, 14]
    np.testing.assert_array_equal(after["action"][5:11], np.full((6, 2), 2.0))
    assert not (store / ".writer.lock").exists()  # released and removed


WRITER = """
import sys, numpy as np
from pcm_policy.data import ReplayBuffer, ReplayBufferError
store, w, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
done = 0
while done < n:  # a refused (stale) handle re-opens and tries again: nothing it committed is lost
    buf = ReplayBuffer.open(store, mode="a")
    try:
        while done < n:
            buf.add_episode({"action": np.full((3 + done % 4, 2), 100.0 * w + done)}, meta={"seed": 100 * w + done})
            done += 1
    except ReplayBufferError as e:
        assert "another writer" in str(e), e
"""


@pytest.mark.slow
def test_concurrent_writer_processes_lose_no_episode(tmp_path):
    """Four processes append to one store at once: every episode each committed is there, with its own rows."""
    import subprocess
    import sys
    from pathlib import Path

    store = tmp_path / "demos.zarr"
    ReplayBuffer.create(store)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(store), str(w), "6"], env=env) for w in range(4)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    buf = ReplayBuffer.open(store)
    seeds = buf.episode_meta("seed").tolist()
    assert sorted(seeds) == [100 * w + i for w in range(4) for i in range(6)]
    for i, s in enumerate(seeds):
        ep = buf.get_episode(i)["action"]
        assert len(ep) == 3 + s % 100 % 4 and np.all(ep == float(s))
