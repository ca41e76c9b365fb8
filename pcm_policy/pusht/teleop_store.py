"""Where teleoperated PushT episodes go: a zarr replay buffer in the demonstrations' schema (``scripts/teleop.py``).

``StoreSink`` is the sink of ``envs.pusht.teleop.TeleopRecorder``: it appends each finished episode with
its reset seed (``meta/episode_seed``), picks the next fresh seed (never an evaluation seed) and keeps a
JSON summary next to the store.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.replay_buffer import ReplayBuffer
from ..io import write_json

__all__ = ["EVAL_SEEDS", "StoreSink"]

EVAL_SEEDS = range(100000, 100050)


class StoreSink:
    """Appends teleop episodes to a replay buffer, with `meta/episode_seed`, and picks fresh seeds."""

    def __init__(self, out: Path, *, seed_start: int = 0, legacy: bool = False, images: bool = False):
        """Open or create the store ``out``.

        Args:
            out: the zarr store; seed_start: the smallest seed handed out; legacy: the env's reset order (must
            match the store's summary); images: record frames (a non-empty store decides by its own keys).
        Raises:
            ValueError: a legacy flag other than the store's, a store not in the demo schema or with meta
            keys teleop cannot fill; ReplayBufferError: an unreadable store.
        """
        self.out, self.legacy = Path(out), legacy
        self.summary_path = self.out.with_suffix(".json")
        summary = json.loads(self.summary_path.read_text()) if self.summary_path.exists() else None
        if summary is not None and bool(summary.get("legacy", False)) != legacy:
            flag = "--legacy" if summary.get("legacy") else "no --legacy"
            raise ValueError(f"{self.out}: its summary {self.summary_path.name} says legacy="
                             f"{summary.get('legacy')}; pass {flag} so that every episode of the store "
                             "resets the same way")
        self._own_summary = summary is None or summary.get("source") == "teleop"
        self.buffer = ReplayBuffer.open_or_create(self.out)
        keys, meta = set(self.buffer.keys()), set(self.buffer.meta_keys())
        if self.buffer.n_episodes:
            if not {"state", "keypoint", "action", "n_contacts"} <= keys:
                raise ValueError(f"{self.out}: holds data keys {sorted(keys)}, not the PushT demo schema")
            images = "img" in keys
            if not meta <= {"seed", "first_success_step"}:
                raise ValueError(f"{self.out}: has per-episode meta {sorted(meta)} that teleop cannot fill")
        self.images = images
        self.meta_keys = meta if self.buffer.n_episodes else {"seed"}
        self.used = set(self.buffer.episode_meta("seed").tolist()) if "seed" in meta else set()
        self.seed_start = seed_start

    def next_seed(self) -> int:
        """The smallest seed >= ``seed_start`` not yet stored and not an evaluation seed."""
        s = self.seed_start
        while s in self.used or s in EVAL_SEEDS:
            s += 1
        return s

    def __call__(self, episode: dict, info: dict) -> None:
        """Append ``episode`` (data key -> (steps, ...) array) with ``info``'s seed and step count."""
        meta = {"seed": int(info["seed"]), "first_success_step": int(info["steps"])}
        self.buffer.add_episode(episode, meta={k: meta[k] for k in self.meta_keys})
        self.used.add(int(info["seed"]))
        print(f"saved episode {self.buffer.n_episodes - 1}: seed {info['seed']}, {info['steps']} steps, "
              f"coverage {info['coverage']:.3f}", flush=True)
        self._write_summary()

    def _write_summary(self) -> None:
        if not self._own_summary:  # a collect_demos.py summary: leave it to that tool
            return
        lengths = self.buffer.episode_lengths
        summary = {"source": "teleop", "episodes": int(self.buffer.n_episodes),
                   "steps": int(self.buffer.n_steps),
                   "mean_length": float(lengths.mean()), "max_length": int(lengths.max()),
                   "legacy": self.legacy, "images": self.images}
        write_json(self.summary_path, summary)
