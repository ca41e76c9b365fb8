"""The PushT sweep: score and action distance vs k per sampler (``scripts/eval_sweep.py``).

1. Reference: sequential DDIM-T rollouts on seeds seed..seed+episodes-1; every chunk's observations and
   initial noise are recorded (the rollout's ``on_chunk`` hook). Its mean score is the target.
2. Distances (``evaluation.distances_vs_k``): on up to ``distance_conditions`` of those (condition, noise)
   pairs, evenly spaced, the mean pixel distance of each sampler's output at each k to DDIM-T's.
3. Scores: rollouts with each sampler at each k of ``score_ks``, tol 0 (exactly k iterations), on the
   same seeds and therefore the same noise per (seed, chunk); optionally in parallel processes.

k_match (``evaluation.k_match``): the smallest k within ``SCORE_TOL`` of the reference score and under
``PX_TOL`` px. Every run is cached under ``out/runs`` keyed by its settings (``evaluation.cached``).
"""

from __future__ import annotations

import copy
import dataclasses
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..device import check_threads, pick_device
from ..evaluation import cached, distances_vs_k, file_hash, k_match, plots, write_csv
from ..io import check_not_shipped, write_json
from ..sampling import INITS, ITERATIVE, SamplerSpec, make_sampler
from .checkpoint import ADAPTER as ADAPTER_WEIGHTS
from .checkpoint import ADAPTER_CONFIG, WEIGHTS, load_adapter_folder, load_policy
from .pct_data import pixel_distance
from .rollout import run_rollouts, summarize

__all__ = ["KS", "NAMES", "PX_TOL", "SCORE_TOL", "SweepConfig", "reference", "run_sweep", "score_run", "setup"]

NAMES = ("ddim", "ddim-k", "picard", "taa", "pcm", "newton")  # the samplers a PushT sweep compares
KS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50)
SCORE_TOL, PX_TOL = 0.02, 1.0


@dataclass
class SweepConfig:
    """Settings of a sweep (the flags of ``scripts/eval_sweep.py``, typed); validated on construction.

    ``ks``: iteration budgets; ``score_ks``: those whose rollouts run (None: all); ``score_samplers``:
    samplers whose rollouts run (newton, with T sequential JVPs per iteration, is distance-only by
    default). ``init``: the Picard/PCM/Newton first iterate (None: noise; PCM: its adapter's). ``jobs``:
    parallel rollout processes. ``force``: allow writing into files git tracks.

    Raises:
        ValueError: an unknown sampler, a k < 1, score_ks not within ks, a count < 1, a seed outside
            0..2^32-1 for some episode, or ``out`` holding tracked files without ``force``.
    """

    samplers: list[str] = field(default_factory=lambda: list(NAMES))
    ks: list[int] = field(default_factory=lambda: list(KS))
    score_ks: list[int] | None = None
    score_samplers: list[str] = field(default_factory=lambda: ["ddim", "ddim-k", "picard", "taa", "pcm"])
    seed: int = 100000
    episodes: int = 50
    max_steps: int = 200
    num_steps: int = 50
    checkpoint: Path = Path("checkpoints/pusht_base")
    adapter: Path = Path("checkpoints/pusht_pcm")
    init: str | None = None
    distance_conditions: int = 400
    threads: int = 1
    jobs: int = 1
    device: str = "cpu"
    eager: bool = False
    out: Path = Path("runs/sweep")
    force: bool = False

    def __post_init__(self):
        self.samplers, self.ks = list(dict.fromkeys(self.samplers)), sorted(set(self.ks))
        self.score_ks = self.ks if self.score_ks is None else sorted(set(self.score_ks))
        self.checkpoint, self.adapter, self.out = Path(self.checkpoint), Path(self.adapter), Path(self.out)
        bad = [s for s in self.samplers if s not in NAMES]
        errors = [(bad, f"unknown sampler(s) {', '.join(bad)}; choose from {', '.join(NAMES)}"),
                  (min(self.ks + self.score_ks) < 1, "every k must be >= 1"),
                  (not set(self.score_ks) <= set(self.ks), "--score-ks must be a subset of --ks"),
                  (self.init is not None and self.init not in INITS, f"--init must be one of {', '.join(INITS)}"),
                  (min(self.episodes, self.max_steps, self.num_steps, self.distance_conditions, self.threads,
                       self.jobs) < 1,
                   "--episodes, --max-steps, --num-steps, --distance-conditions, --threads and --jobs must be >= 1"),
                  (not 0 <= self.seed <= 2**32 - self.episodes,
                   f"--seed must be in 0..2^32-1 for every episode (the env's reset seed), got {self.seed}")]
        for cond, msg in errors:
            if cond:
                raise ValueError(msg)
        check_not_shipped(self.out, self.force, "--force", "--out")


def rollout_summary(policy, sampler, cfg: SweepConfig) -> dict:
    """``summarize`` of the sweep's episodes with ``sampler``, plus every episode's score."""
    eps = run_rollouts(policy, sampler, list(range(cfg.seed, cfg.seed + cfg.episodes)),
                       max_steps=cfg.max_steps)["episodes"]
    return {**summarize(eps), "scores": [float(e["score"]) for e in eps]}


def reference(policy, sampler, cfg: SweepConfig) -> dict:
    """DDIM-T rollouts: ``{"summary", "obs", "noise"}``, every chunk's raw observations ``(n_obs_steps,
    obs_dim)`` and initial noise ``(horizon, action_dim)`` as nested lists (JSON)."""
    obs, noise = [], []

    def record(chunk, o, out):
        obs.append(o.clone())
        noise.append(out["x_T"].cpu().clone())

    with torch.no_grad():
        eps = run_rollouts(policy, sampler, list(range(cfg.seed, cfg.seed + cfg.episodes)), max_steps=cfg.max_steps,
                           on_chunk=record)["episodes"]
    summary = {**summarize(eps), "scores": [float(e["score"]) for e in eps]}
    return {"summary": summary, "obs": torch.cat(obs).tolist(), "noise": torch.cat(noise).tolist()}


def setup(cfg: SweepConfig) -> tuple:
    """(base policy, make(name, k) -> sampler, {sampler: policy}, {sampler: cache key}, common key).

    Every sampler's cache key holds its full ``SamplerSpec``, so a change of any default recomputes it.
    Raises CheckpointError, FileNotFoundError, KeyError or ValueError on a bad checkpoint, adapter or
    device, or settings the scheduler cannot take."""
    base = load_policy(cfg.checkpoint, pick_device(cfg.device))
    policies = {s: base for s in cfg.samplers}
    key = {"seed": cfg.seed, "episodes": cfg.episodes, "max_steps": cfg.max_steps, "num_steps": cfg.num_steps,
           "checkpoint": file_hash(cfg.checkpoint, [WEIGHTS]),
           **({"device": base.device.type} if base.device.type != "cpu" else {})}  # GPU runs cached apart
    specs = {s: SamplerSpec.named(s, num_steps=cfg.num_steps, tol=0.0, init=cfg.init if s in ITERATIVE else None,
                                  k=1 if s == "ddim-k" else None) for s in cfg.samplers if s != "pcm"}
    keys = {s: dict(key) for s in cfg.samplers}
    if "pcm" in cfg.samplers:
        policies["pcm"] = copy.deepcopy(base)
        spec, _ = load_adapter_folder(policies["pcm"], cfg.adapter)
        specs["pcm"] = spec.replace(num_steps=cfg.num_steps, tol=0.0, **({"init": cfg.init} if cfg.init else {}))
        keys["pcm"]["adapter"] = file_hash(cfg.adapter, [ADAPTER_WEIGHTS, ADAPTER_CONFIG])
    for s in cfg.samplers:
        keys[s]["spec"] = {**specs[s].to_dict(), "k": None}  # k varies within a sweep
    for pol in {id(p): p for p in (base, *policies.values())}.values():  # after the adapter is in: traced too
        pol.freeze(not cfg.eager)

    def make(name, k):  # a budget beyond what a sampler can use (ddim: T steps) is its converged output
        spec = specs[name]
        limit = cfg.num_steps if name == "ddim" else spec.max_iterations()
        return make_sampler(spec.replace(k=min(k, limit) if limit else k), base.noise_scheduler)

    if "ddim" not in specs:
        specs["ddim"] = SamplerSpec.named("ddim", num_steps=cfg.num_steps)
    make("ddim", cfg.num_steps)  # bad settings (e.g. num_steps beyond the training timesteps) fail here
    return base, make, policies, keys, key


def score_run(cfg: SweepConfig, s: str, k: int, label: str, t_start: float, ctx=None) -> dict:
    """Rollout summary of sampler ``s`` at budget ``k``, cached in ``out/runs``.

    ``ctx``: ``setup(cfg)``, else loaded here (a worker process). ``label``/``t_start``: progress lines."""
    torch.set_num_threads(cfg.threads)
    _, make, policies, keys, _ = ctx or setup(cfg)
    return cached(cfg.out / "runs" / f"{s}_k{k}.json", {**keys[s], "sampler": s, "k": k},
                  lambda: rollout_summary(policies[s], make(s, k), cfg), label, t_start)


def run_sweep(cfg: SweepConfig) -> dict:
    """The whole sweep; writes ``out``/sweep.json, sweep.csv, score_vs_k.png, distance_vs_k.png and
    pareto.png, prints progress and a table.

    Returns:
        the sweep.json content: ``settings``, ``reference`` (DDIM-T summary), ``distance_unit`` ("px"),
        ``results`` ({sampler: rows with k, score, success_rate, mean_iterations, median_latency_s,
        distance}), ``k_match`` and ``speedups``.
    Raises:
        as ``setup``.
    """
    cfg = dataclasses.replace(cfg, threads=check_threads(cfg.threads))  # the workers' count too
    torch.set_num_threads(cfg.threads)
    ctx = setup(cfg)
    base, make, policies, keys, key = ctx
    runs, t_start = cfg.out / "runs", time.perf_counter()
    runs.mkdir(parents=True, exist_ok=True)
    T = cfg.num_steps
    ref = cached(runs / "reference.json", key, lambda: reference(base, make("ddim", T), cfg),
                 f"reference DDIM-{T} rollouts", t_start)
    ref_score, n_all = ref["summary"]["mean_score"], len(ref["obs"])
    idx = np.unique(np.linspace(0, n_all - 1, min(cfg.distance_conditions, n_all)).round().astype(int))
    with torch.no_grad():  # float32 -> JSON -> float32 is exact
        cond, x_T = base.condition(torch.tensor(ref["obs"])[idx]), torch.tensor(ref["noise"])[idx].to(base.device)
        traj = torch.cat([make("ddim", T)(base.model_fn, x_T[i:i + 100], cond[i:i + 100],
                                          return_trajectory=True)[1].trajectory.transpose(0, 1)
                          for i in range(0, len(idx), 100)])

    res, px = {}, pixel_distance(base)
    for s in cfg.samplers:
        dkey = {**keys[s], "ks": cfg.ks, "conditions": len(idx)}
        d = cached(runs / f"distance_{s}.json", dkey,
                   lambda s=s: distances_vs_k(s, make, policies[s].model_fn, cfg.ks, cond, x_T, traj, px),
                   f"distances {s}", t_start)
        res[s] = [{"sampler": s, "k": k, "score": None, "success_rate": None, "mean_iterations": None,
                   "median_latency_s": None, "distance": d[i]} for i, k in enumerate(cfg.ks)]
    todo = [(s, r) for s in cfg.samplers if s in cfg.score_samplers for r in res[s] if r["k"] in cfg.score_ks]
    jobs = sorted(((s, r["k"]) for s, r in todo if not (s in ("ddim", "ddim-k") and r["k"] == T)),
                  key=lambda sk: -min(sk[1], T) * (2 if sk[0] in ITERATIVE else 1))
    if cfg.jobs > 1 and jobs:  # the rollouts in parallel processes (most expensive first); the loop reads the caches
        with ProcessPoolExecutor(cfg.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(score_run, *zip(*[(cfg, s, k, f"{s} k={k}", t_start) for s, k in jobs], strict=True)))
    for j, (s, r) in enumerate(todo):
        if s in ("ddim", "ddim-k") and r["k"] == T:
            summary = ref["summary"]
            print(f"[{j + 1}/{len(todo)}] {s} k={r['k']}: the reference run", flush=True)
        else:
            summary = score_run(cfg, s, r["k"], f"[{j + 1}/{len(todo)}] {s} k={r['k']}", t_start, ctx)
        r.update({f: summary[f] for f in ("success_rate", "mean_iterations", "median_latency_s")},
                 score=summary["mean_score"])

    km = {s: k_match(rows, ref_score, SCORE_TOL, PX_TOL) for s, rows in res.items()}
    kp, kq = km.get("pcm"), km.get("picard")
    result = {
        "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
                     "checkpoint_hash": key["checkpoint"], "adapter_hash": keys.get("pcm", {}).get("adapter"),
                     "distance_conditions_used": len(idx),
                     "chunks_recorded": n_all, "tol": 0.0, "score_tol": SCORE_TOL, "px_tol": PX_TOL},
        "reference": {"sampler": "ddim", "k": T, **ref["summary"]},
        "distance_unit": "px", "results": res, "k_match": km,
        "speedups": {"sequential_over_pcm": T / kp if kp else None,
                     "picard_over_pcm": kq / kp if kp and kq else None,
                     **({"sequential_over_taa": T / kt if (kt := km["taa"]) else None,
                         "picard_over_taa": kq / kt if kt and kq else None} if "taa" in km else {})},
    }
    write_json(cfg.out / "sweep.json", result)
    rows = [r for rs in res.values() for r in rs]
    write_csv(cfg.out / "sweep.csv", rows)
    plots(cfg.out, res, ref_score, f"DDIM-{T}", "px", PX_TOL, SCORE_TOL)

    print(f"\nreference DDIM-{T}: score {ref_score:.3f}, success {100 * ref['summary']['success_rate']:.0f}%")
    print(f"{'sampler':8s} {'k':>4s} {'score':>6s} {'success':>7s} {'dist px':>9s}")
    for r in rows:
        sc = "-" if r["score"] is None else f"{r['score']:.3f}"
        su = "-" if r["success_rate"] is None else f"{100 * r['success_rate']:.0f}%"
        print(f"{r['sampler']:8s} {r['k']:4d} {sc:>6s} {su:>7s} {r['distance']:9.3g}")
    print("k_match:", km, "| speedups:", result["speedups"])
    print(f"wrote {cfg.out / 'sweep.json'}, sweep.csv and plots ({time.perf_counter() - t_start:.0f} s)")
    return result
