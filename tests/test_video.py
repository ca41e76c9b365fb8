"""Video writing (mp4 / gif), atomic writes and captions."""

import json

import imageio.v2 as imageio_v2
import imageio.v3 as iio
import numpy as np
import pytest
from helpers import load_script

from envs.pusht import PushTEnv
from envs.pusht.video import caption, write_video
from pcm_policy.data.replay_buffer import ReplayBuffer


def _frames(n=12, h=96, w=96):
    """Distinct frames (a moving bright square), so no writer can merge any of them."""
    frames = np.full((n, h, w, 3), 40, np.uint8)
    for i in range(n):
        frames[i, 10 + 3 * i: 30 + 3 * i, 10 + 4 * i: 30 + 4 * i] = (250, 200, 30)
    return frames


def _mp4_frames(path):
    reader = imageio_v2.get_reader(str(path), format="FFMPEG")
    try:
        meta = reader.get_meta_data()
        frames = np.stack(list(reader.iter_data()))
    finally:
        reader.close()
    return frames, meta


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_writes_readable_video_atomically(tmp_path, suffix):
    frames = _frames()
    out = write_video(frames, tmp_path / "sub" / f"episode{suffix}", fps=10)
    assert out.exists() and out.parent.name == "sub"
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary file left
    if suffix == ".mp4":
        back, meta = _mp4_frames(out)
        assert meta["codec"] == "h264" and meta["fps"] == 10 and "yuv420p" in meta["pix_fmt"]
        assert back.shape == frames.shape
        assert np.abs(back.astype(int) - frames).mean() < 4  # crf 22: close, not exact
    else:
        back = iio.imread(out, index=None)
        assert back.shape[:3] == frames.shape[:3]
        np.testing.assert_array_equal(back[..., :3], frames)  # few colours: the palette is exact


def test_mp4_pads_odd_sizes_and_overwrites(tmp_path):
    path = tmp_path / "odd.mp4"
    path.write_bytes(b"old")
    write_video(_frames(5, 75, 101), path, fps=5)
    back, _ = _mp4_frames(path)
    assert back.shape == (5, 80, 112, 3)  # padded up to multiples of 16 for yuv420p / H.264 blocks
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.mp4"]


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown video suffix"):
        write_video(_frames(2), tmp_path / "x.avi")
    with pytest.raises(ValueError, match="empty"):
        write_video([], tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="one size"):
        write_video([np.zeros((16, 16, 3), np.uint8), np.zeros((32, 16, 3), np.uint8)], tmp_path / "x.gif")
    with pytest.raises(ValueError, match="fps"):
        write_video(_frames(2), tmp_path / "x.gif", fps=0)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    import envs.pusht.video as video

    def boom(frames, path, fps, crf):
        path.write_bytes(b"partial")
        raise RuntimeError("encoder died")

    monkeypatch.setattr(video, "_write_mp4", boom)
    with pytest.raises(RuntimeError):
        write_video(_frames(2), tmp_path / "x.mp4")
    assert list(tmp_path.iterdir()) == []


def test_caption_adds_a_text_strip():
    frame = _frames(1)[0]
    out = caption(frame, "PCM k=3  12.5 ms")
    assert out.dtype == np.uint8 and out.shape[1:] == frame.shape[1:] and out.shape[0] > frame.shape[0]
    strip_h = out.shape[0] - frame.shape[0]
    np.testing.assert_array_equal(out[strip_h:], frame)  # the picture is untouched, below the strip
    strip = out[:strip_h]
    assert (strip < 128).any() and (strip == 255).mean() > 0.5  # dark text on white
    two = caption(frame, "a\nb", where="bottom")
    np.testing.assert_array_equal(two[: frame.shape[0]], frame)
    assert two.shape[0] - frame.shape[0] == 2 * strip_h
    assert caption(frame, "x" * 200).shape == out.shape  # long text shrinks to fit
    with pytest.raises(ValueError):
        caption(frame, "x", where="left")


def test_render_episode_replays_a_stored_episode(tmp_path, capsys):
    # A tiny store: 6 steps from the reset of seed 11 (legacy=True, as its summary says).
    env = PushTEnv(legacy=True, render_mode=None)
    env.reset(seed=11)
    actions = np.float32([[200, 200], [210, 220], [230, 240], [250, 250], [260, 270], [270, 280]])
    states = []
    for a in actions:
        states.append([*env.agent.position, *env.block_pose])
        env.step(a.astype(np.float64))
    store = tmp_path / "tiny.zarr"
    buf = ReplayBuffer.create(store)
    buf.add_episode({"action": actions, "state": np.float32(states)}, meta={"seed": 11})
    (tmp_path / "tiny.json").write_text(json.dumps({"legacy": True}))

    script = load_script("render_episode")
    mp4, gif = tmp_path / "v" / "a.mp4", tmp_path / "v" / "a.gif"
    assert script.main(["--zarr", str(store), "--episode", "0", "--out", f"{mp4},{gif}", "--size", "64"]) == 0
    out, err = capsys.readouterr()
    assert f"wrote {mp4}" in out and f"wrote {gif}" in out and "6 steps" in out and "legacy=True" in out
    assert err == ""  # the replay matches the stored states
    back, _ = _mp4_frames(mp4)
    assert back.shape == (7, 64, 64, 3)  # the reset frame + one per step

    assert script.main(["--zarr", str(store), "--no-legacy", "--out", str(mp4)]) == 0
    assert "departs from the stored states" in capsys.readouterr().err  # wrong reset order is caught
    assert script.main(["--zarr", str(store), "--episode", "3", "--out", str(mp4)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "out of range" in err and err.count("\n") == 1
