"""Sharding a window's model calls over 2 CPU processes (gloo) gives the single-process output."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from diffusers import DDIMScheduler
from torch import nn

from pcm_policy import paper  # noqa: F401  (registers the feature space that run() mixes in)
from pcm_policy.sampling import Sharded, Switch, sample_pcm, sample_picard, step_grid

T = 10


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.base, self.delta = nn.Linear(16 + 1 + 3, 16), nn.Linear(16 + 1 + 3, 16)

    def forward(self, x, t, cond, lora_scale=None):
        h = torch.cat([x.flatten(1), t.float()[:, None] / 100, cond["obs"]], 1)
        out = torch.tanh(self.base(h))
        if lora_scale is not None:
            s = lora_scale.view(-1, 1) if torch.is_tensor(lora_scale) else lora_scale
            out = out + s * self.delta(h)
        return out.view_as(x)


def run(denoise):
    g = torch.Generator().manual_seed(0)
    x_T, cond = torch.randn(3, 8, 2, generator=g), {"obs": torch.randn(3, 3, generator=g)}
    sched = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    kw = dict(grid=step_grid(sched, T))
    x1, s1 = sample_picard(denoise, x_T, cond, window=7, tol=0.0, **kw)
    x2, s2 = sample_pcm(denoise, x_T, cond, schedule=Switch(1, 3, "feature"), tol=0.0, **kw)
    return x1, x2, s1.iterations, s2.iterations


def _worker(rank: int, world: int, init_file: str, out_file: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = run(Sharded(Net()))
        torch.save(result, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_equals_single_process(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, str(tmp_path / "rendezvous"), str(tmp_path / "out")), nprocs=world)
    x1, x2, k1, k2 = run(Net())
    for rank in range(world):
        y1, y2, j1, j2 = torch.load(tmp_path / f"out.{rank}")
        assert (j1, j2) == (k1, k2)
        assert torch.allclose(y1, x1, atol=1e-6, rtol=0) and torch.allclose(y2, x2, atol=1e-6, rtol=0)
    assert math.isfinite(x1.abs().max().item())


def test_needs_an_initialised_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        Sharded(Net())
