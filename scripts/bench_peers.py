"""The strongest peers side by side on PushT, one run: distance to DDIM-50 at k = 1..5 and exact samplers
against diffusers' ParaDiGMS at a matched distance (``pcm_policy.pusht.peers.bench_peers``).

    python scripts/bench_peers.py --out runs/peers.json
    python scripts/bench_peers.py --conditions 64 --max-steps 200 --seeds 400000 400007

Conditions come from DDIM-10 rollouts on training seeds (400000 on); evaluation seeds 100000-100049 are refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    from pcm_policy.pusht.peers import PEERS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs=2, default=(400_000, 400_001), metavar=("FIRST", "LAST"),
                   help="training seeds of the condition rollouts (inclusive)")
    p.add_argument("--max-steps", type=int, default=48, help="env steps per condition rollout")
    p.add_argument("--conditions", type=int, default=12, help="at most this many conditions (evenly spaced)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--peers", nargs="+", default=list(PEERS), help=f"among {', '.join(PEERS)}")
    p.add_argument("--paradigms-tols", type=float, nargs="+", default=[0.4, 0.2, 0.1, 0.05, 0.02, 0.01])
    p.add_argument("--solver-ks", type=int, nargs="*", default=None,
                   help="also tabulate DPM-Solver++ / UniPC under from_config and each spacing, with and without "
                        "the x0 clip, at these k")
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoints/pusht_base"))
    p.add_argument("--adapter", type=Path, default=Path("checkpoints/pusht_pcm"))
    p.add_argument("--student", type=Path, default=None,
                   help="a consistency-distilled student's adapter folder (scripts/train_consistency.py): with "
                        "--peers ... consistency, measured at k calls")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    p.add_argument("--force", action="store_true", help="allow --out to replace a file git tracks")
    a = p.parse_args(argv)
    import torch

    from pcm_policy.io import check_not_shipped, write_json
    from pcm_policy.pusht.checkpoint import CheckpointError
    from pcm_policy.pusht.peers import bench_peers, format_peers

    torch.set_num_threads(a.threads)
    try:
        if a.seeds[1] < a.seeds[0] or a.max_steps < 1 or a.threads < 1:
            raise ValueError("need --seeds FIRST <= LAST, --max-steps >= 1 and --threads >= 1")
        if a.out is not None:
            check_not_shipped(a.out, a.force, "--force", "--out")
        res = bench_peers(seeds=range(a.seeds[0], a.seeds[1] + 1), max_steps=a.max_steps, conditions=a.conditions,
                          ks=tuple(a.ks), peers=tuple(a.peers), paradigms_tols=tuple(a.paradigms_tols),
                          checkpoint=a.checkpoint, adapter=a.adapter, solver_ks=a.solver_ks,
                          student=a.student)
        res = {"command": "python scripts/bench_peers.py " + " ".join(sys.argv[1:] if argv is None else argv), **res}
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_peers(res))
    if a.out is not None:
        write_json(a.out, res)
        print(f"json: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
