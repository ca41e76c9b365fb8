"""Picard Consistency Training: the losses, their batches and the schedule tuning, for any task.

Everything here takes a model function (``model_fn(x, t, cond, lora_scale=...)``, the sampler
protocol), a step grid, tensors, and a task's ``distance(out, ref) -> (B,)`` (PushT: mean action
distance in pixels; images: latent RMSE); nothing here knows a task.

Glossary (PCM paper, PCT objective and model switching; ``docs/method.md``):
  Phi_theta(X)  one full-window Picard update with the adapted model (LoRA scale 1):
                x_j <- x_0 + sum_{i<j} d_i(x_i), all T drifts in ONE batched call (``picard_update``
                of the sampler core; ``form="chain"``: x_j <- F_{j-1}(x_{j-1}), supplement eq. 1).
                Gradients flow through every drift; only the LoRA parameters require grad.
  L_PCT         alpha_k ||Phi_theta(X_n^k; cond_n) - X*_n||^2, (n, k) ~ U(train) x U{0..K-1}; the squared
                norm is a mean over positions 1..T and elements; alpha_k = 1 / sqrt(Var_k).
  lambda(k)     LoRA scale of PCM iteration k: a ``Switch(k_on, k_off, space)``.
  distance      mean over samples of the task's distance between PCM's output after k iterations
                (tol 0) and X*[T].
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..sampling import (
    TAA,
    SamplerSpec,
    Switch,
    index_cond,
    pcm_evaluator,
    picard_loop,
    picard_update,
    repeat_cond,
    sample_pcm,
)

__all__ = ["PCTBatches", "alpha_from_var", "candidates", "choose_schedule", "make_val_fn", "objective",
           "pcm_distances", "pct_loss", "phi", "run_config", "tune_from_config", "tune_schedule", "unrolled_loss"]

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (out, ref) -> (B,)


def phi(model_fn, X: torch.Tensor, cond, grid, lora_scale: float = 1.0, form: str = "paradigms") -> torch.Tensor:
    """Phi_theta: trajectory X (T+1, B, ...) -> one full-window Picard update (T+1, B, ...)."""
    T, B = len(grid), X.shape[1]
    xs = X[:T]
    out = model_fn(xs.flatten(0, 1), grid.timesteps.repeat_interleave(B), repeat_cond(cond, T), lora_scale=lora_scale)
    return torch.cat([X[:1], picard_update(grid, xs, out, 0, X[0], form=form)])


def unrolled_loss(model_fn, batch: dict, grid, spec: SamplerSpec, iters: int, first: int,
                  distance: Distance) -> torch.Tensor:
    """The unrolled objective: mean over k = first..iters of ``distance`` (differentiable, (B,)) between
    PCM's output X^k[T] under ``spec`` (its switch, TAA, safeguard and init) and X*[T], with gradients
    through every iteration: the adapted calls and, after the switch, the base calls (weights fixed)
    and the TAA mixing. It trains the jump for the output after k iterations, not one update at a time."""
    evaluate, lam_of = pcm_evaluator(model_fn, spec.switch, spec.switch.space)
    _, st = picard_loop(evaluate, batch["x_T"], batch["cond"], grid, window=None, tol=0.0, max_iters=iters,
                        init=spec.init, safeguard=spec.safeguard, may_slide=lambda k: lam_of(k) == 0.0,
                        taa=spec.taa, return_iterates=True)
    target = batch["x_star"][:, -1]
    return torch.stack([distance(st.iterates[k][-1], target).mean() for k in range(first, iters + 1)]).mean()


def alpha_from_var(var_k: torch.Tensor, floor: float = 1e-12) -> torch.Tensor:
    """alpha_k = 1 / sqrt(max(Var_k, floor)): balances far (early) and near (late) iterates."""
    return var_k.clamp(min=floor).rsqrt()


def pct_loss(model_fn, batch: dict, grid, alpha: torch.Tensor, form: str = "paradigms") -> torch.Tensor:
    """L_PCT on a batch {"x_k": (n, T+1, ...), "x_star": same, "cond": (n, ...), "k": (n,)}."""
    X, target = batch["x_k"].transpose(0, 1), batch["x_star"].transpose(0, 1)
    err = (phi(model_fn, X, batch["cond"], grid, form=form)[1:] - target[1:]).pow(2).transpose(0, 1).flatten(1).mean(1)
    return (alpha.to(err)[batch["k"]] * err).mean()


class PCTBatches:
    """Batches of (n, k) for ``pct_loss``: n over the training split (``data["split"] == 0``), k ~ U{0..K-1}
    (``k_max`` narrows it to U{0..k_max-1}), drawn with torch's global RNG (the loop saves and restores
    it, so a resumed run continues the same stream). ``data``: ``cond``, ``x_T``, ``x_star`` (N, T+1, ...),
    ``iterates`` (N, K, T+1, ...), ``split`` (N,)."""

    def __init__(self, data: dict, batch_size: int, *, k_max: int | None = None):
        train = data["split"] == 0
        self.cond, self.x_star, self.its, self.x_T = (data[k][train] for k in ("cond", "x_star", "iterates", "x_T"))
        self.batch_size, self.K = batch_size, min(k_max or self.its.shape[1], self.its.shape[1])

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        n = torch.randint(0, len(self.cond), (self.batch_size,))
        k = torch.randint(0, self.K, (self.batch_size,))
        return {"x_k": self.its[n, k], "x_star": self.x_star[n], "cond": self.cond[n], "k": k, "x_T": self.x_T[n]}


@torch.no_grad()
def pcm_distances(model_fn, grid, cond, x_T, target, spec: SamplerSpec | None, k_max: int, distance: Distance,
                  *, batch: int = 100) -> list[float]:
    """Mean ``distance`` of PCM's output after k = 1..k_max iterations (tol 0) to ``target`` = X*[T], per k.
    ``spec=None`` is plain Picard (lambda = 0 throughout)."""
    spec = spec or SamplerSpec.named("pcm", switch=Switch(0, 0))
    total = torch.zeros(k_max, dtype=torch.float64)
    for i0 in range(0, len(x_T), batch):
        sl = slice(i0, i0 + batch)
        _, st = sample_pcm(model_fn, x_T[sl], index_cond(cond, sl), grid=grid, schedule=spec.switch, tol=0.0,
                           max_iters=k_max, return_iterates=True, safeguard=spec.safeguard, init=spec.init,
                           taa=spec.taa, window=spec.window)
        for k in range(1, k_max + 1):
            total[k - 1] += distance(st.iterates[min(k, len(st.iterates) - 1)][-1], target[sl]).double().sum()
    return (total / len(x_T)).tolist()


def choose_schedule(results: list[dict], threshold: float = 1.0, resolution: float = 0.01) -> dict:
    """The candidate (``{"spec": SamplerSpec, "distance": [...]}``) that gets under ``threshold`` mean
    distance at the smallest k, ties broken by its distance there (to ``resolution``; then fewer adapted
    iterations, weight before feature space, no TAA before TAA); if none does, the smallest distance at
    the last k. Adds ``k_match`` to each."""
    for r in results:
        r["k_match"] = next((k + 1 for k, d in enumerate(r["distance"]) if d < threshold), None)

    def simpler(r):
        s = r["spec"]
        return s.switch.k_off, s.switch.k_on, s.switch.space != "weight", s.taa.memory if s.taa else 0

    reached = [r for r in results if r["k_match"] is not None]
    if reached:
        return min(reached, key=lambda r: (r["k_match"], round(r["distance"][r["k_match"] - 1] / resolution),
                                           *simpler(r)))
    return min(results, key=lambda r: (round(r["distance"][-1] / resolution), *simpler(r)))


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
    picard["k_match"] = next((k + 1 for k, d in enumerate(picard["distance"]) if d < threshold), None)
    speedup = picard["k_match"] / chosen["k_match"] if picard["k_match"] and chosen["k_match"] else None
    rows = [{**r, "spec": r["spec"].to_dict()} for r in results]
    return chosen["spec"], {"candidates": rows, "picard": picard,
                            "chosen": {**chosen, "spec": chosen["spec"].to_dict()}, "conditions": len(x_T),
                            "k_max": k_max, "threshold": threshold, "speedup_vs_picard": speedup}


def make_val_fn(model_fn_of: Callable, grid, alpha: torch.Tensor, data: dict, distance: Distance, spec: SamplerSpec,
                n_val: int = 64, k_max: int = 3, form: str = "paradigms"):
    """Validation for the training loop: L_PCT on fixed held-out (n, k) pairs, and the distance after
    k = 1..k_max iterations of ``spec`` (keys ``val_loss``, ``val_distance_k1``...). ``model_fn_of(module)``
    gives the model function of the module the loop passes (its EMA weights applied)."""
    val = (data["split"] == 1).nonzero().flatten()[:n_val]
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, data["iterates"].shape[1], (len(val),), generator=g)
    batch = {"x_k": data["iterates"][val, k], "x_star": data["x_star"][val], "cond": data["cond"][val], "k": k}

    @torch.no_grad()
    def val_fn(module) -> dict:
        if not len(val):
            return {}
        fn = model_fn_of(module)
        rec = {"val_loss": pct_loss(fn, batch, grid, alpha, form).item()}
        d = pcm_distances(fn, grid, data["cond"][val], data["x_T"][val], data["x_star"][val, -1], spec, k_max, distance)
        rec.update({f"val_distance_k{i + 1}": v for i, v in enumerate(d)})
        return rec

    return val_fn


# ------------------------------------------------------------------------ from a task's pct config
def objective(pc: dict, model_fn, grid, alpha: torch.Tensor, settings: dict,
              distance: Distance) -> tuple[SamplerSpec, Callable]:
    """The PCM spec validated during training and the loss of a ``pct`` config (``configs/pct/*.yaml``):
    ``objective: picard`` (``pct_loss``, form ``pct.form``; spec from ``pct.val.schedule``) or
    ``unrolled`` (``unrolled_loss`` through ``pct.unroll.first..iters`` iterations of ``pct.unroll.schedule``).
    ``settings`` (num_steps, safeguard, init) go into the spec. Raises ValueError for another objective."""
    if pc["objective"] == "unrolled":
        ur = pc["unroll"]
        spec = SamplerSpec.from_dict(ur["schedule"]).replace(**settings)
        iters, first = int(ur["iters"]), int(ur["first"])
        return spec, lambda b: unrolled_loss(model_fn, b, grid, spec, iters, first, distance)
    if pc["objective"] == "picard":
        form = pc.get("form", "paradigms")
        spec = SamplerSpec.from_dict(pc["val"]["schedule"]).replace(**settings)
        return spec, lambda b: pct_loss(model_fn, b, grid, alpha, form)
    raise ValueError(f"pct.objective must be picard or unrolled, got {pc['objective']!r}")


def run_config(cfg: dict) -> dict:
    """What defines a PCT run, for the training loop's resume check: the config without threads, output
    paths, ``force`` and ``pct.tune`` (tuning runs after training and may change on a rerun)."""
    out = {k: v for k, v in cfg.items() if k not in ("threads", "force", "out", "run_dir", "work_dir")}
    out["pct"] = {k: v for k, v in cfg["pct"].items() if k != "tune"}
    return out


def tune_from_config(model_fn, grid, cond, x_T, target, tune: dict, settings: dict,
                     distance: Distance) -> tuple[SamplerSpec, dict]:
    """``tune_schedule`` over the candidates of a ``pct.tune`` config (hard, ramps, spaces, anderson, k_max,
    threshold: default 1.0) on held-out ``cond``, ``x_T`` and ``target`` = X*[T]; ``settings`` go into
    every candidate."""
    cands = candidates(list(tune["hard"]), [list(r) for r in tune["ramps"]], list(tune["spaces"]),
                       list(tune.get("anderson", [0])), **settings)
    return tune_schedule(model_fn, grid, cond, x_T, target, cands, int(tune["k_max"]), distance,
                         threshold=float(tune.get("threshold", 1.0)))
