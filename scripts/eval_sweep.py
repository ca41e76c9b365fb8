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
import copy
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pcm_policy.device import pick_device  # noqa: E402
from pcm_policy.evaluation import cached, distances_vs_k, file_hash, k_match, plots, write_csv  # noqa: E402
from pcm_policy.io import write_json  # noqa: E402
from pcm_policy.pusht.checkpoint import ADAPTER as ADAPTER_WEIGHTS  # noqa: E402
from pcm_policy.pusht.checkpoint import (  # noqa: E402
    ADAPTER_CONFIG,
    WEIGHTS,
    CheckpointError,
    load_adapter_folder,
    load_policy,
)
from pcm_policy.pusht.pct_data import pixel_distance  # noqa: E402
from pcm_policy.pusht.rollout import run_rollouts, summarize  # noqa: E402
from pcm_policy.sampling import INITS, ITERATIVE, SamplerSpec, make_sampler  # noqa: E402

BASE, ADAPTER = ROOT / "checkpoints/pusht_base", ROOT / "checkpoints/pusht_pcm"
NAMES = ("ddim", "ddim-k", "picard", "taa", "pcm", "newton")  # the samplers a PushT sweep compares
KS = "1,2,3,4,5,6,8,10,12,15,20,25,30,40,50"
SCORE_TOL, PX_TOL = 0.02, 1.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samplers", default=",".join(NAMES), help=f"comma list of {', '.join(NAMES)}")
    p.add_argument("--ks", default=KS, help="iteration budgets k")
    p.add_argument("--score-ks", default=None, help="the ks whose rollouts (scores) are run (default: all)")
    p.add_argument("--score-samplers", default="ddim,ddim-k,picard,taa,pcm",
                   help="samplers whose rollouts are run (default: all but newton, whose T sequential JVPs per "
                        "iteration make it a distance-only reference curve)")
    p.add_argument("--seed", type=int, default=100000, help="first episode seed (evaluation set: 100000)")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--num-steps", type=int, default=50, help="DDIM steps T of the reference trajectory")
    p.add_argument("--checkpoint", type=Path, default=BASE)
    p.add_argument("--adapter", type=Path, default=ADAPTER, help="PCM adapter folder (needed for pcm)")
    p.add_argument("--init", choices=INITS, default=None,
                   help="Picard/PCM/Newton first iterate (default noise; PCM: the adapter's)")
    p.add_argument("--distance-conditions", type=int, default=400)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    p.add_argument("--jobs", type=int, default=1, help="rollout runs in this many parallel processes (one per core; "
                                                       "on a GPU they share it)")
    p.add_argument("--device", default="cpu", help="torch device of the policy: cpu (default), cuda or cuda:N")
    p.add_argument("--eager", action="store_true",
                   help="run the UNet eagerly instead of as frozen TorchScript graphs (same outputs, slower)")
    p.add_argument("--out", type=Path, default=ROOT / "runs/sweep",
                   help="output folder (default runs/sweep; the quoted results/sweep* folders are tracked by git "
                        "and need --force)")
    p.add_argument("--force", action="store_true", help="allow writing into files git tracks (results/, checkpoints/)")
    a = p.parse_args(argv)
    try:
        a.samplers, a.ks = list(dict.fromkeys(a.samplers.split(","))), sorted({int(k) for k in a.ks.split(",")})
        a.score_ks = a.ks if a.score_ks is None else sorted({int(k) for k in a.score_ks.split(",")})
    except ValueError as e:
        p.exit(2, f"error: --ks and --score-ks must be comma lists of integers ({e})\n")
    bad = [s for s in a.samplers if s not in NAMES]
    errors = [(bad, f"unknown sampler(s) {', '.join(bad)}; choose from {', '.join(NAMES)}"),
              (min(a.ks + a.score_ks) < 1, "every k must be >= 1"),
              (not set(a.score_ks) <= set(a.ks), "--score-ks must be a subset of --ks"),
              (min(a.episodes, a.max_steps, a.num_steps, a.distance_conditions, a.threads, a.jobs) < 1,
               "--episodes, --max-steps, --num-steps, --distance-conditions, --threads and --jobs must be >= 1"),
              (not 0 <= a.seed <= 2**32 - a.episodes,
               f"--seed must be in 0..2^32-1 for every episode (the env's reset seed), got {a.seed}")]
    for cond, msg in errors:
        if cond:
            p.exit(2, f"error: {msg}\n")
    from pcm_policy.io import check_not_shipped

    try:
        check_not_shipped(a.out, a.force, "--force", "--out")
    except ValueError as e:
        p.exit(2, f"error: {e}\n")
    return a


def rollout_summary(policy, sampler, a) -> dict:
    eps = run_rollouts(policy, sampler, list(range(a.seed, a.seed + a.episodes)), max_steps=a.max_steps)["episodes"]
    return {**summarize(eps), "scores": [float(e["score"]) for e in eps]}


def reference(policy, sampler, a) -> dict:
    """DDIM-T rollouts: summary plus every chunk's raw observations and noise (as lists, for JSON)."""
    obs, noise = [], []

    def record(chunk, o, out):
        obs.append(o.clone())
        noise.append(out["x_T"].cpu().clone())

    with torch.no_grad():
        eps = run_rollouts(policy, sampler, list(range(a.seed, a.seed + a.episodes)), max_steps=a.max_steps,
                           on_chunk=record)["episodes"]
    summary = {**summarize(eps), "scores": [float(e["score"]) for e in eps]}
    return {"summary": summary, "obs": torch.cat(obs).tolist(), "noise": torch.cat(noise).tolist()}


def setup(a):
    """(base policy, make(name, k) -> sampler, {sampler: policy}, {sampler: cache key}, common key).
    Every sampler's cache key holds its full ``SamplerSpec``, so a change of any default recomputes it.
    Raises CheckpointError, FileNotFoundError, KeyError or ValueError on a bad checkpoint or adapter."""
    base = load_policy(a.checkpoint, pick_device(a.device))
    policies = {s: base for s in a.samplers}
    key = {"seed": a.seed, "episodes": a.episodes, "max_steps": a.max_steps, "num_steps": a.num_steps,
           "checkpoint": file_hash(a.checkpoint, [WEIGHTS]),
           **({"device": base.device.type} if base.device.type != "cpu" else {})}  # GPU runs cached apart
    specs = {s: SamplerSpec.named(s, num_steps=a.num_steps, tol=0.0, init=a.init if s in ITERATIVE else None,
                                  k=1 if s == "ddim-k" else None) for s in a.samplers if s != "pcm"}
    keys = {s: dict(key) for s in a.samplers}
    if "pcm" in a.samplers:
        policies["pcm"] = copy.deepcopy(base)
        spec, _ = load_adapter_folder(policies["pcm"], a.adapter)
        specs["pcm"] = spec.replace(num_steps=a.num_steps, tol=0.0, **({"init": a.init} if a.init else {}))
        keys["pcm"]["adapter"] = file_hash(a.adapter, [ADAPTER_WEIGHTS, ADAPTER_CONFIG])
    for s in a.samplers:
        keys[s]["spec"] = {**specs[s].to_dict(), "k": None}  # k varies within a sweep
    for pol in {id(p): p for p in (base, *policies.values())}.values():  # after the adapter is in: traced too
        pol.freeze(not a.eager)

    def make(name, k):  # a budget beyond what a sampler can use (ddim: T steps) is its converged output
        spec = specs[name]
        limit = a.num_steps if name == "ddim" else spec.max_iterations()
        return make_sampler(spec.replace(k=min(k, limit) if limit else k), base.noise_scheduler)

    if "ddim" not in specs:
        specs["ddim"] = SamplerSpec.named("ddim", num_steps=a.num_steps)
    make("ddim", a.num_steps)  # bad settings (e.g. --num-steps beyond the training timesteps) fail here, as errors
    return base, make, policies, keys, key


def score_run(a, s: str, k: int, label: str, t_start: float, ctx=None) -> dict:
    """Rollout summary of sampler ``s`` at budget ``k``, cached in OUT/runs (``ctx``: ``setup(a)``, else loaded)."""
    torch.set_num_threads(a.threads)
    _, make, policies, keys, _ = ctx or setup(a)
    return cached(a.out / "runs" / f"{s}_k{k}.json", {**keys[s], "sampler": s, "k": k},
                  lambda: rollout_summary(policies[s], make(s, k), a), label, t_start)


def main(argv=None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        ctx = setup(a)
    except (CheckpointError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    base, make, policies, keys, key = ctx

    runs, t_start = a.out / "runs", time.perf_counter()
    runs.mkdir(parents=True, exist_ok=True)
    ref = cached(runs / "reference.json", key, lambda: reference(base, make("ddim", a.num_steps), a),
                 f"reference DDIM-{a.num_steps} rollouts", t_start)
    ref_score, n_all = ref["summary"]["mean_score"], len(ref["obs"])
    idx = np.unique(np.linspace(0, n_all - 1, min(a.distance_conditions, n_all)).round().astype(int))
    with torch.no_grad():  # float32 -> JSON -> float32 is exact
        cond, x_T = base.condition(torch.tensor(ref["obs"])[idx]), torch.tensor(ref["noise"])[idx].to(base.device)
        traj = torch.cat([make("ddim", a.num_steps)(base.model_fn, x_T[i:i + 100], cond[i:i + 100],
                                                    return_trajectory=True)[1].trajectory.transpose(0, 1)
                          for i in range(0, len(idx), 100)])

    res, px = {}, pixel_distance(base)
    for s in a.samplers:
        dkey = {**keys[s], "ks": a.ks, "conditions": len(idx)}
        d = cached(runs / f"distance_{s}.json", dkey,
                   lambda s=s: distances_vs_k(s, make, policies[s].model_fn, a.ks, cond, x_T, traj, px),
                   f"distances {s}", t_start)
        res[s] = [{"sampler": s, "k": k, "score": None, "success_rate": None, "mean_iterations": None,
                   "median_latency_s": None, "distance": d[i]} for i, k in enumerate(a.ks)]
    todo = [(s, r) for s in a.samplers if s in a.score_samplers.split(",") for r in res[s] if r["k"] in a.score_ks]
    jobs = sorted(((s, r["k"]) for s, r in todo if not (s in ("ddim", "ddim-k") and r["k"] == a.num_steps)),
                  key=lambda sk: -min(sk[1], a.num_steps) * (2 if sk[0] in ITERATIVE else 1))
    if a.jobs > 1 and jobs:  # the rollouts in parallel processes (most expensive first); the loop reads the caches
        with ProcessPoolExecutor(a.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(score_run, *zip(*[(a, s, k, f"{s} k={k}", t_start) for s, k in jobs], strict=True)))
    for j, (s, r) in enumerate(todo):
        if s in ("ddim", "ddim-k") and r["k"] == a.num_steps:
            summary = ref["summary"]
            print(f"[{j + 1}/{len(todo)}] {s} k={r['k']}: the reference run", flush=True)
        else:
            summary = score_run(a, s, r["k"], f"[{j + 1}/{len(todo)}] {s} k={r['k']}", t_start, ctx)
        r.update({f: summary[f] for f in ("success_rate", "mean_iterations", "median_latency_s")},
                 score=summary["mean_score"])

    km = {s: k_match(rows, ref_score, SCORE_TOL, PX_TOL) for s, rows in res.items()}
    kp, kq = km.get("pcm"), km.get("picard")
    result = {
        "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
                     "checkpoint_hash": key["checkpoint"], "adapter_hash": keys.get("pcm", {}).get("adapter"),
                     "distance_conditions_used": len(idx),
                     "chunks_recorded": n_all, "tol": 0.0, "score_tol": SCORE_TOL, "px_tol": PX_TOL},
        "reference": {"sampler": "ddim", "k": a.num_steps, **ref["summary"]},
        "distance_unit": "px", "results": res, "k_match": km,
        "speedups": {"sequential_over_pcm": a.num_steps / kp if kp else None,
                     "picard_over_pcm": kq / kp if kp and kq else None,
                     **({"sequential_over_taa": a.num_steps / kt if (kt := km["taa"]) else None,
                         "picard_over_taa": kq / kt if kt and kq else None} if "taa" in km else {})},
    }
    write_json(a.out / "sweep.json", result)
    rows = [r for rs in res.values() for r in rs]
    write_csv(a.out / "sweep.csv", rows)
    plots(a.out, res, ref_score, f"DDIM-{a.num_steps}", "px", PX_TOL, SCORE_TOL)

    print(f"\nreference DDIM-{a.num_steps}: score {ref_score:.3f}, success {100 * ref['summary']['success_rate']:.0f}%")
    print(f"{'sampler':8s} {'k':>4s} {'score':>6s} {'success':>7s} {'dist px':>9s}")
    for r in rows:
        sc = "-" if r["score"] is None else f"{r['score']:.3f}"
        su = "-" if r["success_rate"] is None else f"{100 * r['success_rate']:.0f}%"
        print(f"{r['sampler']:8s} {r['k']:4d} {sc:>6s} {su:>7s} {r['distance']:9.3g}")
    print("k_match:", km, "| speedups:", result["speedups"])
    print(f"wrote {a.out / 'sweep.json'}, sweep.csv and plots ({time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
