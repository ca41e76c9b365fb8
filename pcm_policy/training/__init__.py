"""One training loop with swappable losses; EMA."""

from .ema import EMA, ema_decay
from .loop import (
    BatchStream,
    Interrupted,
    LoopConfig,
    ResumeError,
    cosine_with_warmup,
    hold_run_folder,
    infinite_batches,
    train,
)

__all__ = ["EMA", "BatchStream", "Interrupted", "LoopConfig", "ResumeError", "cosine_with_warmup", "ema_decay",
           "hold_run_folder", "infinite_batches", "train"]
