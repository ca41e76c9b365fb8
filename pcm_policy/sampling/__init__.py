"""The sampler core: sequential, Picard (ParaDiGMS) with TAA, PCM model switching, Newton emulation, SRDS.

Every sampler is a function of a model function ``model_fn(x, t, cond, **kw) -> model output``
(``denoiser.py``) and a step grid (``ddim.step_grid`` of a configured diffusers DDIM/DDPM scheduler);
it returns ``(x_0, SampleStats)``. ``spec.py`` turns a ``SamplerSpec`` into a ready sampler;
``wrappers.py`` holds what goes around a model function (threads, sharding, guidance; the LoRA scale is
``pcm_policy.lora.LoraScale``). Imports torch only (tests/test_imports.py checks it).
"""

from .ddim import Grid, ddim_step, draw_noise, predicted_x0, sample_sequential, step_grid
from .denoiser import Cond, ModelFn, SampleStats, call_model, index_cond, repeat_cond
from .graphs import CudaGraphs
from .newton import sample_newton
from .pcm import SPACES, Switch, hard_switch, linear_schedule, pcm_evaluator, sample_pcm
from .picard import FORMS, INITS, TAA, Jump, initial_trajectory, picard_loop, picard_update, sample_picard
from .scheduler_loop import sample_with_scheduler
from .spec import DEFAULTS, ITERATIVE, K_STEPS, SAMPLERS, Sampler, SamplerSpec, make_sampler, spec_with
from .srds import sample_srds
from .wrappers import ClassifierFreeGuidance, Sharded, ThreadPolicy, num_threads, switch_cost_us

__all__ = [
    "DEFAULTS", "FORMS", "INITS", "ITERATIVE", "K_STEPS", "SAMPLERS", "SPACES", "TAA", "call_model",
    "ClassifierFreeGuidance", "Cond", "CudaGraphs", "ddim_step", "draw_noise", "Grid", "hard_switch", "index_cond",
    "initial_trajectory", "Jump", "linear_schedule", "make_sampler", "ModelFn", "num_threads", "pcm_evaluator",
    "picard_loop", "picard_update", "predicted_x0", "repeat_cond", "sample_newton", "sample_pcm", "sample_picard",
    "sample_sequential", "sample_srds", "sample_with_scheduler", "Sampler", "SamplerSpec", "SampleStats", "Sharded",
    "spec_with", "step_grid", "Switch", "switch_cost_us", "ThreadPolicy",
]
