"""CPU thread settings per denoiser call: narrow calls on few threads, wide Picard windows on more.

On a small CPU a batch-1 UNet call is latency-bound (many tiny kernels; a second thread mostly adds
synchronisation), while a Picard window (one call with ``window * B`` rows) has enough work per
kernel to use more cores. ``ThreadPolicy`` picks the thread count from the number of rows of each
call and restores the previous count afterwards, so sequential sampling keeps its batch-1 setting
and Picard/PCM windows get the wide one:

    denoise = ThreadPolicy(policy.denoise, narrow_threads=1, wide_threads=2, switch_rows=4)
    x0, stats = sample_picard(denoise, x_T, cond, scheduler=..., num_steps=50, window=50, tol=0.1)

It only changes ``torch.set_num_threads`` (intra-op threads); the output is the wrapped denoiser's
(up to float reduction order under a different thread count) and keyword arguments such as
``lora_scale`` pass through. A switch costs a ``set_num_threads`` pair per wide call (measured by
``switch_cost_us``; ``scripts/bench_samplers.py`` reports it). Not thread-safe: the thread count is
process-global, so do not share one wrapper between Python threads calling it concurrently.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .denoiser import Cond, Denoiser

__all__ = ["ThreadPolicy", "num_threads", "switch_cost_us"]


@contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` and restore the previous count, even on an
    exception. ``None`` (or the current count) changes nothing."""
    prev = torch.get_num_threads()
    if n is None or n == prev:
        yield
        return
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


class ThreadPolicy:
    """``denoise`` with the intra-op thread count chosen by the width of each call.

    Calls with fewer than ``switch_rows`` rows run on ``narrow_threads``, wider ones on
    ``wide_threads``; ``None`` for either means "leave the current count". The count in force
    before the call is restored afterwards (also when the denoiser raises). ``calls`` and
    ``switches`` count the calls and the calls that changed the thread count.
    """

    def __init__(self, denoise: Denoiser, narrow_threads: int | None = 1, wide_threads: int | None = 2,
                 switch_rows: int = 4):
        if not callable(denoise):
            raise ValueError("denoise must be callable: denoise(x, t, cond, **kw) -> eps")
        for name, n in (("narrow_threads", narrow_threads), ("wide_threads", wide_threads)):
            if n is not None and (not isinstance(n, int) or n < 1):
                raise ValueError(f"{name} must be an int >= 1 or None, got {n!r}")
        if not isinstance(switch_rows, int) or switch_rows < 1:
            raise ValueError(f"switch_rows must be an int >= 1, got {switch_rows!r}")
        self.denoise = denoise
        self.narrow_threads, self.wide_threads, self.switch_rows = narrow_threads, wide_threads, switch_rows
        self.calls = self.switches = 0

    def threads_for(self, rows: int) -> int | None:
        """Thread count used for a call with ``rows`` rows (None: the current count)."""
        return self.wide_threads if rows >= self.switch_rows else self.narrow_threads

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond, **kwargs: Any) -> torch.Tensor:
        n = self.threads_for(x.shape[0])
        prev = torch.get_num_threads()
        self.calls += 1
        if n is None or n == prev:
            return self.denoise(x, t, cond, **kwargs)
        self.switches += 1
        torch.set_num_threads(n)
        try:
            return self.denoise(x, t, cond, **kwargs)
        finally:
            torch.set_num_threads(prev)

    def __repr__(self) -> str:
        return (f"ThreadPolicy(narrow_threads={self.narrow_threads}, wide_threads={self.wide_threads}, "
                f"switch_rows={self.switch_rows})")


def switch_cost_us(a: int = 1, b: int = 2, n: int = 200) -> float:
    """Median wall time, in microseconds, of one ``set_num_threads(b); set_num_threads(a)`` pair
    (what a wide call through ``ThreadPolicy`` adds, not counting the thread pool's wake-up inside
    the next parallel kernel, which only a timed model call shows). Restores the thread count."""
    prev = torch.get_num_threads()
    times = []
    try:
        torch.set_num_threads(a)
        for _ in range(n):
            t0 = time.perf_counter()
            torch.set_num_threads(b)
            torch.set_num_threads(a)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(prev)
    times.sort()
    return times[len(times) // 2] * 1e6
