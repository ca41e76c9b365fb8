"""Render a PushT episode to .mp4 and/or .gif.

    python scripts/render_episode.py --seed 0 --out outputs/videos/expert0.mp4,outputs/videos/expert0.gif
    python scripts/render_episode.py --zarr data/pusht_expert.zarr --episode 3 --out ep3.mp4 --caption

With `--seed` (default 0) the scripted expert plays the episode from that seed's reset. With `--zarr`
a stored episode's actions are replayed from its `meta/episode_seed` reset, with the reset order
(`legacy`) given by the store's JSON summary next to it (`<store>.json`; False when there is none, as
the reference demos) unless --legacy / --no-legacy says otherwise; the replayed states are checked
against the stored ones. One frame per control step (the reset frame first), the red cross marks the
last action, 10 fps. Prints the written path(s), the final coverage and the number of steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import numpy as np  # noqa: E402

from envs.pusht import PushTEnv  # noqa: E402
from envs.pusht import geometry as G  # noqa: E402
from envs.pusht.video import SUFFIXES, caption, write_video  # noqa: E402

STATE_TOL = 1e-3  # px / rad: a stored episode must replay to its stored states


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv=None):
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--seed", type=int, help="run the scripted expert from this seed's reset (default 0)")
    src.add_argument("--zarr", type=Path, help="replay an episode of this replay buffer store")
    p.add_argument("--episode", type=int, default=0, help="episode index in --zarr (negative: from the end)")
    p.add_argument("--out", action="append", default=None,
                   help="output .mp4 / .gif; repeat or give a comma list (default outputs/videos/<name>.mp4)")
    p.add_argument("--size", type=int, default=256, help="frame size in px (the reference's videos: 96)")
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--legacy", action=argparse.BooleanOptionalAction, default=None,
                   help="reset order; default: False for --seed, the store's summary for --zarr")
    p.add_argument("--max-steps", type=int, default=300, help="expert step limit")
    p.add_argument("--success-coverage", type=float, default=0.97, help="expert margin (as the demos)")
    p.add_argument("--caption", action="store_true", help="add a strip with seed, step and coverage")
    p.add_argument("--force", action="store_true", help="allow replacing files git tracks (results/)")
    args = p.parse_args(argv)
    if args.episode != 0 and args.zarr is None:
        p.error("--episode needs --zarr")
    if args.size < 16:
        p.error("--size must be >= 16")
    if args.seed is not None and not 0 <= args.seed <= 2**32 - 1:
        p.error(f"--seed must be in 0..{2**32 - 1} (the env's reset seed), got {args.seed}")
    if not args.fps > 0 or args.max_steps < 1:
        p.error(f"--fps must be > 0 and --max-steps >= 1, got {args.fps} and {args.max_steps}")
    if not 0 < args.success_coverage <= 1:
        p.error(f"--success-coverage must be in (0, 1], got {args.success_coverage}")
    outs = [s.strip() for o in (args.out or []) for s in o.split(",") if s.strip()]
    for o in outs:
        if Path(o).suffix.lower() not in SUFFIXES:
            p.error(f"--out {o}: the suffix must be one of {', '.join(SUFFIXES)}")
    args.out = [Path(o) for o in outs]
    from pcm_policy.io import check_not_shipped

    try:
        for _out in args.out:
            check_not_shipped(_out, args.force, "--force", "--out")
    except ValueError as _e:
        p.exit(2, f"error: {_e}\n")
    return args


def load_episode(args) -> tuple[int, bool, np.ndarray, np.ndarray | None, str]:
    """(seed, legacy, actions (N, 2) float32, stored states or None, a label)."""
    if args.zarr is None:
        from envs.pusht.expert import run_expert_episode

        seed = 0 if args.seed is None else args.seed
        legacy = bool(args.legacy)
        ep = run_expert_episode(seed, success_coverage=args.success_coverage, max_steps=args.max_steps,
                                legacy=legacy)
        return seed, legacy, ep["action"], ep["state"], f"expert seed {seed}"
    from pcm_policy.data.replay_buffer import ReplayBuffer

    buf = ReplayBuffer.open(args.zarr)
    if not -buf.n_episodes <= args.episode < buf.n_episodes:
        raise ValueError(f"{args.zarr}: episode {args.episode} out of range; the store has {buf.n_episodes}")
    if "action" not in buf.keys():
        raise ValueError(f"{args.zarr}: has no data/action to replay")
    if "seed" not in buf.meta_keys():
        raise ValueError(f"{args.zarr}: has no meta/episode_seed, so its episodes' start states are unknown")
    seed = int(buf.episode_meta("seed")[args.episode])
    legacy = args.legacy
    if legacy is None:
        summary = args.zarr.with_suffix(".json")
        legacy = bool(json.loads(summary.read_text()).get("legacy", False)) if summary.exists() else False
    keys = ["action"] + (["state"] if "state" in buf.keys() else [])
    ep = buf.get_episode(args.episode, keys=keys)
    idx = args.episode % buf.n_episodes
    return seed, legacy, ep["action"], ep.get("state"), f"{args.zarr.stem} episode {idx} seed {seed}"


def render(seed: int, legacy: bool, actions: np.ndarray, size: int, with_caption: bool, label: str):
    """Replay `actions` from the reset of `seed`: frames, final coverage, first success step, states."""
    env = PushTEnv(obs_type="state", legacy=legacy, render_mode="rgb_array", render_size=size)
    _, info = env.reset(seed=seed)
    states, frames, first_success = [], [], None

    def shot(t):
        f = env.render()
        return caption(f, f"{label}  step {t}  coverage {info['coverage']:.3f}") if with_caption else f

    frames.append(shot(0))
    for t, a in enumerate(actions, 1):
        states.append([*env.agent.position, *env.block_pose])
        _, _, terminated, _, info = env.step(np.asarray(a, np.float32).astype(np.float64))
        if terminated and first_success is None:
            first_success = t
        frames.append(shot(t))
    env.close()
    return frames, info["coverage"], first_success, np.asarray(states)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        seed, legacy, actions, stored, label = load_episode(args)
        if len(actions) == 0:
            raise ValueError(f"{label}: the episode has no steps")
        frames, cov, first, states = render(seed, legacy, actions, args.size, args.caption, label)
        outs = args.out or [Path("outputs/videos") / (label.replace(" ", "_") + ".mp4")]
        for out in outs:
            print(f"wrote {write_video(frames, out, fps=args.fps)}")
    except (ValueError, OSError) as e:  # ReplayBufferError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    success = f"success (coverage > {G.SUCCESS_THRESHOLD}) at step {first}" if first else "no success"
    print(f"{label} (legacy={legacy}): {len(actions)} steps, final coverage {cov:.4f}, {success}")
    if stored is not None and len(stored) == len(states):
        diff = float(np.abs(np.asarray(stored, np.float64) - states).max())
        if diff > STATE_TOL:
            print(f"warning: the replay departs from the stored states by up to {diff:.3g}; the seed or the "
                  "legacy flag does not match how the episode was recorded (try --legacy / --no-legacy)",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
