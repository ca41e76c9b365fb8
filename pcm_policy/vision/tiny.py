"""Tiny randomly initialised pipelines in the two real layouts, built in code (no download).

For tests and benchmarks only: random weights say nothing about image quality. Each builder returns
the real diffusers pipeline object (``LDMPipeline`` / ``StableDiffusionPipeline``) made of tiny
components; ``save_tiny`` writes it with ``pipeline.save_pretrained`` (model_index.json included),
so the folder is loaded back through the same path as a user's copy of the real model.
The SD scheduler is saved as SD v1.4's: a PNDM config with ``clip_sample: false`` added, as in
``CompVis/stable-diffusion-v1-4/scheduler/scheduler_config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["clip_byte_tokenizer", "mid_text_unet", "save_tiny", "tiny_ldm_pipeline", "tiny_sd_pipeline"]

SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)  # + clip_sample false


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable character table (256 characters)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_byte_tokenizer(max_length: int = 77):
    """A ``CLIPTokenizer`` with a byte-level vocabulary (each byte, alone and word-final) and the two
    special tokens, no merges: 514 tokens, ids 512 (<|startoftext|>) and 513 (<|endoftext|>). Built from
    vocab.json + merges.txt files, as SD v1.4's tokenizer folder holds them."""
    import tempfile

    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": 256 + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": 512, "<|endoftext|>": 513}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_length}))
        return CLIPTokenizer.from_pretrained(tmp, local_files_only=True)


def tiny_ldm_pipeline(seed: int = 0, sample_size: int = 8):
    """An ``LDMPipeline``: UNet2DModel with attention (3 x ``sample_size``^2 latents), a VQModel
    (latent_channels 3, 2x down), a DDIMScheduler (scaled_linear 0.0015-0.0195, no clipping)."""
    from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel, VQModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=sample_size, in_channels=3, out_channels=3, block_out_channels=(32, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8)
    vqvae = VQModel(in_channels=3, out_channels=3, block_out_channels=(16, 32), latent_channels=3,
                    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                    num_vq_embeddings=32, vq_embed_dim=3, norm_num_groups=8, sample_size=2 * sample_size)
    sched = DDIMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear", clip_sample=False)
    return LDMPipeline(vqvae=vqvae, unet=unet, scheduler=sched)


def tiny_sd_pipeline(seed: int = 0, sample_size: int = 8, cross_attention_dim: int = 32):
    """A ``StableDiffusionPipeline``: UNet2DConditionModel with self- and cross-attention (4 x
    ``sample_size``^2 latents), an AutoencoderKL (2x down), a 2-layer CLIPTextModel, the byte-level
    tokenizer, SD v1.4's PNDM scheduler config; no safety checker."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=2 * sample_size)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=514, hidden_size=cross_attention_dim, intermediate_size=37,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                        bos_token_id=512, eos_token_id=513, pad_token_id=513))
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=clip_byte_tokenizer(), unet=unet,
                                   scheduler=PNDMScheduler(**SD_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def save_tiny(family: str, folder: str | Path, seed: int = 0) -> Path:
    """Build the tiny ``family`` ("ldm" | "sd") pipeline and ``save_pretrained`` it to ``folder``."""
    if family not in ("ldm", "sd"):
        raise ValueError(f"family must be 'ldm' or 'sd', got {family!r}")
    folder = Path(folder)
    pipe = tiny_ldm_pipeline(seed) if family == "ldm" else tiny_sd_pipeline(seed)
    pipe.save_pretrained(folder)
    if family == "sd":  # SD v1.4's scheduler_config.json carries clip_sample: false (PNDM does not take it)
        cfg_path = folder / "scheduler" / "scheduler_config.json"
        cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "clip_sample": False}, indent=2))
    return folder


def mid_text_unet(seed: int = 0, sample_size: int = 32, cross_attention_dim: int = 256):
    """A mid-sized random ``UNet2DConditionModel`` (SD's block pattern at 1/5 of its width) for benchmarks."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, block_out_channels=(64, 128, 256, 256),
        layers_per_block=2, cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3).eval()
