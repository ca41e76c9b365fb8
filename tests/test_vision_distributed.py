"""Sharding a window's UNet calls over 2 CPU processes (gloo) reproduces the single-process latents of an
image model: Sharded -> classifier-free guidance -> LoRA scale -> UNet2DConditionModel."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from vision_helpers import assert_close, sd_dir, with_random_lora  # noqa: F401 (fixtures)

from pcm_policy import paper  # noqa: F401  (registers the feature space the test mixes in)
from pcm_policy.sampling import Sharded, Switch, sample_pcm, sample_picard, step_grid
from pcm_policy.vision import encode_prompts, initial_latents, load_model, model_function

T = 6


def run(path, sharded: bool):
    m = with_random_lora(load_model(path))
    fn = model_function(m, 7.5)
    fn = Sharded(fn) if sharded else fn
    x_T, cond, grid = initial_latents(m, [0, 1, 2]), encode_prompts(m, ["a cat"] * 3), step_grid(m.scheduler, T)
    x1, s1 = sample_picard(fn, x_T, cond, grid=grid, window=5, tol=0.0)  # 15 rows: uneven split
    x2, s2 = sample_pcm(fn, x_T, cond, grid=grid, schedule=Switch(1, 2, "feature"), tol=0.0)
    return x1, x2, s1.iterations, s2.iterations


def _worker(rank: int, world: int, path: str, init_file: str, out_file: str):
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(run(path, sharded=True), f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_image_model_equals_single_process(sd_dir, tmp_path):  # noqa: F811
    world = 2
    mp.spawn(_worker, args=(world, str(sd_dir), str(tmp_path / "rendezvous"), str(tmp_path / "out")), nprocs=world)
    x1, x2, k1, k2 = run(sd_dir, sharded=False)
    for rank in range(world):
        y1, y2, j1, j2 = torch.load(tmp_path / f"out.{rank}")
        assert (j1, j2) == (k1, k2)
        assert_close(y1, x1)
        assert_close(y2, x2)
