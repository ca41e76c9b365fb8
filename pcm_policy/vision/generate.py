"""Generate images with any sampler of the core: what ``scripts/vision/generate.py`` calls.

``generate`` loads a model folder (``loaders``), draws x_T per seed and encodes prompts (``processor``),
wraps the UNet (``models.model_function``: CFG -> LoRA scale -> UNet), samples batch by batch with the
``SamplerSpec``'s sampler and decodes; ``save_generation`` writes one PNG per sample, a grid PNG,
``samples.npz`` (images, latents) and ``stats.json``, each to a temporary name first.
Sequential DDIM on T steps gives the diffusers pipeline's image for the same seed and prompt.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..adapters import load_sampler
from ..io import atomic_path
from ..sampling import spec_with
from .loaders import ImageModel, load_model
from .models import model_function
from .processor import decode_latents, encode_prompts, initial_latents, seeds_for

__all__ = ["NO_MODEL", "SHIPPED_MODELS", "Generation", "default_model", "generate", "grid_image",
           "save_generation"]

# Small stand-ins trained here on MNIST digits (``train``), in the real layouts; used when no model is given.
_CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints" / "vision"
SHIPPED_MODELS = {"ldm": _CHECKPOINTS / "ldm_mnist", "sd": _CHECKPOINTS / "sd_mnist"}
NO_MODEL = ("no model given, and the small model that ships with pcm-policy is missing at {path}; pass "
            "--model DIR (a local copy of CompVis/ldm-celebahq-256 or CompVis/stable-diffusion-v1-4), or train "
            "it: python scripts/vision/train_model.py --family {family} --out {path}")


def default_model(prompt: str | None = None) -> Path:
    """The model used when none is given: the shipped small SD-layout digit model when there is a prompt,
    else the shipped small LDM-layout one (both trained here on MNIST digits; ``SHIPPED_MODELS``).
    Raises ValueError (``NO_MODEL``) if that folder is missing."""
    family = "ldm" if prompt is None else "sd"
    path = SHIPPED_MODELS[family]
    if not (path / "model_index.json").is_file():
        raise ValueError(NO_MODEL.format(path=path, family=family))
    return path


@dataclass
class Generation:
    """What ``generate`` made: ``images`` (N, H, W, 3) uint8, ``latents`` (N, C, h, w) float32, ``stats``."""

    images: np.ndarray
    latents: torch.Tensor
    stats: dict


def generate(model: str | Path | ImageModel | None, *, sampler: str = "ddim", steps: int = 50, k: int | None = None,
             tol: float | None = None, window: int | None = None, prompt: str | None = None,
             negative_prompt: str = "", guidance: float = 7.5, num_samples: int = 1, seed: int = 0,
             batch_size: int | None = None, dtype: str | None = None, adapter: str | Path | None = None,
             progress: bool = True) -> Generation:
    """Sample ``num_samples`` images; sample i uses seed ``seed + i``.

    Args:
        model: a model folder (``loaders.LAYOUTS``) or a loaded ``ImageModel``; None: ``default_model(prompt)``,
            a small stand-in trained here on MNIST digits (sd layout with a prompt, ldm without).
        sampler: a ``SamplerSpec`` name (ddim, dpmsolver, picard, taa, pcm, ...).
        steps: T; k, tol, window: the spec's settings (None: its defaults; pcm: the adapter's).
        prompt, negative_prompt, guidance: text conditioning and CFG scale (sd family only).
        batch_size: samples per sampler call (default: all).
        dtype: the UNet's dtype when loading from a folder ("float32" | "float16" | "bfloat16").
        adapter: a PCM adapter folder (``adapters.save_adapter_folder``); pcm only.
    Returns:
        a ``Generation``.
    Raises:
        ValueError: no model, an incomplete folder (``ModelFolderError``), a prompt for an
            unconditional model or none for a conditional one, bad counts or sampler settings.
    """
    if model is None:
        model = default_model(prompt)
    seeds = seeds_for(seed, num_samples)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if (adapter is not None) != (sampler == "pcm"):
        raise ValueError("pcm needs --adapter DIR (a folder with adapter.safetensors and adapter.json)"
                         if adapter is None else f"--adapter is for the pcm sampler; {sampler} samples the base model")
    settings = dict(num_steps=steps, k=k, tol=tol, window=window)
    if sampler != "pcm":
        spec_with(sampler, **settings)  # bad settings fail before loading
    if not isinstance(model, ImageModel):
        model = load_model(model, dtype=dtype)
    if model.conditional and prompt is None:
        raise ValueError(f"the {model.family} model at {model.path} is text-conditional: pass a prompt")
    if not model.conditional and prompt is not None:
        raise ValueError(f"the {model.family} model at {model.path} is unconditional and takes no prompt")
    solver = None
    if sampler == "dpmsolver":
        from diffusers import DPMSolverMultistepScheduler

        solver = DPMSolverMultistepScheduler.from_config(model.scheduler_config)
    run = load_sampler(adapter if sampler == "pcm" else sampler, model.scheduler, module=model.unet,
                       solver_scheduler=solver, **settings)  # pcm: the adapter's spec, with the settings given
    spec = run.spec
    fn = model_function(model, guidance)
    step = batch_size or num_samples
    latents, iters, nfe, t_sample = [], [], 0, 0.0
    from tqdm.auto import tqdm

    with tqdm(total=num_samples, unit="sample", disable=not progress, desc=spec.label()) as bar:
        for lo in range(0, num_samples, step):
            batch = seeds[lo:lo + step]
            x_T = initial_latents(model, batch)
            cond = encode_prompts(model, [prompt] * len(batch), negative_prompt) if model.conditional else None
            t0 = time.perf_counter()
            x, st = run(fn, x_T, cond)
            t_sample += time.perf_counter() - t0
            latents.append(x)
            iters.append(st.iterations)
            nfe += st.nfe * len(batch)
            bar.update(len(batch))
            bar.set_postfix(iterations=st.iterations)
    latents = torch.cat(latents).float()
    t0 = time.perf_counter()
    images = decode_latents(model, latents, batch_size=step)
    stats = dict(
        sampler=spec.to_dict(), label=spec.label(), model=str(model.path), family=model.family,
        num_samples=num_samples, seed=seed, batch_size=step, prompt=prompt,
        negative_prompt=negative_prompt if model.conditional else None,
        guidance=guidance if model.conditional else None, unet_dtype=str(next(model.unet.parameters()).dtype),
        iterations=iters, nfe_per_sample=nfe / num_samples, cfg_rows=2 if model.conditional and guidance > 1 else 1,
        ms_per_sample=1e3 * t_sample / num_samples, decode_ms_per_sample=1e3 * (time.perf_counter() - t0) / num_samples,
        threads=torch.get_num_threads())
    return Generation(images, latents, stats)


def grid_image(images: np.ndarray, cols: int | None = None):
    """A PIL image tiling ``images`` (N, H, W, 3) uint8 row by row, ``cols`` per row (default ceil(sqrt N))."""
    from PIL import Image

    n, h, w = images.shape[:3]
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, img in enumerate(images):
        grid.paste(Image.fromarray(img), ((i % cols) * w, (i // cols) * h))
    return grid


def _atomic(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def save_generation(gen: Generation, out: str | Path) -> Path:
    """Write ``sample_0000.png``..., ``grid.png``, ``samples.npz`` (images (N,H,W,3) uint8, latents
    (N,C,h,w) float32) and ``stats.json`` (last) to ``out``; every file goes to a temporary name first."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(gen.images):
        _atomic(out / f"sample_{i:04d}.png", lambda p, img=img: Image.fromarray(img).save(p, format="PNG"))
    _atomic(out / "grid.png", lambda p: grid_image(gen.images).save(p, format="PNG"))

    def npz(p):
        with open(p, "wb") as f:
            np.savez(f, images=gen.images, latents=gen.latents.cpu().numpy().astype(np.float32))

    _atomic(out / "samples.npz", npz)
    _atomic(out / "stats.json", lambda p: p.write_text(json.dumps(gen.stats, indent=1)))
    return out
