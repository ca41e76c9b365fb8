"""Issue 23's peers on the image models: DPM-Solver++ / UniPC / SRDS in the image evaluation, and diffusers' own
StableDiffusionParadigmsPipeline against our Picard on an SD-layout folder (tiny random models of the real layout)."""

from __future__ import annotations

import pytest
import torch
from vision_helpers import assert_close, dirs, ldm_dir, sd_dir  # noqa: F401 (fixtures)

from pcm_policy.adapters import load_sampler
from pcm_policy.sampling import SamplerSpec, make_sampler
from pcm_policy.vision import encode_prompts, initial_latents, load_model, model_function
from pcm_policy.vision.task import eval_samplers

T, SEEDS, PROMPT = 10, [3, 4], "a photo of a cat"


def inputs(m):
    x_T = initial_latents(m, SEEDS)
    return x_T, (encode_prompts(m, [PROMPT] * len(SEEDS)) if m.conditional else None)


def test_eval_samplers_take_the_peers():
    specs, _, _ = eval_samplers(["dpmsolver++", "unipc", "srds", "ddim-k"], 30)
    assert specs["dpmsolver++"].k == 1 and specs["unipc"].k == 1 and specs["srds"].tol == 0.0
    assert specs["srds"].num_steps == 30
    with pytest.raises(ValueError, match="unknown sampler.*dpmsolver\\+\\+, unipc, srds"):
        eval_samplers(["dpm"], 30)


@pytest.mark.slow  # loads a diffusers pipeline
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
@pytest.mark.parametrize("name", ["dpmsolver++", "unipc"])
def test_k_step_solver_is_what_a_pipeline_user_gets(sd_dir, name):  # noqa: F811
    """The evaluation's solver (built from the model's DDIMScheduler) = StableDiffusionPipeline with the solver
    swapped in by ``from_config(pipe.scheduler.config)``, no thresholding (SD's scheduler does not clip x0)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, UniPCMultistepScheduler

    m = load_model(sd_dir)
    assert not m.scheduler.config.clip_sample
    x_T, cond = inputs(m)
    k = 4
    ours, st = load_sampler(SamplerSpec.named(name, k=k), m.scheduler)(model_function(m), x_T, cond)
    pipe = StableDiffusionPipeline.from_pretrained(sd_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    cls = {"dpmsolver++": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler}[name]
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    assert not pipe.scheduler.config.thresholding
    ref = pipe(PROMPT, num_images_per_prompt=len(SEEDS), latents=x_T.clone(), num_inference_steps=k,
               guidance_scale=7.5, output_type="latent").images
    assert st.nfe == k
    assert_close(ours, ref)


@pytest.mark.parametrize("family", ["ldm", "sd"])
def test_srds_on_image_latents_is_exact_after_T_calls(dirs, family):  # noqa: F811
    m = load_model(dirs[family])
    x_T, cond = inputs(m)
    fn = model_function(m)
    seq, _ = make_sampler("ddim", m.scheduler, num_steps=T)(fn, x_T, cond)
    x, st = make_sampler("srds", m.scheduler, num_steps=T, tol=0.0)(fn, x_T, cond, return_iterates=True)
    assert_close(x, seq)
    assert st.iterations <= T and len(st.outputs) == st.iterations + 1
    early = make_sampler("srds", m.scheduler, num_steps=T, tol=0.0, k=3)(fn, x_T, cond)[0]
    assert torch.equal(early, st.outputs[3])  # held to k calls = the k-th iterate the evaluation reads


@pytest.mark.slow  # loads two diffusers pipelines
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_paradigms_pipeline_final_alpha_defect_bites_on_sd_layout_not_ours(sd_dir):  # noqa: F811
    """SD v1.4's scheduler config (set_alpha_to_one=False): diffusers' ParaDiGMS pipeline at tolerance 0 does not
    reach its own sequential DDIM output (batch_step_no_noise ends at abar = 1); our Picard at tol 0 does."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from pcm_policy.vision.paradigms import paradigms_pipeline

    m = load_model(sd_dir)
    assert m.scheduler_config["set_alpha_to_one"] is False
    x_T, cond = inputs(m)
    seq_pipe = StableDiffusionPipeline.from_pretrained(sd_dir, local_files_only=True)
    seq_pipe.set_progress_bar_config(disable=True)
    seq_pipe.scheduler = DDIMScheduler.from_config(seq_pipe.scheduler.config)
    seq = seq_pipe(PROMPT, num_images_per_prompt=2, latents=x_T.clone(), num_inference_steps=T, guidance_scale=7.5,
                   output_type="latent").images
    pipe, counter = paradigms_pipeline(sd_dir)
    par = pipe(PROMPT, num_images_per_prompt=2, latents=x_T.clone(), num_inference_steps=T, parallel=T,
               tolerance=0.0, guidance_scale=7.5, output_type="latent").images
    ours, st = make_sampler("picard", m.scheduler, num_steps=T, tol=0.0)(model_function(m), x_T, cond)
    assert_close(ours, seq)
    assert (par - seq).abs().max() > 1e-3 * max(1.0, seq.abs().max().item())
    assert counter["calls"] >= 1 and counter["rows"] % (2 * len(SEEDS)) == 0
