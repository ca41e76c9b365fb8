"""Same seed, same prompt, same steps: sequential sampling through the core reproduces diffusers' own
LDMPipeline and StableDiffusionPipeline (DDIM eta 0; DPM-Solver through the scheduler's own step)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vision_helpers import assert_close, dirs, ldm_dir, sd_dir  # noqa: F401 (fixtures)

from pcm_policy.sampling import make_sampler, sample_sequential, sample_with_scheduler, step_grid
from pcm_policy.vision import decode_latents, encode_prompts, initial_latents, load_model, model_function, seeds_for

T, SEEDS, PROMPT = 10, [3, 4], "a photo of a cat"


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def ldm_pipeline(path, scheduler=None):
    """The real LDMPipeline; it always decodes, so ``run`` also returns the latents its vqvae receives."""
    from diffusers import LDMPipeline

    pipe = LDMPipeline.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    if scheduler is not None:
        pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    seen, decode = {}, pipe.vqvae.decode

    def spy(z, *a, **kw):
        seen["z"] = z * pipe.vqvae.config.scaling_factor  # LDMPipeline divides by it just before decoding
        return decode(z, *a, **kw)

    pipe.vqvae.decode = spy

    def run(seeds, steps=T):
        images = pipe(batch_size=len(seeds), generator=generators(seeds), num_inference_steps=steps,
                      eta=0.0, output_type="np").images
        return seen["z"], images

    return run


def sd_pipeline(path, scheduler_cls=None):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = (scheduler_cls or DDIMScheduler).from_config(pipe.scheduler.config)

    def run(seeds, steps=T, output_type="latent", negative_prompt=None, guidance=7.5):
        return pipe(PROMPT, negative_prompt=negative_prompt, num_images_per_prompt=len(seeds),
                    generator=generators(seeds), num_inference_steps=steps, guidance_scale=guidance,
                    output_type=output_type).images

    return run


def pipeline_uint8(images_np):
    return (images_np * 255).round().astype(np.uint8)  # diffusers' numpy_to_pil


def test_ldm_sequential_ddim_equals_ldm_pipeline(ldm_dir):  # noqa: F811
    m = load_model(ldm_dir)
    x, _ = sample_sequential(model_function(m), initial_latents(m, SEEDS), None, grid=step_grid(m.scheduler, T))
    ref, images = ldm_pipeline(ldm_dir)(SEEDS)
    assert_close(x, ref)
    assert np.array_equal(decode_latents(m, x), pipeline_uint8(images))


@pytest.mark.parametrize("guidance,negative", [(7.5, None), (7.5, "blurry"), (1.0, None)])
def test_sd_sequential_ddim_equals_sd_pipeline(sd_dir, guidance, negative):  # noqa: F811
    m = load_model(sd_dir)
    cond = encode_prompts(m, [PROMPT] * len(SEEDS), negative or "")
    x, _ = sample_sequential(model_function(m, guidance), initial_latents(m, SEEDS), cond,
                             grid=step_grid(m.scheduler, T))
    run = sd_pipeline(sd_dir)
    assert_close(x, run(SEEDS, negative_prompt=negative, guidance=guidance))
    if negative is None and guidance > 1:
        assert np.array_equal(decode_latents(m, x), pipeline_uint8(run(SEEDS, output_type="np")))


def test_encode_prompts_equals_pipeline_encode_prompt(sd_dir):  # noqa: F811
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd_dir, local_files_only=True)
    pos, neg = pipe.encode_prompt([PROMPT, "a dog"], "cpu", 1, True, ["", "ugly"])
    cond = encode_prompts(load_model(sd_dir), [PROMPT, "a dog"], ["", "ugly"])
    assert torch.equal(cond["cond"]["encoder_hidden_states"], pos)
    assert torch.equal(cond["uncond"]["encoder_hidden_states"], neg)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
@pytest.mark.parametrize("family", ["ldm", "sd"])
def test_dpmsolver_equals_pipeline_with_dpmsolver(dirs, family):  # noqa: F811
    from diffusers import DPMSolverMultistepScheduler

    m = load_model(dirs[family])
    x_T = initial_latents(m, SEEDS)
    cond = encode_prompts(m, [PROMPT] * len(SEEDS)) if m.conditional else None
    solver = DPMSolverMultistepScheduler.from_config(m.scheduler_config)
    x, stats = sample_with_scheduler(model_function(m), x_T, cond, scheduler=solver, num_steps=T)
    if family == "ldm":
        ref = ldm_pipeline(dirs[family], DPMSolverMultistepScheduler)(SEEDS)[0]
    else:
        ref = sd_pipeline(dirs[family], DPMSolverMultistepScheduler)(SEEDS)
    assert stats.nfe == T
    assert_close(x, ref)
    via_spec, _ = make_sampler("dpmsolver", m.scheduler, solver_scheduler=solver, num_steps=T)(
        model_function(m), x_T, cond)
    assert torch.equal(via_spec, x)


def test_seeds_are_per_sample_not_per_batch(ldm_dir):  # noqa: F811
    m = load_model(ldm_dir)
    x = initial_latents(m, seeds_for(5, 3))
    assert torch.equal(x[1:2], initial_latents(m, [6]))
    assert x.dtype == torch.float32 and x.shape == (3, 3, 8, 8)
    with pytest.raises(ValueError, match=">= 1"):
        seeds_for(0, 0)
    assert seeds_for(2**64 - 2, 2) == [2**64 - 2, 2**64 - 1]  # torch.Generator's whole range
    initial_latents(m, seeds_for(2**64 - 1, 1))
    for seed in (-1, 2**64 - 1, 10**30):  # a huge --seed: one line naming the range, not an overflow traceback
        with pytest.raises(ValueError, match=r"seed must be in 0\.\.18446744073709551614"):
            seeds_for(seed, 2)
