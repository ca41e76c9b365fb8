"""Choose the training-free sampler's (``taa``) settings on held-out training-seed conditions.

    python scripts/tune_taa.py                                # the PCT store of the shipped adapter
    python scripts/tune_taa.py --memories 3 --weights 0 --mixings 1 --n 64   # ParaTAA's own update only

Picard + triangular Anderson acceleration (``init=prior``) with every combination of memory m,
residual weight exponent w and mixing beta (``pcm_policy.sampling.picard``), on the held-out split of
a PCT trajectory store (demonstration windows and states the base policy visits on training seeds;
never evaluation seeds). Prints the mean distance (px) to the DDIM-T output after k = 1..k_max
iterations and picks the variant by PCT's rule (smallest k under 1 px, then the distance there).
The store comes from ``scripts/train_pct.py`` (stage 1).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from pcm_policy.pusht.checkpoint import CheckpointError  # noqa: E402
from pcm_policy.pusht.taa_tuning import tune_taa  # noqa: E402
from pcm_policy.training.pct_data import PCTDataError as TrajDataError  # noqa: E402


def floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=ROOT / "runs/pct_pusht_r3/trajectories")
    p.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints/pusht_base")
    p.add_argument("--memories", default="2,3,4,5", help="TAA memories m")
    p.add_argument("--weights", default="0,1", help="residual weight exponents w (0: unweighted, ParaTAA)")
    p.add_argument("--mixings", default="0.7,0.8,0.9,1", help="mixings beta (1: undamped, ParaTAA)")
    p.add_argument("--safeguard", type=float, default=1.0, help="iterate safeguard kappa (0: off)")
    p.add_argument("--n", type=int, default=200, help="held-out conditions used")
    p.add_argument("--k-max", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="write every variant's distances here")
    p.add_argument("--force", action="store_true", help="allow replacing files git tracks (results/)")
    a = p.parse_args(argv)
    from pcm_policy.io import check_not_shipped

    try:
        for _out in [a.json] if a.json else []:
            check_not_shipped(_out, a.force, "--force", "--json")
    except ValueError as _e:
        p.exit(2, f"error: {_e}\n")
    try:
        grid = list(itertools.product([int(m) for m in a.memories.split(",")], floats(a.weights), floats(a.mixings)))
    except ValueError as e:
        p.exit(2, f"error: --memories, --weights and --mixings must be comma lists of numbers ({e})\n")
    if min(a.n, a.k_max, a.threads) < 1 or a.safeguard < 0 or any(m < 2 or w < 0 or not 0 < b <= 1 for m, w, b in grid):
        p.exit(2, "error: need --n, --k-max, --threads >= 1, --safeguard >= 0, memories >= 2, weights >= 0 and "
                  "mixings in (0, 1]\n")
    from pcm_policy.device import check_threads

    try:
        torch.set_num_threads(check_threads(a.threads))
    except ValueError as e:
        p.exit(2, f"error: {e}\n")
    try:
        tune_taa(a.store, a.checkpoint, grid, a.safeguard or None, a.n, a.k_max, a.json)
    except (TrajDataError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
