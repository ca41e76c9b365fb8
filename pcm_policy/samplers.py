"""Named samplers for a policy: one place that maps a user's choice onto ``pcm_policy.sampling``.

Every sampler returned here has the signature ``sampler(denoise, x_T, cond) -> (x_0, stats)`` and
solves the policy's own DDPM noise schedule (``scheduler``) with DDIM (eta = 0) unless named ddpm.

    ddim      sequential DDIM over ``num_steps`` (50); with ``k``, truncated after k steps (the
              paper's "Sequential" at equal k)
    ddim-k    DDIM re-discretised to k steps (a different, coarser solver)
    ddpm      sequential ancestral DDPM over all training timesteps (the reference's sampler)
    picard    ParaDiGMS Picard iteration over the ``num_steps``-step DDIM trajectory
    taa       the same Picard iteration with ParaTAA's triangular Anderson acceleration (memory
              ``anderson``, 3; weighted, damped: ``sampling.picard``), the "prior" first iterate and the iterate
              safeguard (kappa 1), unless ``init`` / ``safeguard`` say otherwise; training-free
    pcm       Picard with model switching: LoRA scale lambda(k) from ``schedule``
    newton    Newton emulation with JVPs (a reference curve, not a fast sampler)

``k`` caps the number of sequential steps (iterations); None runs to tolerance ``tol``.
"""

from __future__ import annotations

from functools import partial

from .sampling import linear_schedule, sample_newton, sample_pcm, sample_picard, sample_sequential

SAMPLERS = ("ddim", "ddim-k", "ddpm", "picard", "taa", "pcm", "newton")
# TAA's defaults: memory 3 (among ParaTAA's recommended 2-5) and the safeguard, chosen like PCM's schedule: the
# smallest k to 1 px, then the distance there, on the 200 held-out training-seed conditions of the PCT store
ANDERSON, TAA_SAFEGUARD = 3, 1.0


def make_sampler(name: str, scheduler, *, num_steps: int = 50, k: int | None = None, tol: float = 0.1,
                 window: int | None = None, schedule=None, space: str = "weight", init=None,
                 safeguard: float | None = None, anderson: int | None = None):
    """A ready-to-call sampler. ``schedule`` is a callable k -> lambda (default: hard switch after
    one adapted iteration, ``linear_schedule(1, 1)``); PCM needs a policy with an adapter loaded.
    ``anderson``: TAA memory (default: ``ANDERSON`` for taa, 0 = plain Picard updates for pcm);
    ``safeguard``: iterate safeguard kappa (default: ``TAA_SAFEGUARD`` for taa, off for the others)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    n_train = scheduler.config.num_train_timesteps
    if not 1 <= num_steps <= n_train:
        raise ValueError(f"num_steps (DDIM steps T) must be in 1..{n_train} (the policy's training timesteps), "
                         f"got {num_steps}")
    if k is not None and k < 1:
        raise ValueError(f"k (the iteration budget) must be >= 1, got {k}")
    limit = {"ddim": num_steps, "ddim-k": n_train, "ddpm": n_train}.get(name)
    if k is not None and limit is not None and k > limit:
        what = "the training timesteps" if name == "ddim-k" else "the steps it truncates"
        raise ValueError(f"k must be in 1..{limit} for {name} ({what}), got {k}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if name == "ddim":
        return partial(sample_sequential, scheduler=scheduler, num_steps=num_steps, truncate=k, solver="ddim")
    if name == "ddim-k":
        if k is None:
            raise ValueError("ddim-k needs k, the number of re-discretised DDIM steps")
        return partial(sample_sequential, scheduler=scheduler, num_steps=k, solver="ddim")
    if name == "ddpm":
        steps = scheduler.config.num_train_timesteps
        return partial(sample_sequential, scheduler=scheduler, num_steps=steps, truncate=k, solver="ddpm")
    common = dict(scheduler=scheduler, num_steps=num_steps, tol=tol, max_iters=k, solver="ddim", init=init)
    if name == "newton":
        return partial(sample_newton, **common)
    if name == "picard":
        return partial(sample_picard, window=window, safeguard=safeguard, **common)
    if name == "taa":
        common["init"] = "prior" if init is None else init
        return partial(sample_picard, window=window, safeguard=TAA_SAFEGUARD if safeguard is None else safeguard,
                       anderson=ANDERSON if anderson is None else anderson, **common)
    return partial(sample_pcm, window=window, safeguard=safeguard, space=space,
                   schedule=schedule or linear_schedule(1, 1), anderson=anderson or 0, **common)
