"""How good must Picard's first iterate be for fewer calls at tol 0.1? A bound for issue 23's "<= 4.0 calls".

    python scripts/bench_first_iterate.py                                   # training seeds 300000.., 200 conditions
    python scripts/bench_first_iterate.py --out results/first_iterate/train_seeds300000.json

Picard + TAA (the shipped TAA and safeguard, tol 0.1, today's tolerance rule; base model only) on open-loop
(observation, x_T) pairs of DDIM-50's rollouts on ``--seed``.. (training seeds: this tunes nothing), started from
different first iterates X^0 (``picard.initial_trajectory``; the fixed point is the same for all):

  prior          today's default
  jump x0        the shipped PCM adapter's one-call estimate as an x0 guess (the jump restart at position 0; making
                 it costs one more call, not counted in "calls")
  exact x0       DDIM-50's own output as the x0 guess: the best any x0 estimate (any jump) can give
  trajectory+s   DDIM-50's whole trajectory with N(0, s^2) added at every position after x_T (normalised action
                 units; a learned "jump for every position" that is s off everywhere)

Printed for each: calls per chunk (mean over samples, max), px to DDIM-50's output, and calls / prior's calls.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCALES = (0.001, 0.003, 0.01, 0.03, 0.1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=300000, help="first episode seed of the DDIM-50 reference rollouts")
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--conditions", type=int, default=200, help="open-loop (observation, x_T) pairs")
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints/pusht_base"))
    p.add_argument("--adapter", default=str(ROOT / "checkpoints/pusht_pcm"), help="the jump for the 'jump x0' row")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="JSON (atomic); a tracked file needs --force")
    p.add_argument("--force", action="store_true")
    a = p.parse_args(argv)
    if min(a.episodes, a.conditions, a.threads) < 1:
        p.exit(2, "error: --episodes, --conditions and --threads must be >= 1\n")
    from pcm_policy.io import check_out_arg

    check_out_arg(p, a.out, a.force)
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    from pcm_policy.device import check_threads
    from pcm_policy.io import run_record, write_json
    from pcm_policy.pusht.checkpoint import load_adapter_folder, load_policy
    from pcm_policy.pusht.task import PushTEval, make_task
    from pcm_policy.sampling import SamplerSpec, make_sampler
    from pcm_policy.sampling.picard import initial_trajectory

    torch.set_num_threads(check_threads(a.threads))
    t0 = time.time()
    policy = load_policy(a.checkpoint)
    pcm, _ = load_adapter_folder(policy, a.adapter)
    policy.freeze(True)
    task = make_task(policy, evaluation=PushTEval(seed=a.seed, episodes=a.episodes), progress=False)
    cond, x_T = task.conditions("eval", a.conditions)
    taa = make_sampler(SamplerSpec.named("taa", tol=0.1), policy.noise_scheduler)
    with torch.no_grad():
        ref, st = make_sampler(SamplerSpec.named("ddim"), policy.noise_scheduler)(
            policy.model_fn, x_T, cond, return_trajectory=True)
        traj = st.trajectory  # (T+1, B, horizon, action_dim), position 0 = x_T
        jump_x0, _ = make_sampler(pcm.replace(tol=0.0, k=1), policy.noise_scheduler)(policy.model_fn, x_T, cond)
    g = torch.Generator().manual_seed(0)
    inits = {"prior": "prior", "jump x0": jump_x0, "exact x0": ref}
    for s in SCALES:
        X = traj + s * torch.randn(traj.shape, generator=g)
        X[0] = x_T
        inits[f"trajectory+{s:g}"] = X
    rows = {}
    for name, init in inits.items():
        with torch.no_grad():
            x, st = taa(policy.model_fn, x_T, cond, init=init)
        it = torch.tensor(st.sample_iterations, dtype=torch.float64)
        rows[name] = {"calls": it.mean().item(), "calls_max": int(it.max()),
                      "px": task.distance(x, ref).mean().item(),
                      "init_px": task.distance(initial_trajectory(taa.grid, x_T, init)[-1], ref).mean().item()}
    for r in rows.values():
        r["calls_vs_prior"] = r["calls"] / rows["prior"]["calls"]
    res = {"setup": {**run_record("scripts/bench_first_iterate.py", argv or sys.argv[1:]), "threads": a.threads,
                     "seeds": [a.seed, a.seed + a.episodes - 1], "conditions": len(x_T),
                     "sampler": taa.spec.to_dict(), "seconds": round(time.time() - t0, 1)},
           "rows": rows}
    print(report(res))
    if a.out is not None:
        write_json(a.out, res)
        print(f"wrote {a.out}")
    return 0


def report(res: dict) -> str:
    s = res["setup"]
    lines = [f"Picard + TAA at tol 0.1 from different first iterates; seeds {s['seeds'][0]}-{s['seeds'][1]}, "
             f"{s['conditions']} conditions",
             f"{'first iterate':<20} {'px of X^0[T]':>12} {'calls':>6} {'max':>4} {'x prior':>8} {'px at tol':>10}"]
    for name, r in res["rows"].items():
        lines.append(f"{name:<20} {r['init_px']:>12.3f} {r['calls']:>6.2f} {r['calls_max']:>4d} "
                     f"{r['calls_vs_prior']:>8.3f} {r['px']:>10.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
