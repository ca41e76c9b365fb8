"""The PCM paper's one-update PCT objective and its switching-schedule tuning (``pct.objective: picard``).

Importing this module registers the objective "picard" in ``training.pct.OBJECTIVES`` (``register``), the one seam
through which the PCT driver (``training.pct.run_pct``) runs it; ``scripts/train_pct.py`` imports it when a config
names an objective the core does not know. The core's own objective is the shipped anytime PCM's ``jump``.

Glossary (PCM paper, PCT objective and model switching; ``docs/method.md``):
  one update    L_PCT = alpha_k ||Phi_theta(X_n^k; cond_n) - X*_n||^2 (``training.pct.pct_loss``, also the
                validation loss every objective logs), (n, k) ~ U(train) x U{0..K-1} (``PCTBatches``), alpha_k =
                1/sqrt(Var_k); Phi by the update rule ``pct.form`` names (``sampling.FORMS``: the core's
                "paradigms" or the paper's "chain", supplement eq. 1).
  X^k           base full-window Picard iterates k of the trajectory store (``training.pct_data``): stored where they
                fit in ``cache_bytes``, else made per batch by ``PCTBatches`` (SD-sized latents).
  schedule      lambda(k) = ``Switch(k_on, k_off, space)``: hard switches and linear ramps (weight or feature space),
                with or without TAA, tuned after training on held-out conditions (``tune_schedule``): the candidate
                under the threshold at the smallest k wins (``training.pct.choose_schedule``).
"""

from __future__ import annotations

import torch

from ..sampling import TAA, SamplerSpec, Switch, index_cond
from ..training import distributed as dist
from ..training.pct import (
    OBJECTIVES,
    Distance,
    Objective,
    _first_below,
    choose_schedule,
    pcm_distances,
    pct_loss,
)
from ..training.pct_data import base_iterates

__all__ = ["PCTBatches", "candidates", "register", "tune_from_config", "tune_schedule"]


class PCTBatches:
    """Batches of (n, k) for ``pct_loss``: n over the training split (``data["split"] == 0``), k ~ U{0..K-1}
    (``k_max`` narrows it to U{0..k_max-1}), drawn with torch's global RNG (the loop saves and restores
    it, so a resumed run continues the same stream). ``data`` (``training.pct_data.load``): ``cond``,
    ``x_T``, ``x_star`` (N, T+1, ...), ``iterates`` (N, K, T+1, ...) or None, ``split`` (N,), ``var_k`` (K,).
    Without stored iterates, X^k is made per batch by base Picard (``model_fn``, ``grid``, ``safeguard``,
    ``init``: as the store's); the same values either way. ``iterates=False``: batches without X^k.
    ``sharded`` (several processes, ``distributed``): every rank draws the whole batch's (n, k), keeps its share
    of the rows and makes only their X^k (the loop then takes the batch as it is: ``self.sharded``).

    Raises:
        ValueError: neither stored iterates nor ``model_fn`` and ``grid`` to make them."""

    def __init__(self, data: dict, batch_size: int, *, k_max: int | None = None, model_fn=None, grid=None,
                 safeguard: float | None = None, init: str | None = None, iterates: bool = True,
                 sharded: bool = False):
        self.idx = (data["split"] == 0).nonzero().flatten()
        self.data, self.batch_size, self.with_iterates, self.sharded = data, batch_size, iterates, sharded
        K = data["iterates"].shape[1] if data.get("iterates") is not None else len(data["var_k"])
        self.K = min(k_max or K, K)
        if iterates and data.get("iterates") is None and (model_fn is None or grid is None):
            raise ValueError("PCTBatches: without stored iterates, pass model_fn and grid to make them per batch")
        self.model_fn, self.grid, self.safeguard, self.init = model_fn, grid, safeguard, init

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        n = self.idx[torch.randint(0, len(self.idx), (self.batch_size,))]
        k = torch.randint(0, self.K, (self.batch_size,))
        if self.sharded:  # this rank's rows of the whole batch's draws
            n, k = dist.shard_batch((n, k))
        d = self.data
        b = {"x_star": d["x_star"][n], "cond": index_cond(d["cond"], n), "k": k, "x_T": d["x_T"][n]}
        if not self.with_iterates:
            return b
        if d.get("iterates") is not None:
            b["x_k"] = d["iterates"][n, k]
        else:
            its = base_iterates(self.model_fn, self.grid, b["x_T"], b["cond"], int(k.max()), safeguard=self.safeguard,
                                init=self.init)
            b["x_k"] = torch.stack([its[int(kk)][:, i] for i, kk in enumerate(k)])  # (B, T+1, ...)
        return b


def candidates(hard: list[int], ramps: list[list[int]], spaces: list[str], taas=(None,),
               **settings) -> list[SamplerSpec]:
    """PCM specs: hard switches (weight space: feature space is identical at lambda in {0, 1}) and linear
    ramps, each with every TAA in ``taas`` (None: plain Picard updates; an int m: ``TAA(memory=m)``);
    ``settings`` (safeguard, init, window) go into every spec."""
    sw = [Switch(k, k, "weight") for k in hard] + [Switch(a, b, sp) for sp in spaces for a, b in ramps]
    taas = [TAA(memory=t) if isinstance(t, int) and t >= 2 else (None if isinstance(t, int) else t) for t in taas]
    return [SamplerSpec.named("pcm", switch=s, taa=t, **settings) for t in taas for s in sw]


def tune_schedule(model_fn, grid, cond, x_T, target, cands: list[SamplerSpec], k_max: int, distance: Distance,
                  threshold: float = 1.0) -> tuple[SamplerSpec, dict]:
    """Distances of every candidate (and plain Picard, for reference) on held-out conditions; returns
    (the chosen spec, metrics with every candidate's distances, Picard's and the speed-up over it)."""
    results = [{"spec": c, "distance": pcm_distances(model_fn, grid, cond, x_T, target, c, k_max, distance)}
               for c in cands]
    chosen = choose_schedule(results, threshold)
    base = cands[0].replace(switch=Switch(0, 0), taa=None) if cands else None
    picard = {"distance": pcm_distances(model_fn, grid, cond, x_T, target, base, k_max, distance)}
    picard["k_match"] = _first_below(picard["distance"], threshold)
    speedup = picard["k_match"] / chosen["k_match"] if picard["k_match"] and chosen["k_match"] else None
    rows = [{**r, "spec": r["spec"].to_dict()} for r in results]
    return chosen["spec"], {"candidates": rows, "picard": picard,
                            "chosen": {**chosen, "spec": chosen["spec"].to_dict()}, "conditions": len(x_T),
                            "k_max": k_max, "threshold": threshold, "speedup_vs_picard": speedup}


def tune_from_config(model_fn, grid, cond, x_T, target, tune: dict, settings: dict,
                     distance: Distance) -> tuple[SamplerSpec, dict]:
    """``tune_schedule`` over the candidates of a ``pct.tune`` config (hard, ramps, spaces, anderson, k_max,
    threshold: default 1.0) on held-out ``cond``, ``x_T`` and ``target`` = X*[T]; ``settings`` go into
    every candidate."""
    cands = candidates(list(tune["hard"]), [list(r) for r in tune["ramps"]], list(tune["spaces"]),
                       list(tune.get("anderson", [0])), **settings)
    return tune_schedule(model_fn, grid, cond, x_T, target, cands, int(tune["k_max"]), distance,
                         threshold=float(tune.get("threshold", 1.0)))


def _build(pc: dict, model_fn, grid, alpha, settings: dict, distance: Distance):
    """The spec validated during training (``pct.val.schedule`` with ``settings``) and L_PCT with Phi by
    ``pct.form``."""
    form = pc.get("form", "paradigms")
    spec = SamplerSpec.from_dict(pc["val"]["schedule"]).replace(**settings)
    return spec, lambda b: pct_loss(model_fn, b, grid, alpha, form)


def _batches(pc: dict, data: dict, data_cfg, model_fn, grid, run_dir) -> PCTBatches:
    return PCTBatches(data, int(pc["batch_size"]), k_max=pc.get("k_max"), model_fn=model_fn, grid=grid,
                      safeguard=data_cfg.safeguard, init=data_cfg.init, sharded=dist.world_size() > 1)


def _tune(pc: dict, spec: SamplerSpec, model_fn, grid, cond, x_T, target, settings: dict, distance: Distance):
    return tune_from_config(model_fn, grid, cond, x_T, target, pc["tune"], settings, distance)


def register() -> None:
    """Name the paper's objective in the PCT driver: ``training.pct.OBJECTIVES["picard"]``. Runs on import;
    idempotent."""
    OBJECTIVES["picard"] = Objective(build=_build, batches=_batches, tune=_tune)


register()
