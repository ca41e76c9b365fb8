"""Picard Consistency Training for any task: the one driver (``run_pct``), the shipped objective (the anytime PCM's
jump) and what every objective shares (L_PCT as the validation loss, PCM's distances vs k, the schedule rule).

Everything here takes a model function (``model_fn(x, t, cond, lora_scale=...)``, the sampler
protocol), a step grid, tensors, and a task's ``distance(out, ref) -> (B,)`` (PushT: mean action
distance in pixels; images: latent RMSE); nothing here knows a task.

Glossary (PCM paper, PCT objective and model switching; ``docs/method.md``):
  Phi_theta(X)  one full-window Picard update with the adapted model (LoRA scale 1):
                x_j <- x_0 + sum_{i<j} d_i(x_i), all T drifts in ONE batched call (``update``: the sampler
                core's ``paradigms_update``; ``pct.form`` names another in ``sampling.FORMS``, e.g. the paper's
                chain x_j <- F_{j-1}(x_{j-1}), supplement eq. 1, ``paper.chain_update``).
                Gradients flow through every drift; only the LoRA parameters require grad.
  L_PCT         alpha_k ||Phi_theta(X_n^k; cond_n) - X*_n||^2, (n, k) ~ U(train) x U{0..K-1}; the squared
                norm is a mean over positions 1..T and elements; alpha_k = 1 / sqrt(Var_k).
  lambda(k)     LoRA scale of PCM iteration k: a ``Switch(k_on, k_off, space)``.
  distance      mean over samples of the task's distance between PCM's output after k iterations
                (tol 0) and X*[T].
  jump          ``objective: jump`` (beyond the paper; ``sampling.Jump``): the adapter's x0 predicted at
                (x_T, t_0) in ONE call is trained onto X*[T], ||x0_theta(x_T) - X*[T]||^2 (a consistency-
                style one-step distillation of the DDIM-T map x_T -> X*[T]); extra seeded x_T per training
                condition (``add_draws``) give it more pairs than the store has. PCM then runs Picard + TAA
                on the base model and returns the jump's estimate for the first iterations (``tune_jump``).
  objective     ``pct.objective`` names an ``Objective`` (its batches, loss and schedule tuning) in ``OBJECTIVES``:
                the core's "jump"; the paper's one-update "picard" (L_PCT as the loss, switching schedules) is
                registered by ``pcm_policy.paper.pct`` on import, and nothing here imports it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from ..io import atomic_path
from ..sampling import (
    FORMS,
    Jump,
    SamplerSpec,
    Switch,
    ddim_step,
    index_cond,
    predicted_x0,
    repeat_cond,
    sample_pcm,
    sample_sequential,
)
from ..sampling.picard import Update, paradigms_update
from . import distributed as dist

__all__ = ["OBJECTIVES", "JumpBatches", "Objective", "add_draws", "alpha_from_var", "choose_schedule", "get_objective",
           "jump_draws_from_config", "jump_loss", "make_val_fn", "pcm_distances", "pct_loss", "phi", "run_config",
           "run_pct", "tune_jump"]

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (out, ref) -> (B,)


def phi(model_fn, X: torch.Tensor, cond, grid, lora_scale: float = 1.0,
        update: Update = paradigms_update) -> torch.Tensor:
    """Phi_theta: trajectory X (T+1, B, ...) -> one full-window Picard update (T+1, B, ...) by ``update``."""
    T, B = len(grid), X.shape[1]
    xs = X[:T]
    out = model_fn(xs.flatten(0, 1), grid.timesteps.repeat_interleave(B), repeat_cond(cond, T), lora_scale=lora_scale)
    jj, ss = torch.arange(T, device=X.device).repeat_interleave(B), torch.arange(B, device=X.device).repeat(T)
    fx = ddim_step(grid, xs.flatten(0, 1), out, jj)  # F_j(x_j), rows position-major
    return torch.cat([X[:1], update(X, jj.new_zeros(B), jj, ss, fx)])


def alpha_from_var(var_k: torch.Tensor, floor: float = 1e-12) -> torch.Tensor:
    """alpha_k = 1 / sqrt(max(Var_k, floor)): balances far (early) and near (late) iterates."""
    return var_k.clamp(min=floor).rsqrt()


def pct_loss(model_fn, batch: dict, grid, alpha: torch.Tensor, form: str = "paradigms") -> torch.Tensor:
    """L_PCT on a batch {"x_k": (n, T+1, ...), "x_star": same, "cond": (n, ...), "k": (n,)}; Phi by the update
    rule ``form`` names (``sampling.FORMS``)."""
    X, target = batch["x_k"].transpose(0, 1), batch["x_star"].transpose(0, 1)
    new = phi(model_fn, X, batch["cond"], grid, update=_update(form))
    err = (new[1:] - target[1:]).pow(2).transpose(0, 1).flatten(1).mean(1)
    return (alpha.to(err)[batch["k"]] * err).mean()


def _update(form: str) -> Update:
    if form not in FORMS:
        raise ValueError(f"pct.form must be one of {', '.join(sorted(FORMS))}, got {form!r}")
    return FORMS[form]


def jump_loss(model_fn, batch: dict, grid, position: int = 0) -> torch.Tensor:
    """||x0_theta(x_T) - X*[T]||^2 (mean over elements and samples): the x0 the adapted model (LoRA scale 1)
    predicts from x_T read at grid position ``position`` (``Jump.positions[0]``) in one call, unclipped so the
    gradient does not vanish where it is out of range. ``batch``: {"x_T": (B, ...), "cond": (B, ...) or a dict
    of them or None, "target": (B, ...) = X*[T]}."""
    x_T = batch["x_T"]
    idx = torch.full((len(x_T),), position, dtype=torch.long, device=x_T.device)
    out = model_fn(x_T, grid.timesteps[idx], batch["cond"], lora_scale=1.0)
    x0, _ = predicted_x0(dataclasses.replace(grid, clip=None), x_T, out, idx)
    return (x0 - batch["target"]).pow(2).flatten(1).mean(1).mean()


class JumpBatches:
    """Batches for ``jump_loss``: pairs drawn uniformly (torch's global RNG, so a resumed run continues the
    same stream) from ``data``'s training split (``split == 0``) and the extra draws ``extra`` (``add_draws``).
    Conditions are read by row from ``data["cond"]`` (a tensor, a dict of them, or None)."""

    def __init__(self, data: dict, batch_size: int, extra: dict | None = None):
        rows = (data["split"] == 0).nonzero().flatten()
        parts = [(rows, data["x_T"][rows], data["x_star"][rows, -1])]
        if extra is not None:
            parts.append((extra["rows"], extra["x_T"], extra["target"]))
        self.rows, self.x_T, self.target = (torch.cat(p) for p in zip(*parts, strict=True))
        self.cond, self.batch_size = data["cond"], batch_size

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        n = torch.randint(0, len(self.rows), (self.batch_size,))
        return {"x_T": self.x_T[n], "cond": index_cond(self.cond, self.rows[n]), "target": self.target[n]}


@torch.no_grad()
def add_draws(model_fn, grid, data: dict, draws: int, seed: int, path: str | Path | None = None,
              chunk: int = 2048) -> dict | None:
    """``draws`` more seeded x_T (standard normal, ``seed``) per training condition and their DDIM-T outputs
    X*[T] (base model, ``sample_sequential``): {"rows": (M,) rows of ``data["cond"]``, "x_T", "target"},
    cached at ``path`` (written atomically; reused when its ``seed`` and ``draws`` match). None when
    ``draws`` is 0."""
    if draws <= 0:
        return None
    path = Path(path) if path is not None else None
    dist.check_same(path is not None and path.is_file(), f"view of {path} (a folder every rank sees)")
    if path is not None and path.is_file():
        cached = torch.load(path)
        if cached.get("seed") == seed and cached.get("draws") == draws and "rows" in cached:
            print(f"jump draws: reusing {path} ({len(cached['rows'])} pairs made by an earlier run)", flush=True)
            return cached
    rows = (data["split"] == 0).nonzero().flatten().repeat(draws)
    x_T = torch.randn((len(rows), *data["x_T"].shape[1:]), generator=torch.Generator().manual_seed(seed))

    def targets(starts):  # the chunks of this rank (several processes: contiguous shares, gathered in order)
        return [sample_sequential(model_fn, x_T[i:i + chunk], index_cond(data["cond"], rows[i:i + chunk]),
                                  grid=grid)[0]
                for i in tqdm(starts, desc=f"DDIM-{len(grid)} targets, {len(rows)} draws", disable=not dist.is_main())]

    target = torch.cat(dist.shard_and_gather(targets, range(0, len(rows), chunk)))
    out = {"rows": rows, "x_T": x_T.to(target.dtype), "target": target, "seed": seed, "draws": draws}
    if path is not None:
        def write():
            with atomic_path(path) as tmp:
                torch.save(out, tmp)

        dist.all_ok(lambda: write() if dist.is_main() else None, f"writing {path}")
    return out


@torch.no_grad()
def tune_jump(model_fn, grid, cond, x_T, target, base: SamplerSpec, positions: list[int], k_max: int,
              distance: Distance, lambdas: tuple[float, ...] = (1.0, 0.0),
              threshold: float = 1.0) -> tuple[SamplerSpec, dict]:
    """The anytime PCM's ``Jump`` on held-out conditions, greedily: the jump (lambda ``lambdas[0]``, at the
    position of ``base.jump`` if it has one, else 0) is kept while it beats ``base`` without a jump (Picard,
    + TAA if ``base`` has it, on the base model) at k = 1; each further step (lambda ``lambdas[1]``, the base
    model by default) goes to the candidate position of ``positions`` (and the grid's last, T - 1) that is
    closest at its k, or the last estimate is held one more iteration (``Jump.hold``, no new call; after
    that only holds), each kept only while it beats ``base`` there. Returns (spec with the jump or
    without, metrics: distances per k of ``base`` and of the chosen spec, the first k under ``threshold`` of
    each (``k_match``), per-step candidate distances)."""
    def lams(n: int) -> tuple[float, ...]:
        return tuple(lambdas[min(i, len(lambdas) - 1)] for i in range(n))

    first = base.jump.positions[0] if base.jump is not None else 0
    base = base.replace(jump=None)

    base_d = pcm_distances(model_fn, grid, cond, x_T, target, base, k_max, distance)
    chosen, hold, steps = (), 0, []  # the positions kept so far, and the iterations their last estimate is held
    for k in range(1, k_max + 1):
        cands = {} if hold else {pos: Jump(pos, lams(len(pos))) for pos in (
            [(first,)] if k == 1 else [chosen + (p,) for p in sorted({*positions, len(grid) - 1})
                                       if chosen[-1] < p < len(grid)])}
        if chosen:  # or keep the last estimate one more iteration (no new call)
            cands["hold"] = Jump(chosen, lams(len(chosen)), hold + 1)
        if not cands:
            break
        scores = {c: pcm_distances(model_fn, grid, cond, x_T, target, base.replace(jump=j), k, distance)[k - 1]
                  for c, j in cands.items()}
        steps.append({"k": k, "candidates": {c if c == "hold" else str(list(c)): v for c, v in scores.items()},
                      "picard": base_d[k - 1]})
        best = min(scores, key=scores.get)
        if scores[best] >= base_d[k - 1]:
            break
        if best == "hold":
            hold += 1
        else:
            chosen = best
    spec = base.replace(jump=Jump(chosen, lams(len(chosen)), hold) if chosen else None)
    d = pcm_distances(model_fn, grid, cond, x_T, target, spec, k_max, distance)
    return spec, {"picard_taa": base_d, "picard": {"k_match": _first_below(base_d, threshold)},
                  "chosen": {"spec": spec.to_dict(), "distance": d, "k_match": _first_below(d, threshold)},
                  "steps": steps, "conditions": len(x_T), "k_max": k_max, "threshold": threshold}


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
                           taa=spec.taa, window=spec.window, jump=spec.jump, update=FORMS[spec.form])
        for k in range(1, k_max + 1):  # outputs: X^k[T], or the jump's estimate while it is the output
            total[k - 1] += distance(st.outputs[min(k, len(st.outputs) - 1)], target[sl]).double().sum()
    return (total / len(x_T)).tolist()


def _first_below(distances: list[float], threshold: float) -> int | None:
    """The first k (1-based) whose distance is under ``threshold``; None if none is."""
    return next((k + 1 for k, d in enumerate(distances) if d < threshold), None)


def choose_schedule(results: list[dict], threshold: float = 1.0, resolution: float = 0.01) -> dict:
    """The candidate (``{"spec": SamplerSpec, "distance": [...]}``) that gets under ``threshold`` mean
    distance at the smallest k, ties broken by its distance there (to ``resolution``; then fewer adapted
    iterations, weight before feature space, no TAA before TAA); if none does, the smallest distance at
    the last k. Adds ``k_match`` to each."""
    for r in results:
        r["k_match"] = _first_below(r["distance"], threshold)

    def simpler(r):
        s = r["spec"]
        return s.switch.k_off, s.switch.k_on, s.switch.space != "weight", s.taa.memory if s.taa else 0

    reached = [r for r in results if r["k_match"] is not None]
    if reached:
        return min(reached, key=lambda r: (r["k_match"], round(r["distance"][r["k_match"] - 1] / resolution),
                                           *simpler(r)))
    return min(results, key=lambda r: (round(r["distance"][-1] / resolution), *simpler(r)))


def make_val_fn(model_fn, grid, alpha: torch.Tensor, data: dict, distance: Distance, spec: SamplerSpec,
                n_val: int = 64, k_max: int = 3, form: str = "paradigms"):
    """Validation for the training loop: L_PCT on fixed held-out (n, k) pairs (where the store keeps the
    iterates) and the distance after k = 1..k_max iterations of ``spec`` (keys ``val_loss``,
    ``val_distance_k1``...). ``model_fn`` sees the loop's module with its EMA weights in place."""
    val = (data["split"] == 1).nonzero().flatten()[:n_val]
    cond = index_cond(data["cond"], val)
    batch = None
    if data.get("iterates") is not None:
        k = torch.randint(0, data["iterates"].shape[1], (len(val),), generator=torch.Generator().manual_seed(0))
        batch = {"x_k": data["iterates"][val, k], "x_star": data["x_star"][val], "cond": cond, "k": k}

    @torch.no_grad()
    def val_fn(_module) -> dict:
        if not len(val):
            return {}
        rec = {"val_loss": pct_loss(model_fn, batch, grid, alpha, form).item()} if batch is not None else {}
        d = pcm_distances(model_fn, grid, cond, data["x_T"][val], data["x_star"][val, -1], spec, k_max, distance)
        rec.update({f"val_distance_k{i + 1}": v for i, v in enumerate(d)})
        return rec

    return val_fn


# ------------------------------------------------------------------------ the objectives, by name
@dataclasses.dataclass(frozen=True)
class Objective:
    """What ``run_pct`` needs of a PCT objective (``pct.objective``, a name in ``OBJECTIVES``); every callable
    takes the ``pct`` config ``pc`` first.

    batches(pc, data, data_cfg, model_fn, grid, run_dir) -> the training batch stream (an iterator of dicts);
        called before the adapter is added, so whatever it computes comes from the base model.
    build(pc, model_fn, grid, alpha, settings, distance) -> (the PCM spec validated during training, with
        ``settings``; loss(batch) -> scalar tensor).
    tune(pc, spec, model_fn, grid, cond, x_T, target, settings, distance) -> (the chosen spec, metrics with at
        least ``chosen`` and ``picard``, each with ``k_match``, and ``chosen.distance``): the schedule tuning
        after training on held-out ``cond``, ``x_T`` and ``target`` = X*[T]."""

    batches: Callable
    build: Callable
    tune: Callable


def _jump_batches(pc: dict, data: dict, data_cfg, model_fn, grid, run_dir) -> JumpBatches:
    # more (condition, x_T) pairs for the one-step jump, from the base model first
    draws = jump_draws_from_config(pc, model_fn, grid, data, Path(run_dir).parent, chunk=data_cfg.draw_chunk)
    return JumpBatches(data, int(pc["batch_size"]), draws)


def _jump_build(pc: dict, model_fn, grid, alpha, settings: dict, distance: Distance):
    # its spec keeps its own first iterate (the store's only shapes the val loss)
    spec = SamplerSpec.from_dict(pc["jump"]["schedule"]).replace(**{k: v for k, v in settings.items() if k != "init"})
    first = spec.jump.positions[0] if spec.jump is not None else 0
    return spec, lambda b: jump_loss(model_fn, b, grid, first)


def _jump_tune(pc: dict, spec: SamplerSpec, model_fn, grid, cond, x_T, target, settings: dict, distance: Distance):
    # the anytime PCM: the jump's estimates first while they are closer than Picard
    tune = pc["tune"]
    return tune_jump(model_fn, grid, cond, x_T, target, spec, list(tune["jump_positions"]), int(tune["k_max"]),
                     distance, threshold=float(tune.get("threshold", 1.0)))


# PCT objectives by name (``pct.objective``): the core's "jump" (``jump_loss``, spec from ``pct.jump.schedule``, its
# Jump chosen after training by ``tune_jump``: the shipped anytime PCM). ``pcm_policy.paper.pct`` adds the paper's
# one-update objective "picard" on import (``scripts/train_pct.py`` imports it when a config names it).
OBJECTIVES: dict[str, Objective] = {"jump": Objective(batches=_jump_batches, build=_jump_build, tune=_jump_tune)}


def get_objective(name: str) -> Objective:
    """``OBJECTIVES[name]``. Raises ValueError for a name not registered (the paper's "picard" is registered by
    importing ``pcm_policy.paper.pct``)."""
    if name not in OBJECTIVES:
        raise ValueError(f"pct.objective must be one of {', '.join(sorted(OBJECTIVES))} (the paper's one-update "
                         f"objective picard is registered by importing pcm_policy.paper.pct), got {name!r}")
    return OBJECTIVES[name]


def run_config(cfg: dict) -> dict:
    """What defines a PCT run, for the training loop's resume check: the config without threads, output
    paths, ``force`` and ``pct.tune`` (tuning runs after training and may change on a rerun)."""
    out = {k: v for k, v in cfg.items() if k not in ("threads", "force", "out", "run_dir", "work_dir")}
    out["pct"] = {k: v for k, v in cfg["pct"].items() if k != "tune"}
    return out


def jump_draws_from_config(pc: dict, model_fn, grid, data: dict, folder: str | Path, chunk: int = 2048) -> dict:
    """``add_draws`` for a ``pct`` config's ``jump`` (draws, seed), cached in ``folder`` as
    ``jump_draws_{draws}_{seed}.pt`` (a task's PCT runs share it)."""
    draws, seed = int(pc["jump"]["draws"]), int(pc["jump"]["seed"])
    return add_draws(model_fn, grid, data, draws, seed, Path(folder) / f"jump_draws_{draws}_{seed}.pt", chunk=chunk)


# ------------------------------------------------------------------------ the one PCT driver
def run_pct(task, pc: dict, data_cfg, *, out: str | Path, run_dir: str | Path, data_path: str | Path,
            command: str = "", config: dict | None = None, extra: dict | None = None,
            force: bool = False, retune: str | Path | None = None) -> dict | None:
    """One PCT run of ``task`` (a ``pcm_policy.task.Task``): the trajectory store (``pct_data.make`` at
    ``data_path``, resumable), training with the one loop (``run_dir``: state.pt, log.jsonl, the EMA adapter
    in ``adapter/``; a rerun resumes), schedule tuning on the held-out split, and the adapter folder at
    ``out`` (adapter.safetensors + adapter.json: the chosen spec, ``metrics``, ``command``, ``config``,
    ``extra``) with ``train_log.json``. Nothing is written into files git tracks unless ``force``.

    ``retune``: a LoRA adapter folder of this task to re-tune instead of training one: the store is made (stage
    1), the folder's LoRA is loaded onto ``task.module`` in place of stage 2, and its schedule is tuned afresh
    with this config's ``pct.jump.schedule`` and ``pct.tune`` (e.g. Picard + TAA rows beside the jump); ``out``
    (another folder) gets the same tensors, the new spec and metrics, ``retuned_from`` and the source's
    ``train_log.json``. ValueError for ``out`` = the folder, ``finetune: full``, or a folder that is not an
    adapter of this model.

    ``pc``: a ``pct`` config (``configs/pct/*.yaml`` as a plain dict: objective, lora or finetune, batch_size,
    k_max, alpha_floor, training, val, tune, jump); ``data_cfg``: a ``pct_data.PCTData``; ``config``: what
    defines the run for the loop's resume check (``run_config``) and what adapter.json records.
    Returns the metrics written to ``adapter.json``. Raises ValueError for bad settings or a task that cannot
    do what the config asks (``finetune: full`` without ``task.full_copy``), PCTDataError, ResumeError.

    Several processes (``torchrun``, ``distributed.init_from_env`` called first): the store's chunks and the jump's
    extra draws are shared out and gathered, training is data-parallel (``pct.batch_size`` is the whole batch;
    ValueError before any work when the process count does not divide it), and rank 0 alone tunes the schedule
    and writes; the other ranks return None after training. ``distributed.DistributedError`` when the ranks'
    configs differ or one of them fails."""
    import json
    import time

    from ..adapters import load_adapter_folder, save_adapter_folder
    from ..io import check_not_shipped, recorded_path, write_json
    from ..lora import add_lora, lora_parameters
    from . import LoopConfig, hold_run_folder, train
    from . import pct_data as D

    t_all = time.perf_counter()
    out, run_dir, config = Path(out), Path(run_dir), config if config is not None else {"pct": pc}
    for name, path in (("out", out), ("run_dir", run_dir), ("data_path", data_path)):
        check_not_shipped(path, force, "force=true", name)
    dist.check_divisible(pc["batch_size"], "pct.batch_size")
    obj = get_objective(pc["objective"])  # before any work
    finetune = pc.get("finetune", "lora")
    if finetune not in ("lora", "full") or finetune == "full" and task.full_copy is None:
        raise ValueError(f"pct.finetune must be lora{' or full' if task.full_copy else ''} for task {task.name}, "
                         f"got {finetune!r}")
    if retune is not None:
        retune = Path(retune)
        if finetune != "lora":
            raise ValueError("retune re-tunes a LoRA adapter folder; pct.finetune must be lora")
        if not (retune / "adapter.json").is_file():
            raise ValueError(f"retune={retune} is not an adapter folder (no adapter.json); name a folder written by "
                             "train_pct.py")
        if out.resolve() == retune.resolve():
            raise ValueError(f"out must be another folder than retune={retune}: a re-tuned adapter is written anew")

    with hold_run_folder(run_dir):  # a second job in this run folder is refused here, before any set-up work
        # 1. trajectories
        t0 = time.perf_counter()
        D.make(task, data_cfg, data_path)
        data, data_s = D.load(data_path), time.perf_counter() - t0
        n_val, tm = int((data["split"] == 1).sum()), data["timing"]
        print_ = print if dist.is_main() else (lambda *a, **k: None)
        print_(f"trajectories: {data_path} ({len(data['x_T'])} conditions, {n_val} held out, iterates "
              f"{'stored' if data['iterates'] is not None else 'made per batch'}); "
              f"{tm['chunks_s'] / max(1, tm['conditions']):.3f} s/condition + {tm['conditions_s']:.0f} s for "
              "conditions")

        # 2. PCT
        grid, fn = task.grid(data_cfg.num_steps), task.model_fn
        source = load_adapter_folder(task.module, retune)[1] if retune is not None else None  # stage 2: its adapter
        if source is None:
            batches = obj.batches(pc, data, data_cfg, fn, grid, run_dir)  # before the adapter: from the base model
            if finetune == "full":  # the paper's feature-space PCM: a separately fine-tuned full copy of the network
                module = task.full_copy()
                params = list(module.parameters())
            else:
                lo, module = pc["lora"], task.module
                torch.manual_seed(int(pc["training"]["seed"]))  # lora_A's initialisation: the same config, same run
                add_lora(module, rank=int(lo["rank"]), alpha=float(lo.get("alpha") or lo["rank"]),
                         target_modules=[*(lo.get("targets") or task.lora_targets), *(lo.get("extra_targets") or [])])
                params = lora_parameters(module)
        alpha = alpha_from_var(data["var_k"], float(pc["alpha_floor"]))
        settings = dict(num_steps=data_cfg.num_steps, safeguard=pc["tune"].get("safeguard"), init=data_cfg.init,
                        form=pc.get("form", "paradigms"))  # the sampler uses the form PCT trained with
        spec, loss_fn = obj.build(pc, fn, grid, alpha, settings, task.distance)
        save = task.save_adapter or (lambda folder, s, extra: save_adapter_folder(task.module, folder, s, extra))
        loop = LoopConfig(**pc["training"])
        t0 = time.perf_counter()
        if source is None:
            val_fn = make_val_fn(fn, grid, alpha, data, task.distance, spec, int(pc["val"]["n"]),
                                 int(pc["val"]["k_max"]), pc.get("form", "paradigms"))

            def save_fn(_module, step):  # the EMA adapter, with a provisional sampler spec until tuning
                save(run_dir / "adapter", spec, {"step": abs(step), "tuned": False, "command": command,
                                                 "config": config})

            train(module, loss_fn, batches, loop, run_dir, save_fn, val_fn, params=params, desc=f"PCT {task.name}",
                  config=run_config(config))
        train_s = time.perf_counter() - t0
        if not dist.is_main():  # rank 0 tunes and writes the adapter
            return None

        # 3. schedule tuning on the held-out split (the EMA weights are in place)
        t0 = time.perf_counter()
        held = (data["split"] == 1).nonzero().flatten()[: pc["tune"].get("n")]
        held_out = (fn, grid, index_cond(data["cond"], held), data["x_T"][held], data["x_star"][held, -1])
        chosen, metrics = obj.tune(pc, spec, *held_out, settings, task.distance)
        if source is not None:  # the source's own training log and how it was made
            src_log = retune / "train_log.json"
            rows = json.loads(src_log.read_text()) if src_log.is_file() else []
            extra = {**(extra or {}), "retuned_from": {"folder": str(retune), "command": source.get("command"),
                                                      "steps": source.get("steps"), "sampler": source.get("sampler")}}
        else:
            log = run_dir / "log.jsonl"
            rows = [json.loads(r) for r in log.read_text().splitlines() if r.strip()] if log.exists() else []
        steps = [r["s_per_step"] for r in rows if "s_per_step" in r]
        metrics.update(distance=task.unit, alpha=alpha.tolist(),
                       timing={"trajectories": tm, "data_s_this_call": data_s, "train_s_this_call": train_s,
                               "s_per_step": sum(steps) / len(steps) if steps else None,
                               "tune_s": time.perf_counter() - t0, "total_s_this_call": time.perf_counter() - t_all,
                               "threads": torch.get_num_threads(), "processes": dist.world_size()},
                       data={"path": recorded_path(data_path), "n": len(data["x_T"]), "held_out": n_val,
                             "var_k": data["var_k"].tolist(), "task": task.key})
        save(out, chosen, {"metrics": metrics, "command": command, "config": config, **(extra or {}),
                           "steps": source.get("steps") if source is not None else loop.steps, "tuned": True})
        write_json(out / "train_log.json", rows)
        c, ref = metrics["chosen"], metrics["picard"]
        print(f"chosen {chosen.switch} taa={chosen.taa} jump={chosen.jump}: {c['distance'][0]:.3g} {task.unit} at k=1, "
              f"under the threshold at k={c['k_match']} (Picard: k={ref['k_match']}); adapter at {out}")
        return metrics
