"""Pick the torch device of a script's ``--device`` option, with full-precision GPU arithmetic; thread counts."""

from __future__ import annotations

import os
import sys

import torch

__all__ = ["MAX_THREADS", "available_cores", "check_threads", "pick_device", "synchronize"]

MAX_THREADS = 1024  # above this a thread count is a typo: torch would start that many threads per pool


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def check_threads(n, flag: str = "--threads") -> int:
    """The intra-op thread count to use for a requested ``n``: ValueError (naming ``flag``) unless
    1 <= n <= ``MAX_THREADS``; more than ``available_cores()`` is capped there, with a note on stderr (extra
    threads only contend for the same cores). Call it before ``torch.set_num_threads``."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_THREADS:
        raise ValueError(f"{flag} must be an integer in 1..{MAX_THREADS} (this machine has {available_cores()} "
                         f"core(s) for this process), got {n!r}")
    cores = available_cores()
    if n > cores:
        print(f"note: {flag} {n} capped at {cores}, the cores this process may use", file=sys.stderr)
        return cores
    return n


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
