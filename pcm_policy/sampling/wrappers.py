"""Wrappers around a model function (``denoiser.ModelFn``): each takes one and is one.

    ThreadPolicy            CPU intra-op threads chosen by the width of each call
    Sharded                 a call's rows split over processes / devices with torch.distributed
    ClassifierFreeGuidance  eps_u + s (eps_c - eps_u) with both halves in ONE batched call

Composition, outside in: ``Sharded`` or ``ThreadPolicy`` -> ``ClassifierFreeGuidance`` -> ``LoraScale`` (in
``pcm_policy.lora``: the core holds no peft) -> the network, e.g.
``Sharded(ClassifierFreeGuidance(LoraScale(unet_fn, unet), 7.5))``. Sharding and
threads see the rows the sampler passes; guidance doubles them below that; the LoRA scale is applied
per row of the doubled batch.

Row-aligned keywords: a tensor keyword (or condition entry, nested dicts included) with one row per
``x`` row (``shape[0] == x.shape[0]``, ndim >= 1) is row-aligned. A wrapper that changes the rows maps
it the same way: ``Sharded`` slices it, ``ClassifierFreeGuidance`` repeats it for both halves (so a
per-row ``lora_scale`` is doubled with the rows). Anything else (floats, 0-d tensors) passes through.

Sharding (SPMD): every process runs the same sampler with the same inputs and wraps its model
function in ``Sharded``. Each call's N rows are split into contiguous slices of ceil(N / world) rows;
process r evaluates slice r and ``all_gather`` puts them back in order, so every process holds the
same output and the sampler's state stays identical everywhere. gloo on CPU, nccl on GPUs.

Threads: on a small CPU a batch-1 call is latency-bound while a Picard window has enough work per
kernel to use more cores; ``ThreadPolicy`` sets ``torch.set_num_threads`` per call and restores it (not
thread-safe: the count is process-global).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from .denoiser import Cond, ModelFn

__all__ = ["ClassifierFreeGuidance", "Sharded", "ThreadPolicy", "num_threads", "row_slice",
           "row_repeat", "switch_cost_us"]


def row_slice(v, lo: int, hi: int, n: int):
    """Rows lo:hi of every row-aligned tensor in ``v`` (a tensor, a nested dict or anything else)."""
    if isinstance(v, dict):
        return {k: row_slice(u, lo, hi, n) for k, u in v.items()}
    if torch.is_tensor(v) and v.ndim > 0 and v.shape[0] == n:
        return v[lo:hi]
    return v


def row_repeat(v, n: int, times: int = 2):
    """Every row-aligned tensor in ``v`` repeated ``times`` times along dim 0 (blocks, not interleaved)."""
    if isinstance(v, dict):
        return {k: row_repeat(u, n, times) for k, u in v.items()}
    if torch.is_tensor(v) and v.ndim > 0 and v.shape[0] == n:
        return torch.cat([v] * times)
    return v


def _cat_cond(a: Cond, b: Cond) -> Cond:
    if isinstance(a, dict):
        return {k: _cat_cond(a[k], b[k]) for k in a}
    return None if a is None else torch.cat([a, b])


class ClassifierFreeGuidance:
    """Classifier-free guidance (Ho & Salimans 2022): ``out_u + scale * (out_c - out_u)``.

    The condition is ``{"cond": c, "uncond": u}`` (same structure, row-aligned: e.g. text embeddings
    ``{"encoder_hidden_states": (N, 77, 768)}`` of the prompt and of the negative prompt). Both halves go
    through ONE call of 2N rows ordered [uncond; cond], as diffusers' pipelines batch them; row-aligned
    keywords (a per-row ``lora_scale``) are repeated for both halves. ``scale <= 1`` calls the model on
    the conditional rows only (what diffusers does: no guidance).

    Raises ValueError for a condition without "cond" / "uncond" or with mismatched structure.
    """

    def __init__(self, model_fn: ModelFn, scale: float = 7.5):
        if not callable(model_fn):
            raise ValueError("model_fn must be callable")
        self.model_fn, self.scale = model_fn, float(scale)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond, **kwargs: Any) -> torch.Tensor:
        if not isinstance(cond, dict) or set(cond) != {"cond", "uncond"}:
            raise ValueError("classifier-free guidance needs cond = {'cond': ..., 'uncond': ...}")
        if self.scale <= 1.0:
            return self.model_fn(x, t, cond["cond"], **kwargs)
        n = x.shape[0]
        both = _cat_cond(cond["uncond"], cond["cond"])
        kw = {k: row_repeat(v, n) for k, v in kwargs.items()}
        out = self.model_fn(torch.cat([x, x]), torch.cat([t, t]), both, **kw)
        out_u, out_c = out[:n], out[n:]
        return out_u + self.scale * (out_c - out_u)

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance(scale={self.scale})"


class Sharded:
    """``model_fn`` evaluated on this process's slice of the rows, gathered in row order (module doc).
    Needs ``torch.distributed`` initialised; raises RuntimeError otherwise."""

    def __init__(self, model_fn, group: dist.ProcessGroup | None = None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("Sharded needs torch.distributed initialised "
                               "(dist.init_process_group('gloo' on CPU or 'nccl' on GPUs))")
        self.model_fn, self.group = model_fn, group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond, **kwargs) -> torch.Tensor:
        n = x.shape[0]
        chunk = -(-n // self.world)
        lo, hi = min(self.rank * chunk, n), min((self.rank + 1) * chunk, n)
        part = x.new_zeros((chunk, *x.shape[1:]))
        if hi > lo:
            kw = {k: row_slice(v, lo, hi, n) for k, v in kwargs.items()}
            part[: hi - lo] = self.model_fn(x[lo:hi], t[lo:hi], row_slice(cond, lo, hi, n), **kw)
        parts = [torch.empty_like(part) for _ in range(self.world)]
        dist.all_gather(parts, part.contiguous(), group=self.group)
        return torch.cat(parts)[:n]


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
    """``model_fn`` with the intra-op thread count chosen by the width of each call.

    Calls with fewer than ``switch_rows`` rows run on ``narrow_threads``, wider ones on
    ``wide_threads``; ``None`` for either means "leave the current count". The count in force
    before the call is restored afterwards (also when the denoiser raises). ``calls`` and
    ``switches`` count the calls and the calls that changed the thread count.
    """

    def __init__(self, model_fn: ModelFn, narrow_threads: int | None = 1, wide_threads: int | None = 2,
                 switch_rows: int = 4):
        if not callable(model_fn):
            raise ValueError("model_fn must be callable: model_fn(x, t, cond, **kw) -> model output")
        for name, n in (("narrow_threads", narrow_threads), ("wide_threads", wide_threads)):
            if n is not None and (not isinstance(n, int) or n < 1):
                raise ValueError(f"{name} must be an int >= 1 or None, got {n!r}")
        if not isinstance(switch_rows, int) or switch_rows < 1:
            raise ValueError(f"switch_rows must be an int >= 1, got {switch_rows!r}")
        self.model_fn = model_fn
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
            return self.model_fn(x, t, cond, **kwargs)
        self.switches += 1
        torch.set_num_threads(n)
        try:
            return self.model_fn(x, t, cond, **kwargs)
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
