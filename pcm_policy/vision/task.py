"""The image Task (LDM-CelebA and SD v1.4 layouts) for the generic drivers (``pcm_policy.task``).

  conditions "train"/"val": ``data.n`` initial latents, one per training seed ``data.seed_base + i`` (never
             an evaluation seed), and for sd the embeddings of ``data.prompts`` x images-per-prompt
             (supplement Table 1: 20 prompts x 10 images); a random ``val_fraction`` of them (every
             prompt's images interleaved) is held out. "eval": seeds ``eval_seed + i`` (sample i), the
             evaluation prompts cycled over the samples.
  distance   latent RMSE per sample, sqrt(mean (x - x*)^2) (differentiable).
  images     latents -> uint8 images (the pipeline's VAE decode), for the report's grids.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..task import Task
from ..training.pct_data import PCTData
from .loaders import ImageModel
from .models import ATTENTION_TARGETS, model_function
from .processor import decode_latents, encode_prompts, initial_latents

__all__ = ["ImageData", "latent_rmse", "make_task", "pct_task"]


@dataclass
class ImageData:
    """The PCT conditions of an image task (``configs/task/{celeba,sd}.yaml``)."""

    n: int = 200  # conditions (trajectories)
    val_fraction: float = 0.1  # held out for validation and schedule tuning
    seed_base: int = 1_000_000  # training seeds seed_base + i (evaluation uses small seeds: 0, 1, ...)
    prompts: tuple[str, ...] = ()  # sd only
    negative_prompt: str = ""


def latent_rmse(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-sample RMSE over every latent entry: (B, C, h, w) x 2 -> (B,). Differentiable."""
    return ((out - ref).pow(2).flatten(1).mean(1) + 1e-12).sqrt()


def _check_prompts(model: ImageModel, prompts, what: str) -> None:
    if model.conditional and not prompts:
        raise ValueError(f"the {model.family} model at {model.path} is text-conditional: it needs {what}")
    if not model.conditional and prompts:
        raise ValueError(f"the {model.family} model at {model.path} is unconditional: leave {what} empty")


def make_task(model: ImageModel, *, num_steps: int, guidance: float = 7.5, data: ImageData | None = None,
              eval_seed: int = 0, eval_prompts=None, name: str | None = None) -> Task:
    """The Task of a loaded image model with classifier-free guidance ``guidance`` (sd) and T = ``num_steps``.
    Raises ValueError for prompts an unconditional model cannot take or a conditional one without them."""
    data, memo = data or ImageData(), {}
    if data.prompts:
        _check_prompts(model, data.prompts, "task.prompts (the training prompts)")
    if eval_prompts:
        _check_prompts(model, eval_prompts, "evaluation prompts")

    def pct_rows():  # the legacy layout: N rows, a random held-out subset
        if "pct" not in memo:
            _check_prompts(model, data.prompts, "task.prompts (the training prompts)")
            prompts = None
            if model.conditional:
                per = max(1, data.n // len(data.prompts))
                prompts = [p for p in data.prompts for _ in range(per)][: data.n]
            n = data.n if prompts is None else len(prompts)
            x_T = initial_latents(model, [data.seed_base + i for i in range(n)])
            cond = encode_prompts(model, prompts, data.negative_prompt) if prompts else None
            split = torch.zeros(n, dtype=torch.long)
            g = torch.Generator().manual_seed(data.seed_base)
            split[torch.randperm(n, generator=g)[: max(1, round(n * data.val_fraction))]] = 1
            memo["pct"] = (cond, x_T, split)
        return memo["pct"]

    def conditions(split: str, n: int):
        from ..sampling import index_cond

        if split == "eval":
            x_T = initial_latents(model, [eval_seed + i for i in range(n)])
            if not model.conditional:
                return None, x_T
            _check_prompts(model, eval_prompts, "evaluation prompts")
            return encode_prompts(model, [eval_prompts[i % len(eval_prompts)] for i in range(n)]), x_T
        cond, x_T, s = pct_rows()
        rows = (s == int(split == "val")).nonzero().flatten()[:n]
        return index_cond(cond, rows), x_T[rows]

    key = {"model": str(model.path), "family": model.family, "guidance": guidance if model.conditional else None,
           "data": {**asdict(data), "prompts": list(data.prompts)}, "eval_seed": eval_seed,
           "eval_prompts": list(eval_prompts or [])}
    return Task(name=name or {"ldm": "celeba", "sd": "sd"}.get(model.family, model.family), module=model.unet,
                model_fn=model_function(model, guidance), scheduler=model.scheduler, num_steps=num_steps,
                lora_targets=list(ATTENTION_TARGETS), distance=latent_rmse, unit="latent RMSE",
                conditions=conditions, key=key, images=lambda x: decode_latents(model, x))


def pct_task(cfg: dict, root) -> tuple[Task, PCTData, dict]:
    """(Task, store settings, adapter.json extras) of a resolved ``train_pct`` config for task=celeba|sd (a
    plain dict: ``task`` = ``configs/task/{celeba,sd}.yaml``); a relative model path is under ``root``.
    Raises ValueError (``ModelFolderError``: a missing model folder; prompts a model cannot take)."""
    from pathlib import Path

    from .loaders import load_model

    t = cfg["task"]
    path = Path(t["model"]) if Path(t["model"]).is_absolute() else Path(root) / t["model"]
    model = load_model(path)
    data = ImageData(n=int(t["n"]), val_fraction=float(t["val_fraction"]), seed_base=int(t["seed_base"]),
                     prompts=tuple(t.get("prompts") or ()), negative_prompt=t.get("negative_prompt", ""))
    _check_prompts(model, data.prompts, "task.prompts (the training prompts)")
    task = make_task(model, num_steps=int(t["num_steps"]), guidance=float(t["guidance"]), data=data, name=t["name"])
    store = PCTData(n=data.n, num_steps=int(t["num_steps"]), iterates=int(t["iterates"]),
                    val_fraction=data.val_fraction, chunk=int(t["batch"]), var_n=16,
                    cache_bytes=float(t["cache_bytes"]), draw_chunk=int(t["batch"]) * 8)
    return task, store, {"base": str(t["model"])}
