"""Replay stored PushT episodes in gym-pusht and report how far its observations are from the dataset's.

    PYTHONPATH=. .venv-lerobot/bin/python scripts/lerobot/replay_check.py --episodes 30 \
        --out runs/lerobot/replay_check.json

For the first --episodes of each store: max |gym-pusht - dataset| of environment_state and agent_pos over
every frame, and gym-pusht against our env (pcm_policy/lerobot/replay.py). DAgger segments are also
replayed after gym-pusht's plain reset_to_state (--also-reset-only), which runs a physics step at the start.
"""

from __future__ import annotations

import argparse
import json
import sys

from pcm_policy.io import write_json
from pcm_policy.lerobot.dataset import DEFAULT_STORES, read_episodes
from pcm_policy.lerobot.replay import replay_episode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stores", nargs="+", default=list(DEFAULT_STORES))
    ap.add_argument("--episodes", type=int, default=30, help="first N episodes of each store")
    ap.add_argument("--also-reset-only", action="store_true", help="DAgger: also replay via reset_to_state only")
    ap.add_argument("--out", help="JSON file for the per-episode numbers")
    args = ap.parse_args(argv)
    try:
        import gym_pusht  # noqa: F401
    except ImportError:
        print("error: gym-pusht is not installed here; run `make lerobot` and use .venv-lerobot/bin/python",
              file=sys.stderr)
        return 2
    rows, summary = [], {}
    for source, frames in read_episodes(args.stores, args.episodes):
        modes = [True] + ([False] if args.also_reset_only and "takeover_state" in source else [])
        for direct in modes:
            r = replay_episode(source, frames, direct)
            rows.append({"store": source["store"], "episode": source["episode"], "direct": direct} | r)
    for row in rows:
        key = f"{row['store']}" + ("" if row["direct"] else " (reset_to_state only)")
        s = summary.setdefault(key, {"episodes": 0, "frames": 0, "over_1e3": 0})
        s["episodes"] += 1
        s["frames"] += row["frames"]
        s["over_1e3"] += row["first_step_over_1e3"] is not None
        for m in ("gym_vs_data_env", "gym_vs_data_agent", "gym_vs_ours_env", "gym_vs_ours_agent", "ours_vs_data_env"):
            s[m] = max(s.get(m, 0.0), row[m])
    print(json.dumps(summary, indent=1))
    if args.out:
        write_json(args.out, {"summary": summary, "episodes": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
