"""Shard a window's model calls over processes / devices with ``torch.distributed``.

SPMD: every process runs the same sampler with the same inputs (same ``x_T``, noise and
condition) and wraps its denoiser in ``ShardedDenoiser``. Each call's N rows (a Picard window is
p positions x B samples) are split into contiguous slices of ceil(N / world) rows; process r
evaluates slice r and ``all_gather`` puts the slices back in order, so every process holds the same
full output and the sampler's state stays identical everywhere. Works with any sampler of this
package (sequential calls simply leave most processes idle). Backends: gloo on CPU, nccl on GPUs
(each process on its own device, tensors on that device).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .denoiser import Cond

__all__ = ["ShardedDenoiser"]


def _rows(v, lo: int, hi: int, n: int):
    if isinstance(v, dict):
        return {k: _rows(u, lo, hi, n) for k, u in v.items()}
    if torch.is_tensor(v) and v.ndim > 0 and v.shape[0] == n:
        return v[lo:hi]
    return v


class ShardedDenoiser:
    """``denoise`` evaluated on this process's slice of the rows, gathered in row order."""

    def __init__(self, denoise, group: dist.ProcessGroup | None = None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("ShardedDenoiser needs torch.distributed initialised "
                               "(dist.init_process_group('gloo' on CPU or 'nccl' on GPUs))")
        self.denoise, self.group = denoise, group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond, **kwargs) -> torch.Tensor:
        n = x.shape[0]
        chunk = -(-n // self.world)
        lo, hi = min(self.rank * chunk, n), min((self.rank + 1) * chunk, n)
        part = x.new_zeros((chunk, *x.shape[1:]))
        if hi > lo:
            kw = {k: _rows(v, lo, hi, n) for k, v in kwargs.items()}
            part[: hi - lo] = self.denoise(x[lo:hi], t[lo:hi], _rows(cond, lo, hi, n), **kw)
        parts = [torch.empty_like(part) for _ in range(self.world)]
        dist.all_gather(parts, part.contiguous(), group=self.group)
        return torch.cat(parts)[:n]
