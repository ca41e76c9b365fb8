"""The drop-in: one call makes a lerobot DiffusionPolicy sample its action chunks with any sampler of the core.

    handle = accelerate(policy, "taa", tol=0.1)          # or a SamplerSpec, or a PCM adapter folder
    action = policy.select_action(observation)            # lerobot's own call, now Picard + TAA
    accelerate(policy, None)                              # (or handle.restore()): lerobot's own sampler again

The one hook: the policy's ``policy.diffusion.conditional_sample`` is replaced ON THE INSTANCE (an attribute
of that ``DiffusionModel`` object; the class and every other policy are untouched). lerobot 0.6.1 reaches it
from every inference path: ``select_action`` -> ``predict_action_chunk`` -> ``DiffusionModel.generate_actions``,
which computes the global conditioning once per chunk and calls ``self.conditional_sample(batch_size,
global_cond=..., noise=...)``. So lerobot's evaluation loop (``lerobot-eval``'s ``rollout``), recording and the
async inference server run unchanged: observation queues, normalisation (its processors), ``n_action_steps``
slicing and the action queue stay lerobot's. Restoring deletes the instance attribute, so the class method is
found again (and removes a LoRA adapter the drop-in attached).

Randomness: the replacement draws x_T exactly as ``conditional_sample`` does (``noise`` if the caller passed
one, else ``randn`` from its generator: torch's global RNG under ``select_action``) and DDPM's step noise where
diffusers' ``DDPMScheduler.step`` would draw it (``LerobotDiffusion.draw_step_noise``), so with ``tol=0`` a
Picard / TAA / PCM sampler on the policy's own grid gives lerobot's own actions on the same seed, and the RNG
is left where lerobot leaves it (later chunks and episodes draw the same numbers too). Each chunk is sampled
from scratch, as lerobot does (no warm start across chunks). A PCM adapter folder runs on the grid it was
trained on (DDIM, the Task's reference): on a DDPM policy pass ``solver="own"`` to converge to lerobot's own
DDPM actions instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import adapters, lora
from ..sampling import SAMPLERS, SamplerSpec, SampleStats, spec_with
from .adapter import LerobotDiffusion

__all__ = ["HOOK", "Accelerated", "accelerate"]

HOOK = "conditional_sample"  # the one attribute replaced, on ``policy.diffusion`` (module doc)
_HANDLE = "_pcm_accelerated"


class Accelerated:
    """What ``accelerate`` installed on one policy: the sampler, the adapter view of the policy and the last
    chunk's statistics. ``restore()`` (or leaving a ``with`` block) gives the policy its own sampler back.

    Attributes:
        policy: the lerobot DiffusionPolicy.
        adapter: ``LerobotDiffusion`` of it (model function, grid, noise as lerobot draws it).
        sampler: the core ``Sampler`` every chunk is sampled with; ``spec`` its ``SamplerSpec``.
        last_stats: ``SampleStats`` of the latest chunk (None before the first); ``chunks``: chunks sampled;
            ``calls``: batched model calls over those chunks (``calls / chunks``: calls a chunk).
    """

    def __init__(self, adapter: LerobotDiffusion, spec: SamplerSpec, solver: str, budget_s: float | None,
                 owns_lora: bool):
        self.adapter, self.policy, self.spec = adapter, adapter.policy, spec
        self.sampler = adapter.sampler(spec, solver=solver)
        self.budget_s, self._owns_lora = budget_s, owns_lora
        self.last_stats: SampleStats | None = None
        self.chunks = self.calls = 0

    @torch.no_grad()
    def conditional_sample(self, batch_size: int, global_cond: torch.Tensor | None = None,
                           generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """lerobot's ``DiffusionModel.conditional_sample`` signature and output ``(B, horizon, action_dim)``
        (normalised actions), sampled with ``self.sampler``."""
        a = self.adapter
        x_T = noise if noise is not None else a.draw_x_T(batch_size, generator)
        kw = {} if self.budget_s is None else {"budget_s": self.budget_s}
        x, self.last_stats = a.sample(self.sampler, global_cond, x_T=x_T, generator=generator, **kw)
        self.chunks += 1
        self.calls += self.last_stats.iterations
        return x

    @property
    def active(self) -> bool:
        return getattr(self.policy.diffusion, _HANDLE, None) is self

    def restore(self) -> None:
        """Give the policy lerobot's own ``conditional_sample`` back (and drop the LoRA adapter the drop-in
        attached, so the UNet is the base network object again). Idempotent."""
        if not self.active:
            return
        d = self.policy.diffusion
        del d.conditional_sample  # the instance attribute: the class method is found again
        del d._pcm_accelerated
        if self._owns_lora:
            lora.remove_lora(self.adapter.network)

    def __enter__(self) -> Accelerated:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def __repr__(self) -> str:
        return f"Accelerated({self.spec.label()}, active={self.active})"


def _adapter_folder(value) -> Path | None:
    if isinstance(value, (str, os.PathLike)) and not (isinstance(value, str) and value in SAMPLERS):
        path = Path(value)
        if not path.is_dir():
            raise ValueError(f"{value!r} is neither a sampler name ({', '.join(SAMPLERS)}) nor a PCM adapter folder")
        return path
    return None


def accelerate(policy, spec_or_adapter: SamplerSpec | str | os.PathLike | None, *, solver: str | None = None,
               budget_s: float | None = None, **overrides) -> Accelerated | None:
    """Make ``policy`` (a lerobot ``DiffusionPolicy``) sample every action chunk with a sampler of the core.

    Args:
        policy: the lerobot policy, used in place (``select_action``, ``predict_action_chunk``).
        spec_or_adapter: a ``SamplerSpec``; a sampler name (T = the policy's own inference steps,
            ``overrides`` such as ``tol=0.1``, ``k=4`` applied); a PCM adapter folder (``adapter.safetensors`` +
            ``adapter.json``: its LoRA goes on the policy's UNet and its own spec is used, ``overrides`` applied);
            or None: restore lerobot's own sampler (returns None).
        solver: the grid of the trajectory samplers (``LerobotDiffusion.sampler``): "own" keeps the policy's
            DDPM / DDIM, so tol 0 gives lerobot's own actions; "ddim" solves DDIM on its schedule. Default: "own"
            for a spec or name; for an adapter folder the grid it was trained on (``adapter.json``'s "solver",
            "ddim" when absent: the Task's reference trajectory is DDIM, ``pcm_policy.task.Task.grid``).
        budget_s: a time budget per chunk in seconds (iterative samplers, ``picard.py``); None: none.
    Returns:
        the ``Accelerated`` handle (``restore()``, ``last_stats``); a policy accelerated before is restored
        first, so calls do not stack.
    Raises:
        PolicyFolderError: ``policy`` is not a lerobot DiffusionPolicy. ValueError: a bad spec, name or folder,
        or a pcm spec without an adapter. ImportError: lerobot is missing.
    """
    adapter = LerobotDiffusion(policy)
    previous = getattr(policy.diffusion, _HANDLE, None)
    if previous is not None:
        previous.restore()
    if spec_or_adapter is None:
        return None
    folder, owns_lora = _adapter_folder(spec_or_adapter), False
    if folder is not None:
        if lora.has_lora(adapter.network):
            raise ValueError("the policy's UNet already carries a LoRA adapter; pass a SamplerSpec to use it, or "
                             "a fresh policy with the adapter folder")
        spec, cfg = adapters.load_adapter_folder(adapter.network, folder)
        spec, owns_lora = spec_with(spec, **overrides), True  # the one override rule (sampling.spec_with)
        solver = solver or cfg.get("solver", "ddim")
    else:
        spec = adapter.spec(spec_or_adapter, **overrides)
        solver = solver or "own"
    try:
        lams = [spec.switch(k) for k in range(spec.switch.k_off + 1)] if spec.switch is not None else []
        if (any(lams) or spec.jump is not None and any(spec.jump.lambdas)) and not lora.has_lora(adapter.network):
            raise ValueError(f"{spec.label()} uses a LoRA adapter (lambda > 0) and the policy has none; pass a PCM "
                             f"adapter folder (train one with scripts/train_pct.py task=lerobot)")
        handle = Accelerated(adapter, spec, solver, budget_s, owns_lora)
    except Exception:
        if owns_lora:
            lora.remove_lora(adapter.network)
        raise
    d = policy.diffusion
    d.conditional_sample = handle.conditional_sample  # THE hook (module doc)
    d._pcm_accelerated = handle
    return handle
