"""Denoising networks for the policies."""

from pcm_policy.models.unet1d import UNET_PRESETS, ConditionalUnet1D, build_unet, count_parameters

__all__ = ["UNET_PRESETS", "ConditionalUnet1D", "build_unet", "count_parameters"]
