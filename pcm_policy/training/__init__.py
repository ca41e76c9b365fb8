"""One training loop with swappable losses; EMA."""

from .ema import EMA, ema_decay
from .loop import LoopConfig, cosine_with_warmup, infinite_batches, train

__all__ = ["EMA", "LoopConfig", "cosine_with_warmup", "ema_decay", "infinite_batches", "train"]
