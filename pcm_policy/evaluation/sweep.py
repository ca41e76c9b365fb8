"""The evaluation sweep of any task: distance and score vs k per sampler, k_match, cached per row.

1. Conditions: ``task.conditions("eval", conditions)`` (cond, x_T), and the reference: sequential DDIM-T
   (T = ``task.num_steps``) on them, its trajectory kept (``Cache.tensors``).
2. Distances (``distances_vs_k``): the mean ``task.distance`` of every sampler's output at every k to the
   reference output, in ``task.unit``; one cached run per sampler (all its k).
3. Scores (when ``task.score``): ``task.score(spec, k)`` of every sampler at every k of ``score_ks``, with
   tol 0 (exactly k iterations), one cached row each, so an interrupted sweep resumes per row; the
   reference score is ``task.score(None, None)``. A budget beyond what a sampler can use (ddim: T steps,
   a PCM jump's own) is its converged output; ddim and ddim-k at k >= T are the reference itself.

k_match (``evaluation.k_match``): the smallest k whose distance is under ``dist_tol`` and (with a score)
whose score is within ``score_tol`` of the reference's (``score_tol_rel``: ``score_tol`` x |reference score|;
``match_field``: the row field held under ``dist_tol`` instead of the distance, e.g. the images' uint8
difference of the scored samples). Every cached value is keyed by the settings that
decide it (the task's fingerprint and key, the full ``SamplerSpec``, the adapter tensors for adapted
samplers, the conditions), so a changed setting recomputes exactly what it affects.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..adapters import load_sampler
from ..io import check_not_shipped
from ..sampling import K_STEPS, SamplerSpec, make_sampler
from . import distances_vs_k, k_match
from .cache import Cache

__all__ = ["SweepConfig", "run_sweep", "sampler_key"]


@dataclass
class SweepConfig:
    """What a sweep measures (typed; validated on construction).

    ``samplers``: {name: SamplerSpec} (its ``k`` is replaced per budget; ``tol`` should be 0 for exactly k
    iterations); ``ks``: budgets; ``score_ks`` / ``score_samplers``: the cells whose score runs (None: all);
    ``conditions``: eval conditions for the distances; ``jobs``: score cells in this many spawned processes
    (needs ``run_sweep(..., factory=)``). Raises ValueError for an empty sampler set, k < 1, score_ks not in
    ks, a count < 1, or ``out`` holding tracked files without ``force``."""

    samplers: dict[str, SamplerSpec]
    ks: list[int]
    out: Path
    score_ks: list[int] | None = None
    score_samplers: list[str] | None = None
    conditions: int = 400
    score_tol: float = 0.02
    dist_tol: float = 1.0
    batch: int = 100
    jobs: int = 1
    force: bool = False
    settings: dict = field(default_factory=dict)  # recorded in sweep.json (the caller's flags)
    score_tol_rel: bool = False  # score_tol is a fraction of |reference score| (images: FID within 1%)
    match_field: str = "distance"  # the row field k_match holds under dist_tol (images: "uint8_diff" of the score)

    def __post_init__(self):
        self.ks, self.out = sorted(set(int(k) for k in self.ks)), Path(self.out)
        self.score_ks = self.ks if self.score_ks is None else sorted(set(int(k) for k in self.score_ks))
        self.score_samplers = list(self.samplers) if self.score_samplers is None else list(self.score_samplers)
        for cond, msg in ((not self.samplers, "no sampler to sweep"),
                          (not self.ks or min(self.ks + self.score_ks) < 1, "every k must be >= 1"),
                          (not set(self.score_ks) <= set(self.ks), "--score-ks must be a subset of --ks"),
                          (min(self.conditions, self.batch, self.jobs) < 1, "conditions, batch and jobs must be >= 1")):
            if cond:
                raise ValueError(msg)
        check_not_shipped(self.out, self.force, "--force", "--out")


def sampler_key(task, spec: SamplerSpec) -> dict:
    """What decides a sampler's results on ``task``: the task's fingerprint and key, the spec (k aside) and,
    for a sampler that uses the adapter (pcm), a hash of the adapter tensors on ``task.module``."""
    key = {"task": task.fingerprint(), "spec": {**spec.to_dict(), "k": None}}
    if spec.name == "pcm":
        key["adapter"] = task.fingerprint(adapter=True)
    return key


def limited(task, spec: SamplerSpec, k: int) -> SamplerSpec:
    """``spec`` held to k calls, capped where k is past what it can use (ddim: T steps; a jump's own limit)."""
    limit = task.num_steps if spec.name == "ddim" else spec.max_iterations()
    return spec.replace(k=min(k, limit) if limit else k)


def _score_cell(factory, name: str, k: int, path: str, key: dict) -> None:
    """A worker process: build the task, run one score cell into the cache (``run_sweep`` reads it back)."""
    task, specs = factory()
    spec = limited(task, specs[name], k)
    Cache(Path(path).parent).json(Path(path).stem, key, lambda: task.score(spec, k), f"{name} k={k}")


def run_sweep(task, cfg: SweepConfig, *, factory=None) -> dict:
    """The sweep of ``task`` (module doc); writes ``out``/sweep.json (``evaluation.report`` then writes the
    CSV, table and figures) and returns it: ``settings``, ``reference`` (its score details),
    ``distance_unit``, ``results`` ({sampler: rows with sampler, k, score and the task's other score fields,
    distance}), ``k_match`` and ``speedups``. ``factory``: a picklable ``() -> (Task, {name: spec})`` for
    ``jobs > 1``. Raises ValueError for settings the task's scheduler cannot take."""
    from ..io import write_json

    cache, t_start, T = Cache(cfg.out / "runs"), time.perf_counter(), task.num_steps
    base = {"task": task.fingerprint(), "num_steps": T}
    ddim = SamplerSpec.named("ddim", num_steps=T)
    make_sampler(ddim, task.scheduler)  # bad settings (e.g. T beyond the training timesteps) fail here
    with torch.no_grad():
        cond, x_T = cache.tensors("conditions", {**base, "n": cfg.conditions},
                                  lambda: task.split("eval", cfg.conditions), "eval conditions")
        traj = cache.tensors("reference", {**base, "n": cfg.conditions}, lambda: torch.cat([
            make_sampler(ddim, task.scheduler)(task.model_fn, x_T[i:i + cfg.batch], _rows(cond, i, cfg.batch),
                                               return_trajectory=True)[1].trajectory.transpose(0, 1)
            for i in range(0, len(x_T), cfg.batch)]), f"reference DDIM-{T}")

    def make(name, k):
        return load_sampler(limited(task, cfg.samplers[name], k), task.scheduler)  # solvers built for k-step peers

    res, keys = {}, {s: sampler_key(task, spec) for s, spec in cfg.samplers.items()}
    for s, spec in cfg.samplers.items():
        name = spec.name if spec.name == "ddim" or spec.name in K_STEPS else s  # ddim: read off traj
        d = cache.json(f"distance_{s}", {**keys[s], "ks": cfg.ks, "conditions": len(x_T)},
                       lambda s=s, name=name: distances_vs_k(name, lambda _n, kk, s=s: make(s, kk), task.model_fn,
                                                             cfg.ks, cond, x_T, traj, task.distance, cfg.batch),
                       f"distances {s}", t_start)
        res[s] = [{"sampler": s, "k": k, "score": None, "distance": d[i]} for i, k in enumerate(cfg.ks)]

    ref = None
    if task.score is not None:
        ref = cache.json("reference_score", base, lambda: task.score(None, None), f"reference DDIM-{T} score", t_start)
        cells = [(s, r) for s in cfg.samplers if s in cfg.score_samplers for r in res[s] if r["k"] in cfg.score_ks]

        def is_ref(s, k):
            return cfg.samplers[s].name in ("ddim", "ddim-k") and k >= T

        todo = [(s, r["k"]) for s, r in cells if not is_ref(s, r["k"])
                and not cache.has(f"{s}_k{r['k']}", {**keys[s], "k": r["k"]})]
        if cfg.jobs > 1 and factory is not None and todo:  # most expensive first; the loop reads the caches
            with ProcessPoolExecutor(cfg.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                list(pool.map(_score_cell, *zip(*[(factory, s, k, str(cfg.out / "runs" / f"{s}_k{k}.json"),
                                                   {**keys[s], "k": k}) for s, k in sorted(todo, key=lambda x: -x[1])],
                                                strict=True)))
        for j, (s, r) in enumerate(cells):
            label, k = f"[{j + 1}/{len(cells)}] {s} k={r['k']}", r["k"]
            if is_ref(s, k):
                sc = ref
                print(f"{label}: the reference run", flush=True)
            else:
                spec = limited(task, cfg.samplers[s], k)
                sc = cache.json(f"{s}_k{k}", {**keys[s], "k": k}, lambda spec=spec, k=k: task.score(spec, k), label,
                                t_start)
            r.update({f: v for f, v in sc.items() if f != "detail"})
        fields = list(dict.fromkeys(f for rows in res.values() for r in rows for f in r))
        for rows in res.values():
            for i, r in enumerate(rows):  # one column set, the distance last
                rows[i] = {**{f: r.get(f) for f in fields if f != "distance"}, "distance": r["distance"]}

    ref_score = ref["score"] if ref else None
    tol = cfg.score_tol * abs(ref_score) if cfg.score_tol_rel and ref_score is not None else cfg.score_tol
    km = {s: k_match(rows if cfg.match_field == "distance" else
                     [{**r, "distance": r[cfg.match_field]} for r in rows if r.get(cfg.match_field) is not None],
                     ref_score, tol, cfg.dist_tol) for s, rows in res.items()}
    kp, kq = km.get("pcm"), km.get("picard")
    result = {"settings": {**cfg.settings, "samplers": {s: v.to_dict() for s, v in cfg.samplers.items()},
                           "ks": cfg.ks, "score_ks": cfg.score_ks, "task": task.name, "task_fingerprint": base["task"],
                           "conditions_used": len(x_T), "tol": 0.0, "score_tol": cfg.score_tol,
                           "dist_tol": cfg.dist_tol,
                           **({"score_tol_rel": True} if cfg.score_tol_rel else {}),
                           **({"match_field": cfg.match_field} if cfg.match_field != "distance" else {})},
              "reference": {"sampler": "ddim", "k": T, **(ref.get("detail", ref) if ref else {})},
              "distance_unit": task.unit, "results": res, "k_match": km,
              "speedups": {"sequential_over_pcm": T / kp if kp else None,
                           "picard_over_pcm": kq / kp if kp and kq else None,
                           **({"sequential_over_taa": T / kt if (kt := km["taa"]) else None,
                               "picard_over_taa": kq / kt if kt and kq else None} if "taa" in km else {})},
              "elapsed_s": time.perf_counter() - t_start}
    write_json(cfg.out / "sweep.json", result)
    return result


def _rows(cond, i: int, n: int):
    from ..sampling import index_cond

    return index_cond(cond, slice(i, i + n))
