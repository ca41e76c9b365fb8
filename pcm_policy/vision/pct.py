"""Picard Consistency Training for image models (LDM-CelebA and SD v1.4 layouts), iterates on the fly.

The losses, the batches' k ~ U{0..K-1}, the EMA loop and the schedule tuning are the task-agnostic ones
(``pcm_policy.training``); this module supplies what is the image task's own:

  conditions   N initial latents x_T drawn per training seed (``processor.initial_latents``: seed_base + i,
               never an evaluation seed), and for sd the prompt embeddings (``encode_prompts``; prompts x
               images_per_prompt, as supplement Table 1: 20 prompts x 10 images).
  X*           the sequential DDIM-T trajectory of the base model on each x_T, kept in memory
               (N (T+1) latents: 200 x 31 x 4x64x64 floats = 0.4 GB for real SD).
  X^k          base Picard iterate k of a condition (full window, tol 0, plain updates from the ParaDiGMS
               first iterate): made once and kept in memory when N K (T+1) latents fit in
               ``cache_bytes`` (the small stand-in models: 0.2 GB), else generated ON THE FLY for each batch
               (SD-sized latents: 6 GB at N 200, K 15, T 30).
  distance     latent RMSE per sample, sqrt(mean (x - x*)^2) (the tuning threshold is in these units).

Spec: supplement Table 1 (CelebA: 200 trajectories, T 50, DDIM; SD: 20 prompts x 10 images, T 30, K 15;
Adam 1e-4 with cosine) and ``docs/vision.md`` for what was scaled to this CPU.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..adapters import save_adapter_folder
from ..io import check_not_shipped, write_json
from ..lora import lora_parameters
from ..sampling import index_cond, sample_picard, sample_sequential, step_grid
from ..training import LoopConfig, train
from ..training import pct as P
from .loaders import load_model
from .models import add_attention_lora, model_function
from .processor import encode_prompts, initial_latents

__all__ = ["ImagePCTConfig", "ImagePCTBatches", "latent_rmse", "make_data", "run_pct"]


@dataclass
class ImagePCTConfig:
    """What defines the trajectories of one image PCT run (``configs/task/{celeba,sd}.yaml``)."""

    n: int = 200  # conditions (trajectories)
    num_steps: int = 50  # T
    iterates: int = 30  # K: k ~ U{0..K-1}
    val_fraction: float = 0.1  # held out for validation and schedule tuning
    seed_base: int = 1_000_000  # training seeds seed_base + i (evaluation uses small seeds: 0, 1, ...)
    prompts: tuple[str, ...] = ()  # sd only
    negative_prompt: str = ""
    guidance: float = 7.5
    batch: int = 16  # rows per generation call
    cache_bytes: float = 2e9  # keep every X^k in memory below this size, else make them per batch


def latent_rmse(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-sample RMSE over every latent entry: (B, C, h, w) x 2 -> (B,). Differentiable."""
    return ((out - ref).pow(2).flatten(1).mean(1) + 1e-12).sqrt()


@torch.no_grad()
def make_data(model, model_fn, grid, cfg: ImagePCTConfig, progress: bool = True) -> dict:
    """x_T (N, C, h, w), cond (N rows or None), X* (N, T+1, C, h, w) and the split (N,): 1 = held out."""
    if model.conditional:
        if not cfg.prompts:
            raise ValueError("a text-conditional model needs task.prompts (the training prompts)")
        per = max(1, cfg.n // len(cfg.prompts))
        prompts = [p for p in cfg.prompts for _ in range(per)][: cfg.n]
    else:
        if cfg.prompts:
            raise ValueError("this model is unconditional: leave task.prompts empty")
        prompts = None
    n = cfg.n if prompts is None else len(prompts)
    x_T = initial_latents(model, [cfg.seed_base + i for i in range(n)])
    cond = encode_prompts(model, prompts, cfg.negative_prompt) if prompts else None
    x_star = []
    for i0 in tqdm(range(0, n, cfg.batch), desc="X* (sequential DDIM)", disable=not progress):
        sl = slice(i0, i0 + cfg.batch)
        _, st = sample_sequential(model_fn, x_T[sl], index_cond(cond, sl), grid=grid, return_trajectory=True)
        x_star.append(st.trajectory.transpose(0, 1))
    g = torch.Generator().manual_seed(cfg.seed_base)
    split = torch.zeros(n, dtype=torch.long)  # held out: a random subset (every prompt's images interleaved)
    split[torch.randperm(n, generator=g)[: max(1, round(n * cfg.val_fraction))]] = 1
    return {"x_T": x_T, "cond": cond, "x_star": torch.cat(x_star), "split": split, "prompts": prompts}


@torch.no_grad()
def base_iterates(model_fn, grid, x_T, cond, k_max: int) -> list[torch.Tensor]:
    """[X^0, ..., X^k_max] (each (T+1, B, ...)): full-window base Picard, tol 0, plain updates."""
    _, st = sample_picard(model_fn, x_T, cond, grid=grid, tol=0.0, max_iters=k_max, return_iterates=True)
    return st.iterates + [st.iterates[-1]] * (k_max + 1 - len(st.iterates))


class ImagePCTBatches:
    """Batches for ``training.pct.pct_loss``: n over the training split, k ~ U{0..K-1} (torch's global RNG,
    so a resumed run continues the same stream), X^k by base Picard from x_T: all made once when they fit
    in ``cache_bytes``, else per batch (the same values either way)."""

    def __init__(self, data: dict, model_fn, grid, batch_size: int, K: int, cache_bytes: float = 2e9,
                 chunk: int = 16, progress: bool = True, iterates: bool = True):
        self.idx = (data["split"] == 0).nonzero().flatten()
        self.data, self.model_fn, self.grid, self.batch_size, self.K = data, model_fn, grid, batch_size, K
        self.iterates = iterates  # False: batches without X^k (the unrolled objective starts from x_T)
        x_star = data["x_star"]
        size = len(self.idx) * K * x_star[0].numel() * x_star.element_size()
        self.cache = None
        if iterates and size <= cache_bytes:  # (N_train, K, T+1, ...)
            parts = []
            for i0 in tqdm(range(0, len(self.idx), chunk), desc="X^k (base Picard)", disable=not progress):
                n = self.idx[i0:i0 + chunk]
                its = base_iterates(model_fn, grid, data["x_T"][n], index_cond(data["cond"], n), K - 1)
                parts.append(torch.stack(its[:K]).movedim(2, 0))  # (B, K, T+1, ...)
            self.cache = torch.cat(parts)
            self.pos = torch.full((len(data["x_T"]),), -1, dtype=torch.long)
            self.pos[self.idx] = torch.arange(len(self.idx))

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        n = self.idx[torch.randint(0, len(self.idx), (self.batch_size,))]
        k = torch.randint(0, self.K, (self.batch_size,))
        x_T, cond = self.data["x_T"][n], index_cond(self.data["cond"], n)
        if not self.iterates:
            return {"x_star": self.data["x_star"][n], "cond": cond, "k": k, "x_T": x_T}
        if self.cache is not None:
            x_k = self.cache[self.pos[n], k]
        else:
            its = base_iterates(self.model_fn, self.grid, x_T, cond, int(k.max()))
            x_k = torch.stack([its[int(kk)][:, b] for b, kk in enumerate(k)])  # (B, T+1, ...)
        return {"x_k": x_k, "x_star": self.data["x_star"][n], "cond": cond, "k": k, "x_T": x_T}


@torch.no_grad()
def estimate_var_k(model_fn, grid, data: dict, K: int, n: int = 16) -> torch.Tensor:
    """Var_k = mean over up to ``n`` training conditions of mean((X^k - X*)^2), k = 0..K-1."""
    idx = (data["split"] == 0).nonzero().flatten()[:n]
    its = base_iterates(model_fn, grid, data["x_T"][idx], index_cond(data["cond"], idx), K - 1)
    ref = data["x_star"][idx].transpose(0, 1)
    return torch.stack([(X - ref).pow(2).mean() for X in its[:K]])


def run_pct(cfg: dict, command: str, root: Path) -> dict:
    """One image PCT run from a resolved config dict (``scripts/train_pct.py task=celeba|sd``): trajectories,
    training with the one loop, schedule tuning on the held-out split, the adapter folder at ``cfg["out"]``.

    Returns the metrics written to ``adapter.json``. Raises ValueError (bad config, a missing model
    folder: ``ModelFolderError``, a shipped output without force) and ResumeError."""
    t_all = time.perf_counter()
    task, pc = cfg["task"], cfg["pct"]

    def resolve(p):
        p = Path(p)
        return p if p.is_absolute() else root / p

    out, run_dir = resolve(cfg["out"]), resolve(cfg.get("run_dir") or Path(cfg["work_dir"]) / "train")
    for name, path in (("out", out), ("run_dir", run_dir)):
        check_not_shipped(path, bool(cfg.get("force")), "force=true", name)
    model = load_model(resolve(task["model"]))
    dcfg = ImagePCTConfig(**{k: (tuple(v) if k == "prompts" else v) for k, v in task.items()
                             if k in ImagePCTConfig.__dataclass_fields__})
    model_fn = model_function(model, dcfg.guidance)
    grid = step_grid(model.scheduler, dcfg.num_steps, solver="ddim")

    t0 = time.perf_counter()
    data = make_data(model, model_fn, grid, dcfg)
    data_s = time.perf_counter() - t0
    alpha = (P.alpha_from_var(estimate_var_k(model_fn, grid, data, dcfg.iterates), float(pc["alpha_floor"]))
             if pc["objective"] == "picard" else torch.ones(dcfg.iterates))
    jump = pc["objective"] == "jump"
    if jump:  # more (x_T, condition) pairs for the one-step jump, from the base model before the adapter
        extra = P.jump_draws_from_config(pc, model_fn, grid, data, run_dir.parent, chunk=dcfg.batch * 8)

    lo = pc["lora"]
    add_attention_lora(model.unet, rank=int(lo["rank"]), alpha=float(lo["alpha"]),
                       extra_targets=lo.get("extra_targets"))
    settings = dict(num_steps=dcfg.num_steps, safeguard=pc["tune"].get("safeguard"), init=None)
    spec, loss_fn = P.objective(pc, model_fn, grid, alpha, settings, latent_rmse)
    batches = (P.JumpBatches(data, int(pc["batch_size"]), extra) if jump else
               ImagePCTBatches(data, model_fn, grid, int(pc["batch_size"]),
                               min(pc.get("k_max") or dcfg.iterates, dcfg.iterates), dcfg.cache_bytes,
                               iterates=pc["objective"] == "picard"))
    val = (data["split"] == 1).nonzero().flatten()[: int(pc["val"]["n"])]

    @torch.no_grad()
    def val_fn(_module) -> dict:
        d = P.pcm_distances(model_fn, grid, index_cond(data["cond"], val), data["x_T"][val], data["x_star"][val, -1],
                            spec, int(pc["val"]["k_max"]), latent_rmse, batch=dcfg.batch)
        return {f"val_distance_k{i + 1}": v for i, v in enumerate(d)}

    def save_fn(_module, step):
        save_adapter_folder(model.unet, run_dir / "adapter", spec,
                            extra={"step": abs(step), "tuned": False, "command": command, "config": cfg})

    loop = LoopConfig(**pc["training"])
    t0 = time.perf_counter()
    train(model.unet, loss_fn, batches, loop, run_dir, save_fn, val_fn, params=lora_parameters(model.unet),
          desc=f"PCT {task['name']}", config=P.run_config(cfg))
    train_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    tune = pc["tune"]
    held = (data["split"] == 1).nonzero().flatten()[: tune.get("n")]
    held_out = (model_fn, grid, index_cond(data["cond"], held), data["x_T"][held], data["x_star"][held, -1])
    chosen, metrics = P.tune_after_training(pc, spec, *held_out, settings, latent_rmse)
    metrics.update(distance="latent RMSE", timing={"data_s": data_s, "train_s_this_call": train_s,
                                                   "tune_s": time.perf_counter() - t0,
                                                   "total_s_this_call": time.perf_counter() - t_all},
                   data={"n": len(data["x_T"]), "held_out": int((data["split"] == 1).sum()),
                         "seed_base": dcfg.seed_base, "prompts": sorted(set(data["prompts"] or []))},
                   alpha=alpha.tolist())
    save_adapter_folder(model.unet, out, chosen, extra={"metrics": metrics, "command": command, "config": cfg,
                                                        "base": str(task["model"]), "steps": loop.steps,
                                                        "tuned": True})
    write_json(out / "train_log.json", [json.loads(r) for r in (run_dir / "log.jsonl").read_text().splitlines()
                                        if r.strip()] if (run_dir / "log.jsonl").exists() else [])
    return metrics
