"""The shipped PushT demonstrations as a LeRobotDataset (lerobot's own writer), state-only.

Per frame (10 fps, one row of a replay-buffer store = one frame):
    ``observation.state``             float32 (2,)  agent position (x, y) in px, the store's ``state[:, :2]``;
    ``observation.environment_state`` float32 (16,) the 8 corners of the T's two rectangles in world px,
        [x0, y0, ..., x7, y7], exactly gym-pusht's ``obs_type="environment_state_agent_pos"``
        (``gym_pusht/envs/pusht.py``, ``PushTEnv.get_keypoints``: each pymunk ``Poly``'s vertices in
        pymunk's order, ``v.rotated(angle) + body.position``), computed here from the stored block pose
        ``state[:, 2:5]`` (body origin x, y and angle). NOT our env's 9 keypoints (18 values);
    ``action``                        float32 (2,)  the pusher's target position in px, applied after the frame.

Episodes keep the stores' order (expert first, then each DAgger store); ``sources.json`` beside lerobot's
``meta/`` maps each lerobot episode index to its store, its episode in that store and its seed (and for
DAgger segments the takeover state), so a replay can restart it. lerobot is imported lazily: the
keypoint geometry runs in either environment, writing needs the lerobot one (``make lerobot``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data.errors import MissingKeyError
from ..data.replay_buffer import ReplayBuffer
from . import LerobotMissingError, require  # noqa: F401 (LerobotMissingError: what a missing lerobot raises)

# gym-pusht's T: bar (-60..60) x (0..30), stem (-15..15) x (30..120) in the body frame; the vertex order is
# what pymunk's Poly.get_vertices() returns for gym-pusht's vertex lists (its convex hull reorders them).
GYM_PUSHT_CORNERS = np.array([(-60.0, 0.0), (60.0, 0.0), (60.0, 30.0), (-60.0, 30.0),
                              (-15.0, 30.0), (15.0, 30.0), (15.0, 120.0), (-15.0, 120.0)])
ENV_STATE_DIM = 2 * len(GYM_PUSHT_CORNERS)
DEFAULT_STORES = ("data/pusht_expert.zarr", "data/pusht_dagger.zarr", "data/pusht_dagger2.zarr")
DEFAULT_REPO_ID = "local/pusht_keypoints"
TASK = "Push the T-shaped block onto the T-shaped target."
FPS = 10
FEATURES = {
    "observation.state": {"dtype": "float32", "shape": (2,), "names": {"axes": ["x", "y"]}},
    "observation.environment_state": {"dtype": "float32", "shape": (ENV_STATE_DIM,),
                                      "names": [f"{a}{i}" for i in range(8) for a in "xy"]},
    "action": {"dtype": "float32", "shape": (2,), "names": {"axes": ["x", "y"]}},
}
def require_lerobot():
    """``lerobot.datasets.lerobot_dataset.LeRobotDataset``, or ``LerobotMissingError`` saying how to install it."""
    return require("lerobot.datasets.lerobot_dataset", "LeRobotDataset")


def environment_state(block_pose: np.ndarray) -> np.ndarray:
    """gym-pusht's 16-value ``environment_state`` for block poses.

    Args:
        block_pose: (..., 3) body origin x, y (px) and angle (rad, any winding).
    Returns:
        (..., 16) float64 world corners [x0, y0, ..., x7, y7]: R(angle) @ corner + origin
        (pymunk ``Vec2d.rotated`` then ``+ body.position``; gym_pusht ``PushTEnv.get_keypoints``).
    """
    pose = np.asarray(block_pose, dtype=np.float64)
    if pose.shape[-1] != 3:
        raise ValueError(f"block_pose must have shape (..., 3) [x, y, angle], got {pose.shape}")
    c, s = np.cos(pose[..., 2])[..., None], np.sin(pose[..., 2])[..., None]
    vx, vy = GYM_PUSHT_CORNERS[:, 0], GYM_PUSHT_CORNERS[:, 1]
    wx = vx * c - vy * s + pose[..., 0:1]
    wy = vx * s + vy * c + pose[..., 1:2]
    return np.stack([wx, wy], axis=-1).reshape(*pose.shape[:-1], ENV_STATE_DIM)


def episode_frames(state: np.ndarray, action: np.ndarray) -> dict[str, np.ndarray]:
    """A store episode's ``state`` (T, 5) and ``action`` (T, 2) -> the three features, float32 (T, d)."""
    state = np.asarray(state, dtype=np.float64)
    return {"observation.state": state[:, :2].astype(np.float32),
            "observation.environment_state": environment_state(state[:, 2:5]).astype(np.float32),
            "action": np.asarray(action, dtype=np.float32)}


def read_episodes(stores: Sequence[str | os.PathLike], max_episodes: int | None = None):
    """Yield ``(source, frames)`` per episode of each store in order (at most ``max_episodes`` per store);
    ``source`` names store, episode, seed (and ``takeover_state`` for DAgger segments).
    Raises MissingKeyError if a store lacks state/action."""
    for path in stores:
        buf = ReplayBuffer.open(path)
        missing = [k for k in ("state", "action") if k not in buf]
        if missing:
            raise MissingKeyError(f"{path}: has data/{buf.keys()}, a PushT store needs data/{missing} too; "
                                  "pass a store written by scripts/collect_demos.py")
        arrays = buf.load(["state", "action"])
        meta = {k: buf.episode_meta(k) for k in ("seed", "takeover_state") if k in buf.meta_keys()}
        ends = np.asarray(buf.episode_ends)
        starts = np.concatenate([[0], ends[:-1]])
        for i, (a, b) in enumerate(zip(starts, ends, strict=True)):
            if max_episodes is not None and i >= max_episodes:
                break
            source = {"store": str(path), "episode": i}
            if "seed" in meta:
                source["seed"] = int(meta["seed"][i])
            if "takeover_state" in meta:
                source["takeover_state"] = meta["takeover_state"][i].tolist()
            yield source, episode_frames(arrays["state"][a:b], arrays["action"][a:b])


def check_features(features: dict, where: str = "dataset") -> None:
    """Raise ValueError (one line) unless ``features`` holds FEATURES with the same dtype and shape."""
    bad = []
    for key, want in FEATURES.items():
        got = features.get(key)
        if got is None:
            bad.append(f"{key} missing")
        elif got["dtype"] != want["dtype"] or tuple(got["shape"]) != tuple(want["shape"]):
            bad.append(f"{key} is {got['dtype']}{tuple(got['shape'])}, needs {want['dtype']}{want['shape']}")
    if bad:
        raise ValueError(f"{where}: features do not match the state-only PushT layout ({'; '.join(bad)}); "
                         "write it with scripts/lerobot/make_dataset.py")


def load_dataset(root: str | os.PathLike, repo_id: str = DEFAULT_REPO_ID):
    """Open a dataset written by ``write_dataset`` (offline, local folder) and check its features."""
    LeRobotDataset = require_lerobot()
    root = Path(root)
    if not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"{root}: not a LeRobotDataset (no meta/info.json); "
                                "write one with scripts/lerobot/make_dataset.py")
    ds = LeRobotDataset(repo_id, root=root)
    check_features(ds.meta.features, str(root))
    return ds


def write_dataset(out: str | os.PathLike, stores: Sequence[str | os.PathLike] = DEFAULT_STORES, *,
                  repo_id: str = DEFAULT_REPO_ID, max_episodes: int | None = None, overwrite: bool = False,
                  progress: bool = True) -> dict:
    """Write ``stores`` as one LeRobotDataset at ``out`` with lerobot's API; returns a summary dict.

    The dataset is built in a temporary sibling folder and renamed onto ``out`` only when lerobot has
    finalised it, so an error leaves nothing at ``out``. ``max_episodes`` caps episodes per store (tests).
    Raises LerobotMissingError, FileExistsError (``out`` exists, no ``overwrite``), store errors.
    """
    LeRobotDataset = require_lerobot()
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; pass overwrite=True (--overwrite) or another folder")
    for p in stores:  # open every store before writing anything
        ReplayBuffer.open(p)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_parent = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp"))
    tmp = tmp_parent / out.name  # lerobot creates the root folder itself
    ds = None
    try:
        ds = LeRobotDataset.create(repo_id=repo_id, fps=FPS, root=tmp, features=FEATURES, use_videos=False,
                                   robot_type="pusht")
        sources, counts = [], {}
        episodes = read_episodes(stores, max_episodes)
        if progress:
            from tqdm import tqdm
            episodes = tqdm(episodes, desc="episodes", unit="ep")
        for source, frames in episodes:
            counts[source["store"]] = counts.get(source["store"], 0) + 1
            for t in range(len(frames["action"])):
                ds.add_frame({k: v[t] for k, v in frames.items()} | {"task": TASK})
            ds.save_episode()
            sources.append(source | {"length": len(frames["action"])})
        ds.finalize()
        (tmp / "sources.json").write_text(json.dumps({"stores": [str(s) for s in stores], "fps": FPS,
                                                      "episodes": sources}))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if ds is not None:  # close lerobot's writer first: its __del__ would otherwise write into tmp later
            try:
                ds.finalize()
            except Exception:  # noqa: BLE001 - already failing; the folder is removed below
                pass
            del ds
        shutil.rmtree(tmp_parent, ignore_errors=True)
    return {"root": str(out), "episodes": len(sources), "frames": int(sum(s["length"] for s in sources)),
            "per_store": counts}
