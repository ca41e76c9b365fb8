"""Choose the training-free sampler's (``taa``) settings on held-out PCT-store conditions (``scripts/tune_taa.py``).

Picard + triangular Anderson acceleration (``init=prior``; ``pcm_policy.sampling.picard``) with every
(memory m, residual weight exponent w, mixing beta) of a grid, on the held-out split of a PCT trajectory
store (demonstration windows and states the base policy visits on training seeds, never evaluation
seeds): the mean pixel distance to the DDIM-T output after k = 1..k_max iterations, and the variant PCT's
rule picks (``training.pct.choose_schedule``: smallest k under 1 px, then the distance there).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..io import write_json
from ..sampling import TAA, SamplerSpec, Switch, step_grid
from ..training import pct as P
from ..training.pct_data import load as load_trajectories
from .checkpoint import load_policy
from .pct_data import pixel_distance

__all__ = ["tune_taa"]


def tune_taa(store: str | Path, checkpoint: str | Path, grid: Sequence[tuple[int, float, float]],
             safeguard: float | None = 1.0, n: int = 200, k_max: int = 8, json_out: str | Path | None = None) -> dict:
    """Every TAA variant's distance vs k on held-out conditions, and the chosen one; prints a table.

    Args:
        store: a PCT trajectory store (``scripts/train_pct.py`` stage 1); checkpoint: the base policy.
        grid: (memory m >= 2, weight exponent w >= 0, mixing beta in (0, 1]) per variant.
        safeguard: the iterate safeguard kappa (None: off); n: held-out conditions used (the first n);
        k_max: iterations.
        json_out: also write ``{"conditions", "store", "safeguard", "results", "chosen"}`` here.
    Returns:
        ``{"conditions": int, "results": [{"spec": SamplerSpec, "distance": [px at k = 1..k_max], "k_match"}],
        "chosen": the chosen result}``.
    Raises:
        ValueError: a bad grid or count; PCTDataError / CheckpointError / FileNotFoundError: a bad store
        or checkpoint.
    """
    if min(n, k_max) < 1 or (safeguard is not None and safeguard < 0) or any(
            m < 2 or w < 0 or not 0 < b <= 1 for m, w, b in grid):
        raise ValueError("need n, k_max >= 1, safeguard >= 0, memories >= 2, weights >= 0 and mixings in (0, 1]")
    data, policy = load_trajectories(store), load_policy(checkpoint)
    policy.freeze()
    val = (data["split"] == 1).nonzero().flatten()[:n]
    cond, x_T, target = data["cond"][val], data["x_T"][val], data["x_star"][val, -1]
    results = []
    print(f"{len(val)} held-out conditions of {store}; mean distance (px) after k iterations")
    print(f"{'m':>2s} {'w':>4s} {'beta':>5s}  " + " ".join(f"{'k=' + str(k):>7s}" for k in range(1, k_max + 1)))
    px = pixel_distance(policy)
    steps_grid = step_grid(policy.noise_scheduler, int(data["config"]["num_steps"]), solver="ddim")
    for m, w, b in grid:
        spec = SamplerSpec.named("pcm", switch=Switch(0, 0), taa=TAA(memory=m, weight=w, mixing=b), init="prior",
                                 safeguard=safeguard)  # lambda = 0 throughout: Picard + this TAA
        d = P.pcm_distances(policy.model_fn, steps_grid, cond, x_T, target, spec, k_max, px)
        results.append({"spec": spec, "distance": d})
        print(f"{m:2d} {w:4g} {b:5g}  " + " ".join(f"{v:7.3g}" for v in d), flush=True)
    best = P.choose_schedule(results)
    t = best["spec"].taa
    print(f"chosen: m = {t.memory}, w = {t.weight:g}, beta = {t.mixing:g} (k to 1 px: {best['k_match']})")
    if json_out:
        rows = [{**r, "spec": r["spec"].to_dict()} for r in results]
        write_json(json_out, {"conditions": len(val), "store": str(store), "safeguard": safeguard, "results": rows,
                              "chosen": {**best, "spec": best["spec"].to_dict()}})
    return {"conditions": len(val), "results": results, "chosen": best}
