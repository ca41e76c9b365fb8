"""Consistency distillation (CD) of a task's base model into a one-step student: a peer of PCM's first call.

Consistency Models (Song, Dhariwal, Chen, Sutskever, ICML 2023), Algorithm 2 (CD), on the base model's own
T-step DDIM grid (``Task.grid``, positions 0..T-1 at timesteps t_0 > ... > t_{T-1}; position T is the output):

  x ~ data, n ~ U{0..T-1}, z ~ N(0, I)
  x_n     = sqrt(abar_n) x + sqrt(1 - abar_n) z                       (the forward process at t_n)
  x_{n+1} = F_n(x_n)                                                   (the teacher ODE solver: one DDIM step of
                                                                        the BASE model, LoRA scale 0, x0 clipped)
  target  = x_{n+1} if n + 1 = T, else f_target(x_{n+1}, n + 1)       (the boundary: f(x, T) = x)
  L       = || f_theta(x_n, n) - stopgrad(target) ||^2                 (mean over elements; lambda(t_n) = 1)
  theta_target <- mu theta_target + (1 - mu) theta                     (the EMA target network, after each step)

f is ``sampling.consistency.consistency_fn`` (the DDIM jump from t_n to the grid's end, c_skip x + c_out eps,
through the adapted model's eps/x0 prediction); f_theta is computed unclipped (so the gradient does not vanish
out of range), the target clipped as the sampler clips. Only LoRA adapters train (the shipped PCM adapter's
targets and rank), so the student's capacity is PCM's. The evaluated weights are the training loop's own EMA
(``LoopConfig.ema_*``); the target network's EMA rate ``mu`` is a separate setting (``cd.mu``).

Data ``{"cond": rows, "x0": (N, ...)}``: the task's clean samples with their conditions (PushT: the
demonstration windows the base policy was trained on, ``pusht.dataset``), or, for a task without them,
``teacher_data``: DDIM-T samples of the base model on the task's "train" conditions.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..io import atomic_path, write_json
from ..sampling import SamplerSpec, ddim_step, index_cond, sample_sequential
from ..sampling.consistency import consistency_fn, sample_consistency

__all__ = ["CDBatches", "TargetNetwork", "cd_loss", "cd_distances", "run_consistency", "teacher_data"]


class TargetNetwork:
    """The EMA target network theta_target of ``params`` (the LoRA tensors): ``update(mu)``, and ``applied()``, a
    context in which ``params`` hold the target values (swapped in place, swapped back on exit)."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params
        self.values = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, mu: float) -> None:
        for t, p in zip(self.values, self.params, strict=True):
            t.mul_(mu).add_(p.detach(), alpha=1 - mu)

    def applied(self):
        import contextlib

        @contextlib.contextmanager
        def swap():
            with torch.no_grad():
                keep = [p.detach().clone() for p in self.params]
                for p, t in zip(self.params, self.values, strict=True):
                    p.copy_(t)
            try:
                yield
            finally:
                with torch.no_grad():
                    for p, k in zip(self.params, keep, strict=True):
                        p.copy_(k)

        return swap()

    def state_dict(self) -> list[torch.Tensor]:
        return [t.clone() for t in self.values]

    def load_state_dict(self, values: list[torch.Tensor]) -> None:
        if len(values) != len(self.values) or any(a.shape != b.shape
                                                  for a, b in zip(values, self.values, strict=False)):
            raise ValueError("the saved target network does not match this adapter's parameters")
        self.values = [v.clone() for v in values]


def cd_loss(model_fn, batch: dict, grid, target: TargetNetwork) -> torch.Tensor:
    """The CD loss (module doc) on ``batch`` {"x0": (B, ...) clean samples, "cond": their rows, "n": (B,) grid
    positions in 0..T-1, "z": (B, ...) standard normal}. ``model_fn`` honours ``lora_scale`` (0: the base)."""
    x0, n, z, cond = batch["x0"], batch["n"], batch["z"], batch["cond"]
    grid, T = grid.like(x0), len(grid)
    a = grid.alpha[n].view(-1, *([1] * (x0.ndim - 1)))
    x_n = a**0.5 * x0 + (1 - a) ** 0.5 * z
    with torch.no_grad():
        x_next = ddim_step(grid, x_n, model_fn(x_n, grid.timesteps[n], cond, lora_scale=0.0), n)  # teacher F_n
        inner = n + 1 < T
        tgt = x_next.clone()
        if inner.any():
            m = n[inner] + 1
            with target.applied():
                out = model_fn(x_next[inner], grid.timesteps[m], index_cond(cond, inner.nonzero().flatten()),
                               lora_scale=1.0)
            tgt[inner] = consistency_fn(grid, x_next[inner], out, m)[0]
    f, _ = consistency_fn(grid, x_n, model_fn(x_n, grid.timesteps[n], cond, lora_scale=1.0), n, clip=False)
    return (f - tgt).pow(2).flatten(1).mean(1).mean()


class CDBatches:
    """Batches for ``cd_loss``: rows of ``data`` drawn uniformly, positions n ~ U{0..T-1} and z ~ N(0, I), all from
    torch's global RNG (the training loop restores it on resume, so a resumed run continues the same stream)."""

    def __init__(self, data: dict, batch_size: int, num_steps: int):
        self.x0, self.cond, self.batch_size, self.T = data["x0"], data["cond"], int(batch_size), int(num_steps)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rows = torch.randint(0, len(self.x0), (self.batch_size,))
        n = torch.randint(0, self.T, (self.batch_size,))
        z = torch.randn((self.batch_size, *self.x0.shape[1:]))
        return {"x0": self.x0[rows], "cond": index_cond(self.cond, rows), "n": n, "z": z}


@torch.no_grad()
def teacher_data(task, n: int, chunk: int = 512) -> dict:
    """{"cond", "x0"}: DDIM-T samples of the base model on the first ``n`` "train" conditions of ``task`` (for a
    task without clean data of its own)."""
    cond, x_T = task.split("train", n)
    grid = task.grid()
    x0 = torch.cat([sample_sequential(task.model_fn, x_T[i:i + chunk], index_cond(cond, slice(i, i + chunk)),
                                      grid=grid)[0] for i in range(0, len(x_T), chunk)])
    return {"cond": cond, "x0": x0}


@torch.no_grad()
def cd_distances(model_fn, grid, cond, x_T, ref, ks, distance, batch: int = 256) -> dict[int, float]:
    """Mean ``distance`` of the student's k-call sample (deterministic re-noising) to ``ref`` = DDIM-T's output,
    per k in ``ks``."""
    out = {}
    for k in ks:
        d = [distance(sample_consistency(model_fn, x_T[i:i + batch], index_cond(cond, slice(i, i + batch)),
                                         grid=grid, k=k)[0], ref[i:i + batch]) for i in range(0, len(x_T), batch)]
        out[int(k)] = float(torch.cat(d).mean())
    return out


def run_consistency(task, cd: dict, data: dict, *, out: str | Path, run_dir: str | Path, command: str = "",
                    config: dict | None = None, extra: dict | None = None, force: bool = False,
                    val: tuple | None = None, batches=None) -> dict:
    """Consistency distillation of ``task``'s base model with the one training loop (``run_dir``: state.pt,
    target.pt, log.jsonl, the EMA adapter in ``adapter/``; a rerun resumes), then the adapter folder at ``out``
    (sampler spec ``consistency`` k = 1; metrics: distance to DDIM-T at k = 1..``val.k_max`` on the validation
    conditions). ``cd``: {lora: {rank, alpha, targets}, batch_size, mu, training: LoopConfig, val: {n, k_max}};
    ``data``: {"cond", "x0"} (module doc); ``val``: (cond, x_T) of the validation conditions (None: the task's
    "val" split, its first ``cd.val.n``); ``batches``: a batch stream in place of ``CDBatches(data, ...)``.
    Returns the metrics. Raises ValueError for bad settings, ResumeError."""
    from ..adapters import save_adapter_folder
    from ..io import check_not_shipped
    from ..lora import add_lora, lora_parameters
    from . import LoopConfig, hold_run_folder, train

    out, run_dir = Path(out), Path(run_dir)
    for name, path in (("out", out), ("run_dir", run_dir)):
        check_not_shipped(path, force, "force=true", name)
    mu = float(cd["mu"])
    if not 0 <= mu < 1:
        raise ValueError(f"cd.mu (the target network's EMA rate) must be in [0, 1), got {mu}")
    if len(data["x0"]) < 1:
        raise ValueError("no training samples (data['x0'] is empty)")
    with hold_run_folder(run_dir):  # a second job in this run folder is refused here, before any set-up work
        grid, fn = task.grid(), task.model_fn
        vcond, vx_T = val if val is not None else task.split("val", int(cd["val"]["n"]))
        vref = sample_sequential(fn, vx_T, vcond, grid=grid)[0] if len(vx_T) else None
        ks = list(range(1, int(cd["val"]["k_max"]) + 1))
        lo = cd["lora"]
        torch.manual_seed(int(cd["training"]["seed"]))  # lora_A's initialisation
        add_lora(task.module, rank=int(lo["rank"]), alpha=float(lo.get("alpha") or lo["rank"]),
                 target_modules=list(lo.get("targets") or task.lora_targets))
        params = lora_parameters(task.module)
        target = TargetNetwork(params)
        target_path = run_dir / "target.pt"
        if target_path.exists() and (run_dir / "state.pt").exists():
            target.load_state_dict(torch.load(target_path, weights_only=True))
        spec = SamplerSpec.named("consistency", num_steps=task.num_steps, k=1)
        save = task.save_adapter or (lambda folder, s, ex: save_adapter_folder(task.module, folder, s, ex))

        def loss_fn(batch):  # the target follows the weights the previous step left (after each optimiser step)
            target.update(mu)
            return cd_loss(fn, batch, grid, target)

        def val_fn(_module):
            if vref is None:
                return {}
            d = cd_distances(fn, grid, vcond, vx_T, vref, ks, task.distance)
            return {f"val_distance_k{k}": v for k, v in d.items()}

        def save_fn(_module, step):  # the EMA adapter, and the target network beside the loop's state.pt
            if step >= 0:
                with atomic_path(target_path) as tmp:
                    torch.save(target.state_dict(), tmp)
            save(run_dir / "adapter", spec, {"step": abs(step), "command": command, "config": config, "method": "cd"})

        loop = LoopConfig(**cd["training"])
        t0 = time.perf_counter()
        batches = batches if batches is not None else CDBatches(data, cd["batch_size"], task.num_steps)
        train(task.module, loss_fn, batches, loop, run_dir, save_fn, val_fn,
              params=params, desc=f"CD {task.name}", config=config or {"cd": cd})
        metrics = {"distance": task.unit, "val": val_fn(task.module), "val_conditions": len(vx_T),
                   "train_s_this_call": time.perf_counter() - t0, "samples": len(data["x0"]),
                   "threads": torch.get_num_threads()}
        save(out, spec, {"metrics": metrics, "command": command, "config": config, "steps": loop.steps, "method": "cd",
                         **(extra or {})})
        log = run_dir / "log.jsonl"
        if log.exists():
            import json

            write_json(out / "train_log.json", [json.loads(r) for r in log.read_text().splitlines() if r.strip()])
        return metrics
