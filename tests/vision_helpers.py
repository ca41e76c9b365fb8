"""Fixtures and checks shared by the tests/test_vision_*.py files: tiny random models of both real
layouts, saved with ``pipeline.save_pretrained`` and loaded back through ``pcm_policy.vision``."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from pcm_policy.vision import add_attention_lora  # noqa: E402
from pcm_policy.vision.tiny import save_tiny  # noqa: E402


@pytest.fixture(scope="session")
def ldm_dir(tmp_path_factory):
    return save_tiny("ldm", tmp_path_factory.mktemp("tiny") / "ldm")


@pytest.fixture(scope="session")
def sd_dir(tmp_path_factory):
    return save_tiny("sd", tmp_path_factory.mktemp("tiny") / "sd")


@pytest.fixture(scope="session")
def dirs(ldm_dir, sd_dir):
    return {"ldm": ldm_dir, "sd": sd_dir}


def assert_close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    """max |a - b| <= rel * max(1, max |b|): 1e-5 on the scale of the latents (random UNets make large ones)."""
    scale = max(1.0, b.abs().max().item())
    err = (a - b).abs().max().item()
    assert err <= rel * scale, f"max abs difference {err:.3g} > {rel:g} x {scale:.3g}"


def with_random_lora(model, seed: int = 1, std: float = 0.05):
    """Attention LoRA with random nonzero weights on ``model.unet`` (in place); returns the model."""
    add_attention_lora(model.unet, rank=4)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.unet.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model
