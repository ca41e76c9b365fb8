"""Inputs and outputs of image sampling, exactly as diffusers' pipelines make them.

    encode_prompts   prompts -> text embeddings (``StableDiffusionPipeline.encode_prompt``, no clip_skip)
    initial_latents  seeds -> x_T (``randn_tensor`` with one CPU generator per sample, times
                     ``init_noise_sigma``: ``LDMPipeline.__call__`` / ``StableDiffusionPipeline.prepare_latents``)
    decode_latents   latents -> uint8 images (``LDMPipeline``'s vqvae decode / SD's vae decode, then
                     ``(x / 2 + 0.5).clamp(0, 1)`` and ``numpy_to_pil``'s ``round(x * 255)``)

Same seed, same image (docs/vision.md): sample i is drawn from ``torch.Generator("cpu")`` seeded
``seed + i``, so it does not depend on the batch it is drawn in, and a pipeline called with the list of
those generators draws the same x_T. Latents are drawn in float32 (the pipelines draw them in the text
encoder's dtype: float32 unless the text encoder itself is cast).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .loaders import ImageModel

__all__ = ["decode_latents", "encode_prompts", "initial_latents", "seeds_for", "to_uint8"]


def seeds_for(seed: int, n: int) -> list[int]:
    """The generator seeds of samples 0..n-1: ``seed + i``. Raises ValueError for n < 1 or a seed outside
    0..2**64 - 1 (what ``torch.Generator.manual_seed`` takes) for any sample."""
    if n < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")
    if not 0 <= seed <= 2**64 - n:
        raise ValueError(f"seed must be in 0..{2**64 - n} (sample i uses seed + i, at most 2**64 - 1), got {seed}")
    return [seed + i for i in range(n)]


def initial_latents(model: ImageModel, seeds: Sequence[int], device: str | torch.device = "cpu") -> torch.Tensor:
    """x_T for each seed, as the pipelines draw it from ``[Generator().manual_seed(s) for s in seeds]``.

    Args:
        model: gives the latent shape (UNet ``in_channels`` x ``sample_size``) and ``init_noise_sigma``.
        seeds: one seed per sample.
    Returns:
        ``(N, C, h, w)`` float32 on ``device``.
    """
    shape = (1, *model.latent_shape)
    x = torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s)), dtype=torch.float32)
                   for s in seeds])  # diffusers.utils.torch_utils.randn_tensor with a generator list
    return (x * model.scheduler.init_noise_sigma).to(device)


@torch.no_grad()
def encode_prompts(model: ImageModel, prompts: Sequence[str], negative_prompt: str | Sequence[str] = "") -> dict:
    """Text embeddings for classifier-free guidance, as ``StableDiffusionPipeline.encode_prompt``.

    Each prompt is tokenized padded/truncated to ``tokenizer.model_max_length`` and encoded by the
    text encoder (its last hidden state). Distinct strings are encoded once; prompts and negative
    prompts in separate calls, as the pipeline does.

    Args:
        model: a text-conditional ``ImageModel``.
        prompts: one prompt per sample (N).
        negative_prompt: the unconditional prompt, one string for all or one per sample ("" default).
    Returns:
        ``{"cond": {"encoder_hidden_states": (N, L, D)}, "uncond": {"encoder_hidden_states": (N, L, D)}}``
        in the text encoder's dtype, for ``ClassifierFreeGuidance``.
    Raises:
        ValueError: an unconditional model, no prompts, or a negative prompt list of another length.
    """
    if not model.conditional:
        raise ValueError(f"this {model.family} model is unconditional and takes no prompt")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("need at least one prompt")
    negs = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negs) != len(prompts):
        raise ValueError(f"got {len(negs)} negative prompts for {len(prompts)} prompts")
    device = next(model.text_encoder.parameters()).device

    def embed(ps):  # distinct strings once, in one call (a single prompt: the pipeline's own batch of 1)
        unique = list(dict.fromkeys(ps))
        tok = model.tokenizer(unique, padding="max_length", max_length=model.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt")
        emb = model.text_encoder(tok.input_ids.to(device))[0]
        rows = torch.tensor([unique.index(p) for p in ps], device=device)
        return {"encoder_hidden_states": emb[rows]}

    return {"cond": embed(prompts), "uncond": embed(negs)}


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Decoder output in [-1, 1] ``(N, 3, H, W)`` -> ``(N, H, W, 3)`` uint8, as the pipelines' postprocess."""
    x = (images / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
    return (x * 255).round().astype(np.uint8)


@torch.no_grad()
def decode_latents(model: ImageModel, latents: torch.Tensor, *, batch_size: int | None = None,
                   scaling_factor: float | None = None) -> np.ndarray:
    """Latents -> uint8 images, as ``LDMPipeline`` (vqvae decode, quantising) / ``StableDiffusionPipeline``.

    Both pipelines divide by the autoencoder's ``config.scaling_factor`` first. Note: the real
    ldm-celebahq-256 vqvae config has no scaling_factor, so diffusers' default 0.18215 applies and
    ``LDMPipeline`` output looks wrong (diffusers issue #6725); pass ``scaling_factor=1.0`` to decode as
    the original LDM code does. Default: the pipeline's behaviour.

    Args:
        latents: ``(N, C, h, w)``.
        batch_size: decode this many at a time (default: all).
    Returns:
        ``(N, H, W, 3)`` uint8.
    """
    ae = model.autoencoder
    sf = ae.config.scaling_factor if scaling_factor is None else scaling_factor
    dtype, device = next(ae.parameters()).dtype, next(ae.parameters()).device
    step = batch_size or len(latents)
    out = [to_uint8(ae.decode((latents[i:i + step] / sf).to(device, dtype)).sample)
           for i in range(0, len(latents), step)]
    return np.concatenate(out)
