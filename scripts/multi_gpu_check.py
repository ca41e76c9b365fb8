"""Multi-GPU check of ``pcm_policy.sampling.wrappers.Sharded``: sharded Picard == one device, and its latency.

Run on a machine with N GPUs (nccl, one process per GPU):

    torchrun --standalone --nproc_per_node=N scripts/multi_gpu_check.py --out multi_gpu.json

or, as a dry run on CPU (gloo): ``torchrun --standalone --nproc_per_node=2 scripts/multi_gpu_check.py --cpu``.
With fewer GPUs than processes, process r uses GPU r mod N; nccl refuses two processes on one GPU, so
such runs need ``--backend gloo`` (gloo gathers the GPU tensors through host memory): a check of the
sharding on real GPU tensors, not a speed-up.

Every process builds the same randomly initialised UNet and inputs. Rank 0 also samples on its own
device without sharding (the reference). Printed by rank 0 as JSON: the largest difference between
the sharded and single-device outputs (sequential DDIM and full-window Picard), and median latencies
of sequential DDIM, single-device Picard and sharded Picard.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist
from diffusers import DDIMScheduler

from pcm_policy.device import pick_device
from pcm_policy.io import write_text
from pcm_policy.pusht.unet1d import build_unet
from pcm_policy.sampling import Sharded, sample_picard, sample_sequential, step_grid


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="gloo on CPU instead of nccl on GPUs")
    p.add_argument("--backend", choices=("nccl", "gloo"), help="default: gloo with --cpu, else nccl")
    p.add_argument("--size", default="medium")
    p.add_argument("--num-steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tol", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out")
    a = p.parse_args()

    backend = a.backend or ("gloo" if a.cpu else "nccl")
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if a.cpu:
        device = torch.device("cpu")
        torch.set_num_threads(1)
    else:
        device = pick_device(f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}")
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    model = build_unet(a.size).to(device).eval()
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(a.batch, 16, 2, generator=g).to(device)
    cond = torch.randn(a.batch, model.global_cond_dim, generator=g).to(device)
    sched = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    kw = dict(grid=step_grid(sched, a.num_steps))

    def plain(x, t, c):
        return model(x, t, c)

    sharded = Sharded(plain)

    with torch.no_grad():
        def picard(den):
            return lambda: sample_picard(den, x_T, cond, tol=a.tol, **kw)

        def sequential(den):
            return lambda: sample_sequential(den, x_T, cond, **kw)

        (x_sh, st_sh), ms_sh = timed(picard(sharded), a.repeats, device)
        (x_seq_sh, _), _ = timed(sequential(sharded), 1, device)
        if rank == 0:  # the single-device reference
            (x_seq, _), ms_seq = timed(sequential(plain), a.repeats, device)
            (x_pic, st), ms_pic = timed(picard(plain), a.repeats, device)
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
            result = {
                "world_size": world, "backend": backend, "device": name,
                "gpus_visible": torch.cuda.device_count() if device.type == "cuda" else 0,
                "unet": a.size, "num_steps": a.num_steps, "batch": a.batch, "tol": a.tol,
                "max_abs_diff_sharded_vs_single": {"picard": float((x_sh - x_pic).abs().max()),
                                                   "sequential": float((x_seq_sh - x_seq).abs().max())},
                "iterations": {"single": st.iterations, "sharded": st_sh.iterations},
                "median_ms": {"sequential_1dev": ms_seq, "picard_1dev": ms_pic, f"picard_{world}dev": ms_sh},
            }
            text = json.dumps(result, indent=2)
            print(text, flush=True)
            if a.out:
                write_text(a.out, text)
    dist.barrier()
    dist.destroy_process_group()


def timed(fn, repeats, device):
    ms, out = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ms.append((time.perf_counter() - t0) * 1e3)
    return out, round(statistics.median(ms), 2)


if __name__ == "__main__":
    main()
