"""Picard Consistency Training: the loss, its batches (off- or on-policy) and the schedule tuning.

Glossary (spec ``pcm.md`` §4-§5; PCM paper, PCT objective and model switching):
  Phi_theta(X)  one full-window Picard update with the adapted model (LoRA scale 1):
                x_j <- x_0 + sum_{i<j} d_i(x_i), all T drifts in ONE batched call; ``picard_update``
                of the sampler core, so the update is written once. Gradients flow through every drift
                and the cumulative sum; only the LoRA parameters require grad.
  L_PCT         alpha_k ||Phi_theta(X_n^k; cond_n) - X*_n||^2, (n, k) ~ U(train) x U{0..K-1}; the squared
                norm is a mean over positions 1..T and elements; alpha_k = 1 / sqrt(Var_k).
  lambda(k)     LoRA scale of PCM iteration k: ``linear_schedule(k_on, k_off)`` (hard switch when
                k_on = k_off), in weight space (W_0 + lambda dW) or feature space (mixed eps).
  distance      mean over samples and the H predicted actions of the Euclidean distance between PCM's
                output after k iterations (tol 0) and X*[T], normalised and in pixels (env units).
"""

from __future__ import annotations

import torch

from ..sampling import (
    linear_schedule,
    make_grid,
    pcm_evaluator,
    picard_loop,
    picard_update,
    repeat_cond,
    sample_pcm,
    schedule_kwargs,
)
from .pct_data import TrajDataConfig, iterates

__all__ = ["PCTBatches", "action_distance", "alpha_from_var", "candidates", "choose_schedule", "ddim_grid",
           "make_val_fn", "pcm_distances", "pct_loss", "phi", "tune_schedule", "unrolled_loss"]


def phi(policy, X: torch.Tensor, cond: torch.Tensor, grid, lora_scale: float = 1.0) -> torch.Tensor:
    """Phi_theta: trajectory X (T+1, B, H, A) -> one full-window Picard update (T+1, B, H, A)."""
    T, B = len(grid), X.shape[1]
    xs = X[:T]
    out = policy.denoise(xs.flatten(0, 1), grid.timesteps.repeat_interleave(B), repeat_cond(cond, T),
                         lora_scale=lora_scale)
    return torch.cat([X[:1], picard_update(grid, xs, out, 0, X[0])])  # Picard: x_j = x_0 + cumsum of drifts


def unrolled_loss(policy, batch: dict, grid, schedule: dict, iters: int, first: int = 1,
                  safeguard: float | None = None, init: str | None = None) -> torch.Tensor:
    """The unrolled objective: mean over k = first..iters of the action distance of PCM's output
    X^k[T] to X*[T] (Euclidean per action, averaged over samples and actions: the distance the tuning
    and the sweep report, in normalised units), X^k being PCM's iterates from x_T under ``schedule``
    (its ``anderson`` included), with gradients through every iteration: the adapted calls and, after
    the switch, the base calls (weights fixed) and the TAA mixing. It trains the jump for the output after k
    iterations rather than for one update at a time."""
    kw = schedule_kwargs(schedule)
    evaluate, lam_of = pcm_evaluator(policy.denoise, kw["schedule"], kw["space"])
    _, st = picard_loop(evaluate, batch["x_T"], batch["cond"], grid, window=None, tol=0.0, max_iters=iters,
                        init=init, safeguard=safeguard, may_slide=lambda k: lam_of(k) == 0.0,
                        anderson=kw["anderson"], return_iterates=True)
    target = batch["x_star"][:, -1]
    dist = [((st.iterates[k][-1] - target).pow(2).sum(-1) + 1e-12).sqrt().mean() for k in range(first, iters + 1)]
    return torch.stack(dist).mean()


def alpha_from_var(var_k: torch.Tensor, floor: float = 1e-12) -> torch.Tensor:
    """alpha_k = 1 / sqrt(Var_k): balances far (early) and near (late) iterates."""
    return var_k.clamp(min=floor).rsqrt()


def pct_loss(policy, batch: dict, grid, alpha: torch.Tensor) -> torch.Tensor:
    """L_PCT on a batch {"x_k": (n, T+1, H, A), "x_star": same, "cond": (n, C), "k": (n,)}."""
    X, target = batch["x_k"].transpose(0, 1), batch["x_star"].transpose(0, 1)
    err = (phi(policy, X, batch["cond"], grid)[1:] - target[1:]).pow(2).transpose(0, 1).flatten(1).mean(1)
    return (alpha.to(err)[batch["k"]] * err).mean()


class PCTBatches:
    """Batches of (n, k) for ``pct_loss``, k ~ U{0..K-1} (``k_max`` narrows it to U{0..k_max-1}), drawn
    with torch's global RNG (the loop saves and restores it, so a resumed run continues the same stream).

    On-policy (``regen_every`` > 0): every ``regen_every`` batches the iterates of ``regen_size``
    random training conditions are regenerated with the adapted model under ``schedule`` (PCM,
    model switching), replacing their base iterates in memory (the store on disk is not changed).
    """

    def __init__(self, data: dict, batch_size: int, *, policy=None, data_cfg: TrajDataConfig | None = None,
                 regen_every: int = 0, regen_size: int = 0, schedule: dict | None = None, k_max: int | None = None):
        train = data["split"] == 0
        self.cond, self.x_star = data["cond"][train], data["x_star"][train]
        self.its = data["iterates"][train]  # a copy (boolean indexing): regeneration never touches `data`
        self.x_T = data["x_T"][train]
        self.batch_size, self.K = batch_size, min(k_max or self.its.shape[1], self.its.shape[1])
        self.policy, self.data_cfg, self.regen_every, self.regen_size = policy, data_cfg, regen_every, regen_size
        self.schedule = schedule or {"k_on": 1, "k_off": 1, "space": "weight"}
        self.calls, self.regenerated = 0, torch.zeros(len(self.cond), dtype=torch.bool)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.regen_every and self.calls and self.calls % self.regen_every == 0:
            self.regenerate()
        self.calls += 1
        n = torch.randint(0, len(self.cond), (self.batch_size,))
        k = torch.randint(0, self.K, (self.batch_size,))
        return {"x_k": self.its[n, k], "x_star": self.x_star[n], "cond": self.cond[n], "k": k, "x_T": self.x_T[n]}

    @torch.no_grad()
    def regenerate(self) -> None:
        n = torch.randperm(len(self.cond))[: self.regen_size]
        was = self.policy.training
        self.policy.eval()
        s = self.schedule
        self.its[n] = iterates(self.policy.denoise, self.policy.noise_scheduler, self.x_T[n], self.cond[n],
                               self.data_cfg, schedule=linear_schedule(s["k_on"], s["k_off"]), space=s["space"])
        self.policy.train(was)
        self.regenerated[n] = True


def action_distance(out: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean over the H actions of the Euclidean distance, summed over the sample dim (the last
    one before (H, A)): (normalised units, pixels = normalised / the action normaliser's ``scale``)."""
    d = out - ref
    return d.norm(dim=-1).mean(-1).sum(-1), (d / scale).norm(dim=-1).mean(-1).sum(-1)


@torch.no_grad()
def pcm_distances(policy, cond, x_T, target, schedule: dict | None, k_max: int, *, num_steps: int = 50,
                  safeguard: float | None = None, init: str | None = None, batch: int = 100, **taa) -> dict:
    """Distance of PCM's output after k = 1..k_max iterations (tol 0) to ``target`` = X*[T], per k:
    ``norm`` (normalised units) and ``px`` (env pixels). ``schedule=None`` is plain Picard; a schedule's
    ``anderson`` (default 0) is the TAA memory of its base iterations; ``taa``: ``anderson_weight`` and
    ``anderson_mixing`` for them (default: the sampler's)."""
    s = schedule or {"k_on": 0, "k_off": 0, "space": "weight"}  # lambda = 0 throughout: base Picard
    scale = policy.normalizer["action"].scale
    norm, px = torch.zeros(k_max), torch.zeros(k_max)
    for i0 in range(0, len(cond), batch):
        sl = slice(i0, i0 + batch)
        _, st = sample_pcm(policy.denoise, x_T[sl], cond[sl], scheduler=policy.noise_scheduler, num_steps=num_steps,
                           solver="ddim", tol=0.0, max_iters=k_max, return_iterates=True,
                           **{**schedule_kwargs(s), "safeguard": safeguard, "init": init}, **taa)
        outs = torch.stack([st.iterates[min(k, len(st.iterates) - 1)][-1] for k in range(1, k_max + 1)])
        n, p = action_distance(outs, target[sl], scale)  # outs: (k, b, H, A)
        norm += n
        px += p
    return {"norm": (norm / len(cond)).tolist(), "px": (px / len(cond)).tolist()}


def choose_schedule(results: list[dict], threshold_px: float = 1.0, resolution_px: float = 0.01) -> dict:
    """The candidate that gets under ``threshold_px`` mean distance at the smallest k, ties broken by
    its distance there (to ``resolution_px``; then fewer adapted iterations, weight before feature
    space); if none does, the smallest distance at the last k. Adds ``k_1px`` to each."""
    for r in results:
        r["k_1px"] = next((k + 1 for k, d in enumerate(r["px"]) if d < threshold_px), None)

    def simpler(r):
        return r.get("k_off", 0), r.get("k_on", 0), r.get("space", "weight") != "weight", r.get("anderson", 0)

    reached = [r for r in results if r["k_1px"] is not None]
    if reached:
        return min(reached, key=lambda r: (r["k_1px"], round(r["px"][r["k_1px"] - 1] / resolution_px), *simpler(r)))
    return min(results, key=lambda r: (round(r["px"][-1] / resolution_px), *simpler(r)))


def candidates(hard: list[int], ramps: list[list[int]], spaces: list[str], andersons=(0,)) -> list[dict]:
    """Hard switches (weight space: feature space is identical at lambda in {0, 1}) and linear ramps,
    each with every TAA memory in ``andersons`` (0: plain Picard updates)."""
    out = [{"k_on": k, "k_off": k, "space": "weight"} for k in hard]
    out += [{"k_on": a, "k_off": b, "space": sp} for sp in spaces for a, b in ramps]
    return [{**c, "anderson": m} for m in andersons for c in out]


def tune_schedule(policy, cond, x_T, target, cands: list[dict], k_max: int, **kw) -> tuple[dict, dict]:
    """Distances of every candidate schedule (and plain Picard, for reference) on held-out conditions;
    returns (chosen schedule {"k_on", "k_off", "space", "anderson"}, metrics)."""
    results = []
    for c in cands:
        results.append({**c, **pcm_distances(policy, cond, x_T, target, c, k_max, **kw)})
    chosen = choose_schedule(results)
    picard = pcm_distances(policy, cond, x_T, target, None, k_max, **kw)
    picard["k_1px"] = next((k + 1 for k, d in enumerate(picard["px"]) if d < 1.0), None)
    schedule = {k: chosen.get(k, 0) for k in ("k_on", "k_off", "space", "anderson")}
    speedup = picard["k_1px"] / chosen["k_1px"] if picard["k_1px"] and chosen["k_1px"] else None
    return schedule, {"candidates": results, "picard": picard, "chosen": chosen, "conditions": len(cond),
                      "k_max": k_max, "speedup_vs_picard": speedup}


def make_val_fn(grid, alpha: torch.Tensor, data: dict, n_val: int = 64, k_max: int = 3, schedule: dict | None = None,
                safeguard: float | None = None, init: str | None = None):
    """Validation for the training loop: L_PCT on fixed held-out (n, k) pairs, and PCM's distance (px)
    after k = 1..k_max iterations with ``schedule`` (default: one adapted iteration)."""
    val = (data["split"] == 1).nonzero().flatten()[:n_val]
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, data["iterates"].shape[1], (len(val),), generator=g)
    batch = {"x_k": data["iterates"][val, k], "x_star": data["x_star"][val], "cond": data["cond"][val], "k": k}
    sched = schedule or {"k_on": 1, "k_off": 1, "space": "weight"}

    @torch.no_grad()
    def val_fn(model) -> dict:
        if not len(val):
            return {}
        rec = {"val_loss": pct_loss(model, batch, grid, alpha).item()}
        d = pcm_distances(model, data["cond"][val], data["x_T"][val], data["x_star"][val, -1], sched, k_max,
                          num_steps=len(grid), safeguard=safeguard, init=init)
        rec.update({f"val_px_k{i + 1}": v for i, v in enumerate(d["px"])})
        return rec

    return val_fn


def ddim_grid(policy, num_steps: int):
    """The DDIM grid of the policy's DDPM schedule that X* was made on."""
    return make_grid(policy.noise_scheduler, num_steps, solver="ddim", device=policy.device)
