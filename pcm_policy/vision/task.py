"""The image Task (LDM-CelebA and SD v1.4 layouts) for the generic drivers (``pcm_policy.task``).

  conditions "train"/"val": ``data.n`` initial latents, one per training seed ``data.seed_base + i`` (never
             an evaluation seed), and for sd the embeddings of ``data.prompts`` x images-per-prompt
             (supplement Table 1: 20 prompts x 10 images); a random ``val_fraction`` of them (every
             prompt's images interleaved) is held out. "eval": seeds ``eval_seed + i`` (sample i), the
             evaluation prompts cycled over the samples.
  distance   latent RMSE per sample, sqrt(mean (x - x*)^2) (differentiable).
  images     latents -> uint8 images (the pipeline's VAE decode), for the report's grids.
  score      (``sweep_task``, the image evaluation) the image quality of N samples on seeds S..S+N-1 held to
             k calls (``evaluate.Quality``: latent RMSE, PSNR, uint8 difference to the converged output;
             FID, sFID, KID, precision / recall, CLIP score, CMMD, class accuracy); "score" = FID.

The image evaluation (``sweep_task``; ``scripts/vision/evaluate.py --family ldm|sd``) sweeps, for every k:
    sequential  DDIM-T truncated after k steps (X[k] decoded; the paper's "Sequential")
    ddim-k      DDIM re-discretised to k steps
    picard      Picard (ParaDiGMS) over the DDIM-T trajectory, k iterations (tol 0)
    taa         Picard + triangular Anderson acceleration, k iterations (tol 0)
    pcm         Picard with the adapter's own switching schedule (its ``adapter.json`` spec), k iterations
    pcm-nomix   (only when the adapter's schedule ramps) the same adapter with lambda rounded to a hard switch
  and on request (``PEERS``, issue 23's peers):
    dpmsolver++, unipc  diffusers' DPM-Solver++ (2M) / UniPC (bh2) in k steps, built from the model's own
                scheduler config as a pipeline user builds them (``solvers.solver_scheduler``: the same betas,
                spacing and steps_offset; x0 thresholding only where the scheduler clips x0, which neither
                LDM-CelebA's nor SD v1.4's does, so none: dynamic thresholding is meant for pixel-space models)
    srds        SRDS, Parareal over the DDIM-T grid (``sampling.srds``), k batched calls, tol 0
"Mixing" (the paper's Table 3 ablation, spec ``pcm.md`` §5): with mixing, lambda(k) takes values strictly
between 0 and 1 on a ramp (k_on < k_off): the adapted and the base model are mixed, in weight or feature
space as the adapter names; without mixing, lambda jumps from 1 to 0 (a hard switch). The no-mixing variant
of a ramp is lambda rounded to {0, 1}: the hard switch at the first k with lambda < 1/2. An adapter trained
with a hard switch has no mixing variant to derive (reported as skipped).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..sampling import K_STEPS, SamplerSpec, Switch, make_sampler
from ..task import Task
from ..training.pct_data import PCTData
from .loaders import ImageModel
from .models import ATTENTION_TARGETS, model_function
from .processor import decode_latents, encode_prompts, initial_latents, seeds_for

__all__ = ["DEFAULT_STEPS", "NAMES", "PEERS", "ImageData", "eval_samplers", "latent_rmse", "make_task", "pct_task",
           "sweep_task"]

NAMES = ("sequential", "ddim-k", "picard", "taa", "pcm")  # the image evaluation's samplers (default)
PEERS = ("dpmsolver++", "unipc", "srds")  # on request (issue 23's peers)
DEFAULT_STEPS = {"ldm": 50, "sd": 30}  # supplement Table 1: LDM-CelebA T = 50, SD v1.4 T = 30


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


def _nomix(switch: Switch) -> Switch:
    """A ramp's lambda rounded to {0, 1}: the hard switch at the first k with lambda(k) < 1/2."""
    k = next(k for k in range(switch.k_off + 1) if switch(k) < 0.5)
    return Switch(k, k, switch.space)


def eval_samplers(names, T: int, adapter_spec: SamplerSpec | None = None) -> tuple[dict, list[str], dict]:
    """``({name: SamplerSpec}, notes, skipped)`` of the image evaluation's samplers (module doc) at T, tol 0 for
    the iterative ones; pcm is ``adapter_spec`` at T (needed when "pcm" is in ``names``), plus pcm-nomix when its
    switch ramps. Raises ValueError for an unknown name or pcm without an adapter spec."""
    bad = [s for s in names if s not in NAMES + PEERS]
    if bad or not names:
        raise ValueError(f"unknown sampler(s) {', '.join(bad) or '(none)'}; choose from {', '.join(NAMES + PEERS)}")
    if "pcm" in names and adapter_spec is None:
        raise ValueError("the pcm sampler needs --adapter DIR (a folder with adapter.safetensors and adapter.json)")
    specs, notes, skipped = {}, [], {}
    for s in names:
        if s == "pcm":
            specs["pcm"] = adapter_spec.replace(num_steps=T, tol=0.0, k=None)
            sw = specs["pcm"].switch
            if sw.k_on < sw.k_off:
                specs["pcm-nomix"] = specs["pcm"].replace(switch=_nomix(sw))
                notes.append(f"pcm: the adapter's ramp lambda = 1 until k_on = {sw.k_on}, 0 from k_off = {sw.k_off} "
                             f"({sw.space} space) = WITH mixing; pcm-nomix: lambda rounded to a hard switch "
                             f"{specs['pcm-nomix'].switch} = WITHOUT mixing")
            else:
                skipped["pcm_mixing"] = (f"the adapter switches hard (k_on = k_off = {sw.k_off}): trained without a "
                                         "mixing ramp, so pcm is the no-mixing variant; no mixing variant is defined")
        else:
            specs[s] = SamplerSpec.named({"sequential": "ddim"}.get(s, s), num_steps=T,
                                         tol=0.0 if s in ("picard", "taa", "srds") else None,
                                         k=1 if s in K_STEPS else None)
    return specs, notes, skipped


def _quality_score(model: ImageModel, fn, quality, *, T: int, seeds, prompts, ks, batch_size: int, cache, key,
                   progress: bool):
    """The image Task's ``(score, score_images)``: ``score(spec, k)`` is ``quality`` of the N samples of ``spec``
    held to k calls, decoded; ``score(None, None)``: of the converged output (DDIM-T). A sampler runs once for
    every k of ``ks`` (its iterates kept; ddim-k once per k) and is kept until the next sampler is asked for.
    ``score_images(spec, k)``: the first images the score decoded (for the report's grid), cached in ``cache``."""
    from tqdm.auto import tqdm

    from ..adapters import load_sampler
    from ..evaluation.report import GRID_SAMPLES

    memo = {}

    def cache_key() -> dict:  # key() once (a task fingerprint hashes the UNet's weights)
        memo["key"] = memo.get("key") or key()
        return memo["key"]

    def sample(name: str, spec: SamplerSpec, kk: list[int]) -> dict[int, torch.Tensor]:
        """Latents at every k of kk: one run per batch (iterates / trajectory kept), ddim-k one run per k."""
        res = {k: [] for k in kk}
        for lo in tqdm(range(0, len(seeds), batch_size), desc=f"sampling {name}", disable=not progress, leave=False):
            sl = slice(lo, lo + batch_size)
            x_T = initial_latents(model, seeds[sl])
            cond = encode_prompts(model, prompts[sl]) if prompts else None
            if spec.name in K_STEPS:  # a new solver per k (dpmsolver++ / unipc: built from the model's scheduler)
                for k in kk:
                    res[k].append(load_sampler(spec.replace(k=k), model.scheduler)(fn, x_T, cond)[0])
            elif spec.name == "ddim":
                kmax = min(max(kk), T)
                traj = make_sampler(spec.replace(k=kmax), model.scheduler)(fn, x_T, cond,
                                                                           return_trajectory=True)[1].trajectory
                for k in kk:
                    res[k].append(traj[min(k, kmax)])
            else:
                kmax = min(max(kk), spec.max_iterations() or T)  # srds: exact after T calls
                st = make_sampler(spec.replace(k=kmax), model.scheduler)(fn, x_T, cond, return_iterates=True)[1]
                its = st.outputs or [X[-1] for X in st.iterates]  # a Jump's estimates where it is the output
                for k in kk:
                    res[k].append(its[min(k, len(its) - 1)])
        return {k: torch.cat(v).float() for k, v in res.items()}

    def converged():
        if "conv" not in memo:
            def compute():
                lat = sample("converged (DDIM-T)", SamplerSpec.named("ddim", num_steps=T), [T])[T]
                return {"latents": lat, "images": torch.from_numpy(decode_latents(model, lat, batch_size=batch_size))}

            c = cache.tensors("converged", {**cache_key(), "T": T}, compute, f"converged DDIM-{T}")
            memo["conv"] = c["latents"], c["images"].numpy()
        return memo["conv"]

    def decoded(spec: SamplerSpec | None, k: int | None) -> tuple[torch.Tensor, np.ndarray]:
        if spec is None:
            return converged()
        base = json.dumps({**spec.to_dict(), "k": None}, sort_keys=True)
        if memo.get("spec") != base or k not in memo["lats"]:
            memo["spec"], memo["lats"] = base, sample(spec.name, spec, sorted(set(ks) | {k}))
        return memo["lats"][k], decode_latents(model, memo["lats"][k], batch_size=batch_size)

    def score_images(spec: SamplerSpec | None, k: int | None, imgs: np.ndarray | None = None) -> np.ndarray:
        """The first ``GRID_SAMPLES`` images of ``spec`` at k (as the score decoded them), kept in the cache."""
        d = None if spec is None else spec.to_dict()
        name = "images_" + hashlib.sha256(json.dumps([d, k], sort_keys=True).encode()).hexdigest()[:16]
        return cache.tensors(name, {**cache_key(), "spec": d, "k": k}, lambda: torch.from_numpy(np.ascontiguousarray(
            (decoded(spec, k)[1] if imgs is None else imgs)[:GRID_SAMPLES])), f"grid images k={k}").numpy()

    def score(spec: SamplerSpec | None, k: int | None) -> dict:
        conv_lat, conv_img = converged()
        lat, imgs = decoded(spec, k)
        score_images(spec, k, imgs)
        row = quality(lat, imgs, conv_lat, conv_img)
        return {"score": row["fid"], **row}

    return score, score_images


def sweep_task(model, *, out, adapter=None, samplers=NAMES, ks=(1, 2, 3, 4, 5), num_samples: int = 200,
               seed: int = 0, steps: int | None = None, prompts=None, guidance: float | None = None, reference=None,
               clip=None, batch_size: int = 16, inception_batch: int = 32, progress: bool = True,
               distances_only: bool = False):
    """(Task with the image quality score, {name: SamplerSpec}, settings) of an image evaluation (module doc)
    for the generic sweep (``evaluation.sweep.run_sweep``, its cache in ``out``/runs) and report.

    Args:
        model: a model folder (``loaders.LAYOUTS``) or a loaded ``ImageModel``.
        adapter: a PCM adapter folder (needed for pcm; its T and guidance are the defaults whichever samplers run).
        samplers: names from ``NAMES`` and ``PEERS``; ks: budgets k >= 1; num_samples N; seed S (sample i: seed S + i).
        steps: T of the converged output (default: the adapter's, else 50 for ldm and 30 for sd).
        prompts: sd only, cycled over the samples; guidance: CFG scale (default: adapter.json's, else 7.5).
        reference: uint8 images ``(M, H, W, 3)``, a list of ``(H, W, 3)`` or a folder (default: the shipped
            held-out set, ``evaluate.default_reference``); resized (bicubic) to the generated size.
        clip: a local CLIP folder for CLIP score and CMMD.
        distances_only: no image quality at all (the Task's ``score`` is None: no Inception, no reference read;
            ``reference`` and ``clip`` are ignored): the sweep measures latent RMSE to DDIM-T only.
    Returns ``settings``: what the sweep records (T, N, seed, guidance, the reference, the metrics skipped and
    why, notes, the specs, the paths). Raises ValueError: bad samplers, ks, counts, prompts, reference, adapter
    or model folder.
    """
    from ..adapters import load_adapter_folder, read_adapter_config
    from ..evaluation.cache import Cache
    from .evaluate import Quality, default_reference, folder_hash, load_images
    from .loaders import LAYOUTS, load_model

    samplers, ks = list(dict.fromkeys(samplers)), sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"every k must be >= 1, got {ks}")
    eval_samplers(samplers, 1, SamplerSpec.named("pcm", num_steps=1))  # unknown names fail before loading
    seeds = seeds_for(seed, num_samples)
    if batch_size < 1 or inception_batch < 1:
        raise ValueError("batch sizes must be >= 1")
    if "pcm" in samplers and adapter is None:
        raise ValueError("the pcm sampler needs --adapter DIR (a folder with adapter.safetensors and adapter.json)")
    if guidance is not None and guidance < 0:
        raise ValueError(f"guidance must be >= 0, got {guidance}")
    if isinstance(reference, str | Path) and not distances_only:
        reference = load_images(reference)
    if not isinstance(model, ImageModel):
        model = load_model(model)
    if model.conditional and not prompts:
        raise ValueError(f"the {model.family} model at {model.path} is text-conditional: pass prompts (--prompts FILE)")
    if not model.conditional and prompts:
        raise ValueError(f"the {model.family} model at {model.path} is unconditional and takes no prompts")
    prompts = [prompts[i % len(prompts)] for i in range(num_samples)] if prompts else None
    spec, meta = None, {}
    if adapter is not None:
        adapter = Path(adapter)
        spec, meta = load_adapter_folder(model.unet, adapter) if "pcm" in samplers else read_adapter_config(adapter)
    T = steps or (spec.num_steps if spec is not None else None) or DEFAULT_STEPS[model.family]
    guidance = (guidance if guidance is not None else float(meta.get("guidance", 7.5))) if model.conditional else None
    specs, notes, skipped = eval_samplers(samplers, T, spec if "pcm" in samplers else None)
    make_sampler(SamplerSpec.named("ddim", num_steps=T), model.scheduler)  # bad T fails here

    hw = decode_latents(model, torch.zeros(1, *model.latent_shape)).shape[1:3]  # the generated image size
    task = make_task(model, num_steps=T, guidance=7.5 if guidance is None else guidance, eval_seed=seed,
                     eval_prompts=prompts, name=Path(model.path).name)
    task.key |= {"files": folder_hash(Path(model.path), LAYOUTS[model.family].components), "n": num_samples}
    settings = {"model_path": str(model.path), "adapter_path": str(adapter) if adapter else None, "T": T,
                "n": num_samples, "seed": seed, "guidance": guidance, "image_size": list(hw),
                "latent_size": list(model.latent_shape[1:]), "batch_size": batch_size, "notes": notes}
    if distances_only:  # Task without a score: the sweep measures distances only
        task.score = task.score_images = None
        return task, specs, {**settings, "distances_only": True, "skipped": {
            "image quality": "distances only (latent RMSE to DDIM-T; no FID, no reference)", **skipped}}
    reference = list(default_reference() if reference is None else reference)
    quality = Quality(reference, image_size=hw, num_samples=num_samples, conditional=model.conditional,
                      prompts=prompts, clip=clip, inception_batch=inception_batch)
    task.key["quality"] = quality.key
    task.score, task.score_images = _quality_score(
        model, task.model_fn, quality, T=T, seeds=seeds, prompts=prompts, ks=ks, batch_size=batch_size,
        cache=Cache(Path(out) / "runs"), progress=progress, key=lambda: {"task": task.fingerprint()})
    settings |= {"clip": str(clip) if clip else None,
                 "reference": {"n": quality.n_reference, "resized_to_generated_size": quality.resized,
                               "key": quality.ref_key},
                 "skipped": {"inception_score": quality.skipped["inception_score"], **skipped, **quality.skipped}}
    return task, specs, settings
