"""Picard Consistency Model sampling: Picard whose model at iteration k is switched by lambda(k).

Glossary (PCM paper, model switching; supplement Table 3, weight mixing):
  lambda(k)      mixing weight used by iteration k (0-based: iteration k maps X^k to X^{k+1}).
  weight space   W = W_0 + lambda dW: one call per position, ``lora_scale=lambda``.
  space          where lambda acts: "weight" is the core's; another space is a model-function wrapper that
                 gives ``lora_scale=lambda`` its meaning, named in ``SPACES`` (``pcm_policy.paper`` adds the
                 paper's "feature" space, mixed model outputs) and applied by ``sample_pcm`` from ``Switch.space``.
  k_on, k_off    linear ramp: lambda = 1 up to k_on, linear down to exactly 0 at k_off;
                 k_on = k_off is a hard switch (1 before, 0 from k_off on).

Exactness: the window's anchor moves only on iterations with lambda = 0, i.e. on plain base-model
Picard updates; iterations with lambda > 0 only move positions after the anchor (guesses). So the
fixed point is the base model's whatever the adapter, and with ``tol=0`` the output is sequential
sampling's. The schedule must reach 0 (checked), unless ``max_iters`` truncates the run.
k counts batched calls; windows are per sample (``picard.py``), but every sample still running has
taken part in every call since the first, so k is each running sample's own iteration count and one
lambda(k) per call (one ``lora_scale``, frozen graphs served) is right for all of them. A per-sample k
would only be needed if samples could join a run already under way, which ``picard_loop`` does not do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .ddim import Grid, draw_noise
from .denoiser import Cond, SampleStats, call_model, row_calls
from .picard import TAA, Jump, Update, paradigms_update, picard_loop

__all__ = ["SPACES", "Switch", "linear_schedule", "hard_switch", "pcm_evaluator", "sample_pcm"]

Schedule = Callable[[int], float]
_MAX_K = 100_000
# lambda's spaces by name (``Switch.space``): a model-function wrapper giving ``lora_scale`` that space's meaning, or
# None for the core's weight space (the model function's own lora_scale); ``pcm_policy.paper`` adds "feature"
SPACES: dict[str, Callable | None] = {"weight": None}


def linear_schedule(k_on: int, k_off: int) -> Schedule:
    """lambda(k) = clip(1 - (k - k_on) / (k_off - k_on), 0, 1); 0 from k_off on."""
    if not 0 <= k_on <= k_off:
        raise ValueError(f"need 0 <= k_on <= k_off, got k_on={k_on}, k_off={k_off}")

    def schedule(k: int) -> float:
        if k >= k_off:
            return 0.0
        if k <= k_on:
            return 1.0
        return 1.0 - (k - k_on) / (k_off - k_on)

    schedule.__qualname__ = f"linear_schedule({k_on}, {k_off})"
    return schedule


@dataclass(frozen=True)
class Switch:
    """A PCM model-switching schedule as a value: lambda(k) = ``linear_schedule(k_on, k_off)`` in
    ``space`` (``SPACES``; "weight": W_0 + lambda dW)."""

    k_on: int = 1
    k_off: int = 1
    space: str = "weight"

    def __post_init__(self):
        linear_schedule(self.k_on, self.k_off)  # validates
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {', '.join(sorted(SPACES))}, got {self.space!r} (the paper's "
                             "feature space is registered by importing pcm_policy.paper)")

    def __call__(self, k: int) -> float:
        return linear_schedule(self.k_on, self.k_off)(k)


def hard_switch(k_switch: int) -> Schedule:
    """lambda = 1 for the first ``k_switch`` iterations, then 0 (the adapter is switched off)."""
    return linear_schedule(k_switch, k_switch)


def pcm_evaluator(model_fn, schedule: Schedule, lambdas: list | None = None):
    """``picard_loop``'s model call for PCM and the lambda it uses: (evaluate, lam_of). Iteration k calls
    ``model_fn`` with ``lora_scale`` = lambda = schedule(k) (a space other than weight: wrap ``model_fn``,
    ``SPACES``; its cost per row is ``denoiser.row_calls``). ``lambdas``, if given, records each iteration's
    lambda. No ``no_grad`` here: the caller decides (``sample_pcm`` runs without gradients)."""
    if not callable(schedule):
        raise ValueError("schedule must be a callable k -> lambda, e.g. linear_schedule(k_on, k_off)")

    def lam_of(k: int) -> float:
        lam = float(schedule(k))
        if not lam == lam or lam in (float("inf"), float("-inf")):
            raise ValueError(f"schedule({k}) = {lam} is not finite")
        return lam

    def evaluate(x, t, c, k, lam_rows=None):
        lam = lam_of(k)
        if lambdas is not None:
            lambdas.append(lam)
        n = x.shape[0]
        if lam_rows is not None:  # the last rows are a Jump's, at their own lambda (``picard.py``)
            lam_rows = torch.cat([x.new_full((n - len(lam_rows),), lam), lam_rows.to(x)])
            if bool((lam_rows == lam_rows[0]).all()):  # one lambda for every row (the jump's rows alone, too)
                lam, lam_rows = float(lam_rows[0]), None
        scale = lam if lam_rows is None else lam_rows  # W_0 + lambda dW (per row: lambda_r), one call per position
        return call_model(model_fn, x, t, c, lora_scale=scale), row_calls(model_fn, scale)

    return evaluate, lam_of


@torch.no_grad()
def sample_pcm(model_fn, x_T: torch.Tensor, cond: Cond = None, *, grid: Grid, schedule: Schedule,
               window: int | None = None, tol: float = 0.1,
               max_iters: int | None = None, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None, init: str | torch.Tensor | None = None,
               update: Update = paradigms_update, safeguard: float | None = None, taa: TAA | None = None,
               return_iterates: bool = False, return_trajectory: bool = False,
               budget_s: float | None = None, jump: Jump | None = None) -> tuple[torch.Tensor, SampleStats]:
    """PCM: ``sample_picard`` whose model function is called with ``lora_scale`` = lambda(k).

    Args:
        model_fn: ``model_fn(x, t, cond, lora_scale=...)``; it must accept a float and, with a ``jump`` at
            lambdas other than the iterations', a per-row tensor ``(N,)`` (``pcm_policy.lora.LoraScale`` does both).
        schedule: k -> lambda, e.g. ``Switch(k_on, k_off)`` or ``linear_schedule``; must reach 0 unless
            ``max_iters`` is given. A ``Switch``'s space wraps ``model_fn`` (``SPACES``); other schedules act in
            weight space.
        taa: TAA on the base (lambda = 0) iterations; None: plain Picard updates.
        jump: the anytime estimate (``picard.Jump``): one more row per call at the jump's own lambdas (1:
            the adapter as a consistency-style jump), returned until ``jump.until`` iterations have run.
        other arguments: as in ``sample_picard``.
    Returns:
        ``(x, stats)`` as ``sample_picard``; ``stats.lambdas`` holds each iteration's lambda.
    Raises:
        ValueError: a schedule that never reaches 0 without ``max_iters``, a non-finite lambda,
            and everything ``sample_picard`` raises.
    """
    wrap = SPACES[getattr(schedule, "space", "weight")]  # lambda's space: the model function's own, or a wrapper
    model_fn = model_fn if wrap is None else wrap(model_fn)
    lambdas: list[float] = []
    evaluate, lam_of = pcm_evaluator(model_fn, schedule, lambdas)
    if max_iters is None and all(float(schedule(k)) != 0.0 for k in range(_MAX_K)):
        raise ValueError("schedule never reaches lambda = 0, so the base fixed point is never reached; "
                         "use a schedule that ends at 0 or pass max_iters")
    grid = grid.like(x_T)
    x, stats = picard_loop(evaluate, x_T, cond, grid, window=window, tol=tol, max_iters=max_iters,
                           noise_terms=draw_noise(grid, x_T, noise, generator), init=init, update=update,
                           return_iterates=return_iterates, return_trajectory=return_trajectory,
                           safeguard=safeguard, may_slide=lambda k: lam_of(k) == 0.0, taa=taa,
                           budget_s=budget_s, jump=jump)
    stats.lambdas = lambdas
    return x, stats
