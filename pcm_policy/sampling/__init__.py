"""The sampler core: sequential, Picard (ParaDiGMS), PCM model switching and Newton emulation.

Every sampler is a function of a denoiser ``denoise(x, t, cond, **kw) -> eps`` (``denoiser.py``)
and a configured diffusers DDIM/DDPM scheduler, read for its noise schedule only; it returns
``(x_0, SampleStats)``. Imports torch only.
"""

from .ddim import Grid, ddim_step, draw_noise, make_grid, sample_sequential
from .denoiser import Denoiser, SampleStats, repeat_cond
from .newton import sample_newton
from .pcm import hard_switch, linear_schedule, pcm_evaluator, sample_pcm, schedule_kwargs
from .picard import INITS, initial_trajectory, picard_loop, picard_update, sample_picard
from .scheduler_loop import sample_with_scheduler
from .threads import ThreadPolicy, num_threads, switch_cost_us

__all__ = [
    "INITS", "Denoiser", "Grid", "SampleStats", "ThreadPolicy", "ddim_step", "draw_noise", "hard_switch",
    "initial_trajectory", "linear_schedule", "make_grid", "num_threads", "pcm_evaluator", "picard_loop",
    "picard_update", "repeat_cond", "sample_newton", "sample_pcm", "sample_picard", "sample_sequential",
    "sample_with_scheduler", "schedule_kwargs", "switch_cost_us",
]
