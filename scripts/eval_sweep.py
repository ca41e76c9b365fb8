"""Score and action distance vs k for Sequential, DDIM-k, Picard, Picard+TAA, PCM and Newton (PushT).

    python scripts/eval_sweep.py                                  # the full sweep (hours on a CPU)
    python scripts/eval_sweep.py --score-ks 1,2,4,8,50            # rollouts at these k only
    python scripts/eval_sweep.py --device cuda --jobs 8           # on a GPU, 8 rollout processes sharing it
    python scripts/eval_sweep.py --samplers ddim,picard --episodes 2 --max-steps 16 --ks 1,2 --out /tmp/sw

1. Reference: sequential DDIM-T (T = --num-steps, 50) rollouts on seeds seed..seed+episodes-1; every
   chunk's observations and initial noise (``chunk_noise``) are recorded. Its mean score is the target.
2. Distances: on up to --distance-conditions of those (condition, noise) pairs (evenly spaced), the mean
   over pairs and the H predicted actions of the Euclidean action distance to DDIM-T's output, in
   normalised units and pixels (normalised / the action normaliser's scale), for every sampler and k.
   ddim (truncated) is the DDIM-T trajectory's position k; Picard, PCM and Newton run once (tol 0,
   max_iters = max k, all iterates kept) and iterate k is read (the last one if converged earlier).
3. Scores: rollouts with each sampler at each k of --score-ks, tol 0 (exactly k iterations), on the same
   seeds and therefore the same noise per (seed, chunk).

k_match = the smallest k whose mean score is within 0.02 of the reference (|difference| <= 0.02) AND
whose mean distance is < 1 px; speedups T / k_match(pcm) and k_match(picard) / k_match(pcm).
Every run and every sampler's distances are cached under OUT/runs/ (keyed by their settings; rerunning
skips them). Writes OUT/sweep.json, sweep.csv, score_vs_k.png, distance_vs_k.png and pareto.png.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import MISSING, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

from pcm_policy.pusht.checkpoint import CheckpointError  # noqa: E402
from pcm_policy.pusht.sweep import NAMES, SweepConfig, run_sweep  # noqa: E402
from pcm_policy.sampling import INITS  # noqa: E402

# the defaults live in the library
D = {f.name: f.default_factory() if f.default is MISSING else f.default for f in fields(SweepConfig)}


def parse_args(argv=None) -> SweepConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samplers", default=",".join(NAMES), help=f"comma list of {', '.join(NAMES)}")
    p.add_argument("--ks", default=",".join(map(str, D["ks"])), help="iteration budgets k")
    p.add_argument("--score-ks", default=None, help="the ks whose rollouts (scores) are run (default: all)")
    p.add_argument("--score-samplers", default=",".join(D["score_samplers"]),
                   help="samplers whose rollouts are run (default: all but newton, whose T sequential JVPs per "
                        "iteration make it a distance-only reference curve)")
    p.add_argument("--seed", type=int, default=D["seed"], help="first episode seed (evaluation set: 100000)")
    p.add_argument("--episodes", type=int, default=D["episodes"])
    p.add_argument("--max-steps", type=int, default=D["max_steps"])
    p.add_argument("--num-steps", type=int, default=D["num_steps"], help="DDIM steps T of the reference "
                                                                               "trajectory")
    p.add_argument("--checkpoint", type=Path, default=ROOT / D["checkpoint"])
    p.add_argument("--adapter", type=Path, default=ROOT / D["adapter"], help="PCM adapter folder (needed "
                                                                                   "for pcm)")
    p.add_argument("--init", choices=INITS, default=None,
                   help="Picard/PCM/Newton first iterate (default noise; PCM: the adapter's)")
    p.add_argument("--distance-conditions", type=int, default=D["distance_conditions"])
    p.add_argument("--threads", type=int, default=D["threads"], help="intra-op threads per process")
    p.add_argument("--jobs", type=int, default=D["jobs"],
                   help="rollout runs in this many parallel processes (one per core; on a GPU they share it)")
    p.add_argument("--device", default=D["device"], help="torch device of the policy: cpu (default), cuda "
                                                               "or cuda:N")
    p.add_argument("--eager", action="store_true",
                   help="run the UNet eagerly instead of as frozen TorchScript graphs (same outputs, slower)")
    p.add_argument("--out", type=Path, default=ROOT / D["out"],
                   help="output folder (default runs/sweep; the quoted results/sweep* folders are tracked by git "
                        "and need --force)")
    p.add_argument("--force", action="store_true", help="allow writing into files git tracks (results/, checkpoints/)")
    a = p.parse_args(argv)
    try:
        ks = [int(k) for k in a.ks.split(",")]
        score_ks = None if a.score_ks is None else [int(k) for k in a.score_ks.split(",")]
    except ValueError as e:
        p.exit(2, f"error: --ks and --score-ks must be comma lists of integers ({e})\n")
    try:
        return SweepConfig(**{**vars(a), "samplers": a.samplers.split(","), "ks": ks, "score_ks": score_ks,
                              "score_samplers": a.score_samplers.split(",")})
    except ValueError as e:
        p.exit(2, f"error: {e}\n")


def main(argv=None) -> int:
    cfg = parse_args(argv)
    try:
        run_sweep(cfg)
    except (CheckpointError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
