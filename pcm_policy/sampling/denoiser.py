"""The model-function protocol every sampler is written against, and the statistics a sampler returns.

A model function is any callable ``model_fn(x, t, cond, **kw) -> model output``:

- ``x``: ``(N, ...)`` samples, one per row;
- ``t``: ``LongTensor (N,)`` training timesteps, one per row (rows of a Picard window differ);
- ``cond``: a tensor batched along dim 0, a (possibly nested) dict of such tensors, or ``None``; the
  sampler repeats it for the rows of a window, so the model sees exactly one condition row per ``x`` row;
- ``lora_scale`` (PCM samplers only): a float, or a tensor ``(N,)`` with one scale per row. The
  sampler knows nothing about peft; the wrapper that owns the adapter interprets the scale
  (``W = W_0 + lora_scale * dW``).

The output has the shape of ``x`` and is whatever the scheduler's ``prediction_type`` names
(epsilon, sample or v_prediction): a diffusers UNet's output, not a k-diffusion "denoiser" (which
returns x0). Wrappers that change how the model is called (threads, sharding, classifier-free
guidance, LoRA scale) are in ``wrappers.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

Cond = torch.Tensor | dict[str, 'Cond'] | None

__all__ = ["Cond", "ModelFn", "SampleStats", "call_model", "check_cond", "index_cond", "repeat_cond", "row_calls"]


class ModelFn(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond, **kwargs: Any) -> torch.Tensor: ...


@dataclass
class SampleStats:
    """What a sampler did.

    iterations: sequential steps of the batch (one batched model call each, whatever its width); for
        an iterative sampler, the iterations of its slowest sample.
    nfe: model evaluations per sample (rows passed to the denoiser / batch size, so only the rows
        actually evaluated, times ``row_calls``: 2 for a row the paper's feature-space mixing evaluates twice); a
        Newton JVP counts 1.
    sample_iterations, sample_nfe, sample_converged: iterative samplers, per sample (row of x_T): the
        batched calls it took part in, its rows evaluated (x calls per row), whether it converged
        (Picard/PCM samples leave the batch as they converge, ``picard.py``).
    out_of_budget: the time budget (``budget_s``) stopped the sampler before every sample converged.
    residuals: per iteration, the largest scaled change of a window position,
        ``max_j max_b ||x_j^{k+1} - x_j^k|| / sqrt(d sigma_j^2)`` (in units of ``tol``).
    iterates: with ``return_iterates``, ``[X^0, X^1, ..., X^K]``, each ``(T+1, B, ...)``.
    outputs: Picard/PCM with ``return_iterates``: what the sampler would return after 0, 1, ..., K
        iterations, each ``(B, ...)``: X^k[T], or a ``Jump``'s estimate while it is the output.
    trajectory: with ``return_trajectory``, the final ``(T+1, B, ...)`` trajectory.
    converged: False when ``max_iters``, ``budget_s`` (or ``truncate``) stopped the sampler first.
    clamped: (position, sample) pairs changed by the iterate safeguard, summed over iterations.
    cold_restarts: Picard/PCM: samples whose iterate turned non-finite and that were re-solved from a cold first
        iterate (``picard.picard_loop``); their iterations and NFE include both solves.
    lambdas: PCM only, the LoRA scale used at each iteration.
    """

    iterations: int = 0
    nfe: float = 0
    sample_iterations: list[int] | None = None
    sample_nfe: list[float] | None = None
    sample_converged: list[bool] | None = None
    out_of_budget: bool = False
    residuals: list[float] = field(default_factory=list)
    iterates: list[torch.Tensor] | None = None
    outputs: list[torch.Tensor] | None = None
    trajectory: torch.Tensor | None = None
    converged: bool = True
    clamped: int = 0
    cold_restarts: int = 0
    lambdas: list[float] | None = None


def check_cond(cond: Cond, batch: int) -> None:
    """Raise a ValueError unless every tensor of ``cond`` (nested dicts included) has ``batch`` rows."""
    items = cond.items() if isinstance(cond, dict) else [("cond", cond)] if cond is not None else []
    for name, c in items:
        if isinstance(c, dict):
            check_cond(c, batch)
            continue
        if not torch.is_tensor(c) or c.ndim == 0 or c.shape[0] != batch:
            shape = tuple(c.shape) if torch.is_tensor(c) else type(c).__name__
            raise ValueError(f"{name} must be a tensor batched along dim 0 with {batch} rows "
                             f"(one per sample of x_T), got {shape}")


def index_cond(cond: Cond, idx) -> Cond:
    """Rows ``idx`` (an index, slice or index tensor) of every tensor in ``cond`` (None stays None)."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: index_cond(v, idx) for k, v in cond.items()}
    return cond[idx]


def repeat_cond(cond: Cond, n: int) -> Cond:
    """Stack ``n`` copies of ``cond`` along dim 0 (rows ordered position-major, like the window)."""
    if cond is None or n == 1:
        return cond
    if isinstance(cond, dict):
        return {k: repeat_cond(v, n) for k, v in cond.items()}
    return cond.repeat(n, *([1] * (cond.ndim - 1)))


def call_model(model_fn: ModelFn, x: torch.Tensor, t: torch.Tensor, cond: Cond, **kw) -> torch.Tensor:
    """``model_fn(x, t, cond, **kw)`` with a shape check on its output, returned in ``x``'s dtype (a model
    may run in float16/bfloat16; the trajectory stays in ``x``'s dtype)."""
    out = model_fn(x, t, cond, **kw)
    if not torch.is_tensor(out) or out.shape != x.shape:
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ValueError(f"the model function must return a tensor shaped like x {tuple(x.shape)}, got {got}")
    return out.to(x.dtype)


def row_calls(model_fn: ModelFn, lora_scale=None) -> int:
    """Network evaluations one row of a call at ``lora_scale`` costs (``SampleStats.nfe``): 1, or the model
    function's own ``row_calls(lora_scale)`` where it has one (a wrapper that evaluates more than one network per
    row, e.g. ``pcm_policy.paper.FeatureMix``)."""
    count = getattr(model_fn, "row_calls", None)
    return 1 if count is None else int(count(lora_scale))
