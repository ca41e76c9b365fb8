"""diffusers' multistep solvers (DPM-Solver++ 2M, UniPC) configured for a DDIM/DDPM-trained model's schedule.

A user who swaps a diffusion policy's DDIM for DPM-Solver++ or UniPC builds the solver from the model's own
scheduler config (same betas, training timesteps, prediction type, timestep spacing). What the config does
not carry over is the model's x0 clip: a policy trained with ``clip_sample`` (PushT: |x0| <= 1) is sampled
by DDIM with its predicted x0 clipped, while DPM-Solver++ and UniPC ignore ``clip_sample`` and only offer
dynamic thresholding (Imagen, Saharia et al. 2022): per sample s = quantile(|x0|, ``dynamic_thresholding_ratio``)
clamped to [1, ``sample_max_value``], then x0 <- clamp(x0, -s, s) / s. With ``sample_max_value`` = 1 the
clamp pins s = 1 whatever the ratio, so ``thresholding=True, sample_max_value=1`` IS the fixed clip to [-1, 1]
(``clip_sample_range`` 1); for another range thresholding cannot express the clip (s varies per sample
and x0 is rescaled), so it is refused. Measured on PushT (``docs``/issue 23): without it DPM-Solver++
diverges (its x0 leaves the action range and compounds through the multistep history).

Kept out of ``pcm_policy.sampling``, which never imports diffusers: build the solver here and hand it to
``make_sampler(..., solver_scheduler=...)``, or call ``make_any_sampler``.
"""

from __future__ import annotations

__all__ = ["SOLVERS", "make_any_sampler", "solver_scheduler"]

SOLVERS = ("dpmsolver++", "unipc")
_SHARED = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
           "timestep_spacing", "steps_offset")


def solver_scheduler(name: str, scheduler, *, clip: bool = True, timestep_spacing: str | None = None,
                     solver_order: int = 2, **overrides):
    """A fresh DPMSolverMultistepScheduler (``dpmsolver++``: algorithm dpmsolver++, 2M by default) or
    UniPCMultistepScheduler (``unipc``: bh2, x0 prediction) on ``scheduler``'s schedule.

    Args:
        name: one of ``SOLVERS``.
        scheduler: the model's configured diffusers DDIM/DDPM scheduler (read: its ``config``).
        clip: reproduce the model's ``clip_sample`` as ``thresholding=True, sample_max_value=1`` (module doc);
            False: no thresholding (what ``from_config`` alone gives).
        timestep_spacing: override the config's spacing (leading / trailing / linspace); None: keep it.
        solver_order: the multistep order (1: DPM-Solver++ 1 is DDIM on the same timesteps).
        overrides: further constructor arguments of the diffusers class.
    Raises:
        ValueError: an unknown name, or ``clip_sample`` with a range other than 1 (module doc).
    """
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
    cfg = dict(scheduler.config)
    kw = {k: cfg[k] for k in _SHARED if k in cfg}
    if timestep_spacing is not None:
        kw["timestep_spacing"] = timestep_spacing
    if clip and cfg.get("clip_sample", False):
        r = float(cfg.get("clip_sample_range", 1.0))
        if r != 1.0:
            raise ValueError(f"clip_sample_range {r} cannot be reproduced by diffusers' thresholding (it pins s = 1 "
                             "only with sample_max_value = 1); pass clip=False to run without it")
        kw.update(thresholding=True, sample_max_value=1.0)
    kw.update(solver_order=solver_order, **overrides)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler(**{"algorithm_type": "dpmsolver++", **kw})
    return UniPCMultistepScheduler(**kw)


def make_any_sampler(spec, scheduler, *, solver_kw: dict | None = None, **overrides):
    """``make_sampler(spec, scheduler, **overrides)`` with, for ``dpmsolver++`` / ``unipc``, the solver scheduler
    built by ``solver_scheduler(name, scheduler, **solver_kw)``. ``spec``: a ``SamplerSpec`` or a name."""
    from .sampling import make_sampler

    name = spec if isinstance(spec, str) else spec.name
    solver = solver_scheduler(name, scheduler, **(solver_kw or {})) if name in SOLVERS else None
    return make_sampler(spec, scheduler, solver_scheduler=solver, **overrides)
