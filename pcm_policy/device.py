"""Pick the torch device of a script's ``--device`` option, with full-precision GPU arithmetic."""

from __future__ import annotations

import torch

__all__ = ["pick_device", "synchronize"]


def pick_device(name: str = "cpu") -> torch.device:
    """``torch.device(name)``; for CUDA, checks that a GPU is visible and turns TF32 off (convolutions
    and matmuls in true float32), so GPU results differ from CPU ones only by float32 rounding."""
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r} ({e}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: torch sees no CUDA GPU (torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    elif device.type != "cpu":
        raise ValueError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU), so wall-clock timings include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
