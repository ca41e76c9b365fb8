"""Model functions for diffusers' 2-D UNets: one adapter per model family (as k-diffusion's ``external.py``).

Each adapter turns a UNet into the sampler protocol ``model_fn(x, t, cond, **kw) -> model output``
(``pcm_policy.sampling.denoiser``):

    UNetFn      ``UNet2DModel`` (pixel or latent space, unconditional: cond is None)
    TextUNetFn  ``UNet2DConditionModel``; cond = {"encoder_hidden_states": (N, seq, D)}

``model_function`` composes the wrappers of the core, outside in: classifier-free guidance (sd only;
one UNet call of 2N rows [uncond; cond], as ``StableDiffusionPipeline`` batches them) -> ``LoraScale``
(PCM's lambda, float or per row) -> the adapter. The UNet may run in float16/bfloat16; its output
is returned in ``x``'s dtype (float32), so guidance and the trajectory stay float32.

LoRA (docs/vision.md): ``add_attention_lora`` puts adapters on every attention projection
``to_q``, ``to_k``, ``to_v``, ``to_out.0`` of both families (self- and cross-attention) through
``pcm_policy.lora.add_lora`` (peft's ``inject_adapter_in_model``: ``UNet2DModel`` has no
``add_adapter``). Projections see (B, seq, C) tensors with the batch first, so the per-row scale
hook of ``pcm_policy.lora`` scales each row's adapter branch.
"""

from __future__ import annotations

import torch

from .. import lora
from ..lora import LoraScale
from ..sampling import ClassifierFreeGuidance
from ..sampling.denoiser import Cond, ModelFn
from .loaders import ImageModel

__all__ = ["ATTENTION_TARGETS", "TextUNetFn", "UNetFn", "add_attention_lora", "model_function"]

ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def _dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


class UNetFn:
    """``UNet2DModel`` as a model function: ``unet(x, t).sample``; cond must be None.

    Args (call): x ``(N, C, h, w)``, t ``(N,)`` long, cond None. Returns ``(N, C, h, w)`` in x's dtype.
    Raises ValueError for a condition (the model is unconditional).
    """

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond = None, **kw) -> torch.Tensor:
        if cond is not None:
            raise ValueError("this UNet2DModel is unconditional: pass cond=None (no prompt)")
        return self.unet(x.to(_dtype(self.unet)), t, return_dict=False)[0].to(x.dtype)


class TextUNetFn:
    """``UNet2DConditionModel`` as a model function: ``unet(x, t, encoder_hidden_states=e).sample``.

    Args (call): x ``(N, C, h, w)``, t ``(N,)`` long, cond ``{"encoder_hidden_states": (N, seq, D)}``
    (``processor.encode_prompts`` gives one per guidance half). Returns ``(N, C, h, w)`` in x's dtype.
    Raises ValueError for a condition without ``encoder_hidden_states``.
    """

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond, **kw) -> torch.Tensor:
        if not isinstance(cond, dict) or "encoder_hidden_states" not in cond:
            raise ValueError("a UNet2DConditionModel needs cond = {'encoder_hidden_states': (N, seq, D)}")
        dtype = _dtype(self.unet)
        e = cond["encoder_hidden_states"].to(dtype)
        return self.unet(x.to(dtype), t, encoder_hidden_states=e, return_dict=False)[0].to(x.dtype)


def model_function(model: ImageModel, guidance_scale: float = 7.5) -> ModelFn:
    """The sampler-ready model function of ``model``: [CFG ->] LoraScale -> UNet adapter.

    Args:
        model: an ``ImageModel`` (``loaders.load_model``).
        guidance_scale: classifier-free guidance s (sd only; ``eps_u + s (eps_c - eps_u)``); s <= 1
            calls the conditional rows alone, as diffusers does.
    Returns:
        ``model_fn(x, t, cond, lora_scale=None)``; for sd, cond = ``{"cond": {...}, "uncond": {...}}``.
    """
    if model.conditional:
        return ClassifierFreeGuidance(LoraScale(TextUNetFn(model.unet), model.unet), guidance_scale)
    return LoraScale(UNetFn(model.unet), model.unet)


def add_attention_lora(unet: torch.nn.Module, rank: int = 4, alpha: float | None = None,
                       extra_targets: list[str] | None = None) -> torch.nn.Module:
    """LoRA (rank ``rank``, scale ``alpha / rank``; alpha defaults to rank) on every attention
    projection of a diffusers UNet, base weights frozen; in place, returned. ``extra_targets``: more module
    names (peft suffix matching, e.g. the ResNet blocks' ``conv1``, ``conv2``, ``time_emb_proj``). Raises
    ValueError if the UNet has no attention or already has adapters."""
    return lora.add_lora(unet, rank=rank, alpha=float(alpha if alpha is not None else rank),
                         target_modules=[*ATTENTION_TARGETS, *(extra_targets or [])])
