"""Picard Consistency Model sampling: Picard whose model at iteration k is switched by lambda(k).

Glossary (PCM paper, model switching; supplement Table 3, weight mixing):
  lambda(k)      mixing weight used by iteration k (0-based: iteration k maps X^k to X^{k+1}).
  weight space   W = W_0 + lambda dW: one call per position, ``lora_scale=lambda``.
  feature space  eps = lambda eps_pcm + (1 - lambda) eps_base: both calls batched into ONE call
                 with a per-row ``lora_scale`` tensor (1 for the first half, 0 for the second).
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
from .denoiser import Cond, SampleStats, call_model, repeat_cond
from .picard import TAA, Jump, picard_loop

__all__ = ["Switch", "linear_schedule", "hard_switch", "pcm_evaluator", "sample_pcm"]

Schedule = Callable[[int], float]
_MAX_K = 100_000


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
    ``space`` ("weight": W_0 + lambda dW; "feature": mixed model outputs)."""

    k_on: int = 1
    k_off: int = 1
    space: str = "weight"

    def __post_init__(self):
        linear_schedule(self.k_on, self.k_off)  # validates
        if self.space not in ("weight", "feature"):
            raise ValueError(f"space must be 'weight' or 'feature', got {self.space!r}")

    def __call__(self, k: int) -> float:
        return linear_schedule(self.k_on, self.k_off)(k)


def hard_switch(k_switch: int) -> Schedule:
    """lambda = 1 for the first ``k_switch`` iterations, then 0 (the adapter is switched off)."""
    return linear_schedule(k_switch, k_switch)


def pcm_evaluator(model_fn, schedule: Schedule, space: str = "weight", lambdas: list | None = None):
    """``picard_loop``'s model call for PCM and the lambda it uses: (evaluate, lam_of). Iteration k calls
    ``model_fn`` at lambda = schedule(k), in weight space (``lora_scale=lambda``) or feature space (both
    calls batched, outputs mixed). ``lambdas``, if given, records each iteration's lambda. No
    ``no_grad`` here: the caller decides (``sample_pcm`` runs without gradients)."""
    if space not in ("weight", "feature"):
        raise ValueError(f"space must be 'weight' or 'feature', got {space!r}")
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
        if lam_rows is None and (space == "weight" or lam in (0.0, 1.0)):  # W_0 + lambda dW, one call per position
            return call_model(model_fn, x, t, c, lora_scale=lam), 1
        if lam_rows is not None and (space == "weight" or bool(((lam_rows == 0) | (lam_rows == 1)).all())):
            return call_model(model_fn, x, t, c, lora_scale=lam_rows), 1  # per-row W_0 + lambda_r dW
        mix = lam_rows.view(-1, *([1] * (x.ndim - 1))) if lam_rows is not None else lam
        scale = torch.cat([x.new_ones(n), x.new_zeros(n)])  # feature space: [adapted rows; base rows] in one call
        xx, tt, cc = torch.cat([x, x]), torch.cat([t, t]), repeat_cond(c, 2)
        out = call_model(model_fn, xx, tt, cc, lora_scale=scale)
        return mix * out[:n] + (1 - mix) * out[n:], 2  # eps = lambda eps_pcm + (1 - lambda) eps_base

    return evaluate, lam_of


@torch.no_grad()
def sample_pcm(model_fn, x_T: torch.Tensor, cond: Cond = None, *, grid: Grid, schedule: Schedule,
               space: str | None = None, window: int | None = None, tol: float = 0.1,
               max_iters: int | None = None, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None, init: str | torch.Tensor | None = None,
               form: str = "paradigms", safeguard: float | None = None, taa: TAA | None = None,
               return_iterates: bool = False, return_trajectory: bool = False,
               budget_s: float | None = None, jump: Jump | None = None) -> tuple[torch.Tensor, SampleStats]:
    """PCM: ``sample_picard`` whose model function is called with ``lora_scale`` = lambda(k).

    Args:
        model_fn: ``model_fn(x, t, cond, lora_scale=...)``; it must accept a float and, for
            ``space="feature"``, a per-row tensor ``(N,)`` (``pcm_policy.lora.LoraScale`` does both).
        schedule: k -> lambda, e.g. ``Switch(k_on, k_off, space)`` or ``linear_schedule``; must reach 0
            unless ``max_iters`` is given.
        space: "weight" or "feature"; default: the schedule's own (a ``Switch``), else "weight".
        taa: TAA on the base (lambda = 0) iterations; None: plain Picard updates.
        jump: the anytime estimate (``picard.Jump``): one more row per call at the jump's own lambdas (1:
            the adapter as a consistency-style jump), returned until ``jump.until`` iterations have run.
        other arguments: as in ``sample_picard``.
    Returns:
        ``(x, stats)`` as ``sample_picard``; ``stats.lambdas`` holds each iteration's lambda.
    Raises:
        ValueError: a schedule that never reaches 0 without ``max_iters``, a non-finite lambda, bad space,
            and everything ``sample_picard`` raises.
    """
    space = space or getattr(schedule, "space", "weight")
    lambdas: list[float] = []
    evaluate, lam_of = pcm_evaluator(model_fn, schedule, space, lambdas)
    if max_iters is None and all(float(schedule(k)) != 0.0 for k in range(_MAX_K)):
        raise ValueError("schedule never reaches lambda = 0, so the base fixed point is never reached; "
                         "use a schedule that ends at 0 or pass max_iters")
    grid = grid.like(x_T)
    x, stats = picard_loop(evaluate, x_T, cond, grid, window=window, tol=tol, max_iters=max_iters,
                           noise_terms=draw_noise(grid, x_T, noise, generator), init=init, form=form,
                           return_iterates=return_iterates, return_trajectory=return_trajectory,
                           safeguard=safeguard, may_slide=lambda k: lam_of(k) == 0.0, taa=taa,
                           budget_s=budget_s, jump=jump)
    stats.lambdas = lambdas
    return x, stats
