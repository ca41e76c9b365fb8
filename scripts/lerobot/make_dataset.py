"""Write the shipped PushT demonstrations as a state-only LeRobotDataset (run in .venv-lerobot).

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv-lerobot/bin/python scripts/lerobot/make_dataset.py \
        --out runs/lerobot/pusht_keypoints_dataset

Features and layout: pcm_policy/lerobot/dataset.py. Built in a temporary folder and renamed onto --out
when lerobot has finalised it. `--check DIR` only opens an existing dataset and checks its features.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from pcm_policy.lerobot.dataset import DEFAULT_REPO_ID, DEFAULT_STORES, load_dataset, write_dataset


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="dataset folder to write (must not exist unless --overwrite)")
    ap.add_argument("--stores", nargs="+", default=list(DEFAULT_STORES), help="replay-buffer stores, in order")
    ap.add_argument("--repo-id", default=DEFAULT_REPO_ID)
    ap.add_argument("--max-episodes", type=int, default=None, help="at most this many episodes per store")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--check", metavar="DIR", help="open DIR as a LeRobotDataset and check its features")
    args = ap.parse_args(argv)
    if not args.out and not args.check:
        ap.error("give --out DIR (write) or --check DIR")
    try:
        if args.check:
            ds = load_dataset(args.check, args.repo_id)
            print(json.dumps({"root": args.check, "episodes": ds.num_episodes, "frames": ds.num_frames}))
            return 0
        t0 = time.time()
        summary = write_dataset(args.out, args.stores, repo_id=args.repo_id, max_episodes=args.max_episodes,
                                overwrite=args.overwrite)
    except (ImportError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary | {"wall_s": round(time.time() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
