"""Record PushT demonstrations by hand (mouse teleoperation) into a zarr replay buffer.

    python scripts/teleop.py --out data/pusht_human.zarr

A 512x512 window opens. Move the mouse onto the blue agent to start; it then follows the mouse.
Push the grey T onto the green goal: the episode is saved when coverage > 0.95 and the next one
starts. Hold SPACE to pause, press R to retry (the episode is discarded), Q to quit (the unfinished
episode is discarded). Rows use the expert demos' schema (state, keypoint, action, n_contacts as
float32; img too with --images or when the store has it), `meta/episode_seed` holds each episode's
reset seed. Seeds: the smallest seed >= --seed-start not yet in the store (the reference demo
script's "seed = number of stored episodes" for a fresh store), never an evaluation seed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

from envs.pusht import PushTEnv  # noqa: E402
from envs.pusht.teleop import TeleopRecorder, run_pygame  # noqa: E402
from pcm_policy.data.errors import ReplayBufferError  # noqa: E402
from pcm_policy.pusht.teleop_store import StoreSink  # noqa: E402

HELP = ("Move the mouse onto the blue agent to start, then push the T onto the green goal (saved at "
        "coverage > 0.95). SPACE (hold): pause, R: retry, Q: quit.")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv=None):
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="zarr store to create or append to")
    p.add_argument("--seed-start", type=int, default=0)
    p.add_argument("--legacy", action="store_true",
                   help="legacy reset order (the reference demos and the shipped expert set use False)")
    p.add_argument("--images", action="store_true", help="also record the 96x96 frame before each step")
    p.add_argument("--fps", type=float, default=10.0, help="control rate (10 Hz as the reference)")
    args = p.parse_args(argv)
    if not 0 <= args.seed_start <= 2**32 - 1:
        p.error(f"--seed-start must be in 0..{2**32 - 1} (the env's reset seed), got {args.seed_start}")
    if not args.fps > 0:
        p.error(f"--fps must be > 0, got {args.fps}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    env_vars = ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")
    if sys.platform.startswith("linux") and not any(os.environ.get(v) for v in env_vars):
        print("error: teleop needs a display (no DISPLAY or WAYLAND_DISPLAY is set); run it on a desktop "
              "session or through X forwarding", file=sys.stderr)
        return 2
    try:
        sink = StoreSink(args.out, seed_start=args.seed_start, legacy=args.legacy, images=args.images)
    except (ValueError, ReplayBufferError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    env = PushTEnv(obs_type="state", legacy=args.legacy, render_mode=None)
    recorder = TeleopRecorder(env, sink, sink.next_seed, images=sink.images)
    print(f"recording into {args.out} ({sink.buffer.n_episodes} episodes so far). {HELP}", flush=True)
    run_pygame(recorder, fps=args.fps)
    print(f"{recorder.saved} episode(s) saved, {recorder.discarded} discarded; {args.out} holds "
          f"{sink.buffer.n_episodes} episodes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
