"""diffusers' own ``StableDiffusionParadigmsPipeline`` against our Picard / TAA / PCM on an SD-layout folder.

The pipeline (ParaDiGMS, Shih et al. NeurIPS 2023; diffusers' deprecated ``stable_diffusion_variants``) runs as
a user runs it: ``from_pretrained(folder)`` and ``DDIMParallelScheduler.from_config(pipe.scheduler.config)`` (SD
v1.4's config: ``set_alpha_to_one=False``, ``steps_offset=1``, leading spacing), the same prompts, guidance and
x_T (``latents=``) as ours, ``output_type="latent"``. Its model calls are counted by a forward hook on its UNet
(one batched call per hook; rows / (2 B) = evaluations per sample under CFG). Ours run on the folder's
``DDIMScheduler`` (``loaders.load_model``), the sequential reference being DDIM-T through the core (=
``StableDiffusionPipeline`` with DDIM, ``tests/test_vision_pipelines.py``).

The two define tolerance differently (the pipeline: batch-wide window, squared error over its variance; ours
per sample), so each method's runs over a grid of tolerances are compared at a matched final distance to
sequential (latent RMSE): for each ParaDiGMS tolerance, each of ours at its cheapest tol within that distance
(``paradigms_ref.cheapest_within``). Where the final-alpha defect bites (``paradigms_ref`` module doc), the
pipeline's fixed point is not sequential DDIM's: its tol-0 distance is the floor it cannot go under.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..evaluation.paradigms_ref import cheapest_within
from ..sampling import SamplerSpec, make_sampler
from .loaders import ImageModel
from .models import model_function
from .processor import encode_prompts, initial_latents
from .task import latent_rmse

__all__ = ["paradigms_pipeline", "compare_paradigms"]


def paradigms_pipeline(folder):
    """(pipe, counter) of diffusers' StableDiffusionParadigmsPipeline on ``folder`` with a DDIMParallelScheduler
    from its scheduler config; ``counter`` = {"calls", "rows"}, counted on every UNet forward. Raises
    ImportError when the installed diffusers has no such pipeline."""
    from diffusers import DDIMParallelScheduler, StableDiffusionParadigmsPipeline

    pipe = StableDiffusionParadigmsPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None,
                                                            requires_safety_checker=False)
    pipe.scheduler = DDIMParallelScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    counter = {"calls": 0, "rows": 0}

    def hook(_m, args, _kw):
        counter["calls"] += 1
        counter["rows"] += int(args[0].shape[0])

    pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    return pipe, counter


@torch.no_grad()
def compare_paradigms(model: ImageModel, *, prompts: list[str], seeds: list[int], num_steps: int = 30,
                      guidance: float = 7.5, parallel: int | None = None, paradigms_tols=(0.2, 0.1, 0.05, 0.02, 0.0),
                      ours_tols=(0.4, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001), pcm_spec=None,
                      progress=print) -> dict:
    """Every method's runs (latent RMSE to sequential DDIM-T, mean and max; batched calls; calls per sample; NFE
    per sample; wall seconds) and, per ParaDiGMS tolerance, each of ours at its cheapest tol within that distance.

    Args:
        model: an SD-layout ``ImageModel`` (its ``path`` is loaded again by the pipeline; with ``pcm_spec``
            the adapter is already attached to ``model.unet``, which the pipeline does not share).
        prompts, seeds: one sample each (same length); sample i: prompt i, x_T of seed i (the pipeline's draw).
        parallel: the pipeline's window (default T, as ours); ``pcm_spec``: PCM's spec (None: no PCM row).
    Raises ValueError for mismatched prompts / seeds or an unconditional model.
    """
    if not model.conditional or len(prompts) != len(seeds) or not seeds:
        raise ValueError("compare_paradigms needs an SD-layout (text-conditional) model and one prompt per seed")
    T, p = num_steps, parallel or num_steps
    fn = model_function(model, guidance)
    x_T = initial_latents(model, seeds)
    cond = encode_prompts(model, prompts)
    ref, _ = make_sampler("ddim", model.scheduler, num_steps=T)(fn, x_T, cond)

    def row(x, wall, **kw):
        d = latent_rmse(x.float(), ref)
        return {"distance": float(d.mean()), "max_distance": float(d.max()), "wall_s": wall, **kw}

    pipe, counter = paradigms_pipeline(model.path)
    runs = {"paradigms": []}
    for tol in paradigms_tols:
        counter.update(calls=0, rows=0)
        t0 = time.perf_counter()
        x = pipe(prompts, num_inference_steps=T, parallel=p, tolerance=tol, guidance_scale=guidance,
                 latents=x_T.clone(), output_type="latent").images
        wall = time.perf_counter() - t0
        nfe = counter["rows"] / (2 * len(seeds) if guidance > 1 else len(seeds))
        runs["paradigms"].append(row(x, wall, tol=tol, iterations=counter["calls"],
                                     mean_sample_iterations=float(counter["calls"]), nfe=nfe))
        progress(f"paradigms tol {tol:g}: {runs['paradigms'][-1]}")
    specs = {"picard": SamplerSpec.named("picard", num_steps=T), "taa": SamplerSpec.named("taa", num_steps=T)}
    if pcm_spec is not None:
        specs["pcm"] = pcm_spec.replace(num_steps=T, k=None)
    for name, spec in specs.items():
        runs[name] = []
        for tol in ours_tols:
            t0 = time.perf_counter()
            x, st = make_sampler(spec.replace(tol=tol, window=p if p < T else None), model.scheduler)(fn, x_T, cond)
            runs[name].append(row(x, time.perf_counter() - t0, tol=tol, iterations=int(st.iterations),
                                  mean_sample_iterations=float(np.mean(st.sample_iterations or [st.iterations])),
                                  nfe=float(st.nfe)))
        progress(f"{name}: " + ", ".join(f"tol {r['tol']:g} -> {r['distance']:.4f} / {r['iterations']}"
                                         for r in runs[name]))
    matched = [{"paradigms": r, **{m: cheapest_within(runs[m], r["distance"]) for m in specs}}
               for r in runs["paradigms"]]
    return {"settings": {"model": str(model.path), "T": T, "parallel": p, "guidance": guidance, "seeds": list(seeds),
                         "prompts": list(prompts), "distance_unit": "latent RMSE to sequential DDIM-T",
                         "paradigms_scheduler": dict(pipe.scheduler.config),
                         "pcm_spec": pcm_spec.to_dict() if pcm_spec is not None else None},
            "runs": runs, "matched": matched}
