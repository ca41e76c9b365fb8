"""What one Picard iteration costs next to one sequential step, on this machine (``scripts/vision/bench_window.py``).

A sequential DDIM step is one model call on B rows plus the step; a Picard iteration at window p is
ONE call on p*B rows (CFG doubles both inside the model function) plus the cumulative-sum update
(ParaDiGMS Alg. 1). Picard pays off when ``ratio = ms(window p) / ms(sequential step)`` stays well
below p: with k iterations instead of T steps, the wall-clock speed-up is about T / (k * ratio). All
calls are timed interleaved, repeat by repeat, in one process (side by side), and the median is kept.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence

import torch

from ..evaluation.latency import time_interleaved
from ..sampling import Grid, ddim_step, picard_update, repeat_cond
from ..sampling.denoiser import Cond, call_model

__all__ = ["bench_window", "time_interleaved"]  # time_interleaved: re-exported from evaluation.latency


@torch.no_grad()
def bench_window(model_fn, x_T: torch.Tensor, cond: Cond, grid: Grid, windows: Sequence[int], repeats: int = 3,
                 warmup: int = 1) -> dict:
    """ms per sequential step vs one Picard iteration at each window, for one model.

    Args:
        model_fn: a sampler-protocol model function (CFG inside it doubles every call).
        x_T: ``(B, ...)``; cond: its condition (B rows).
        grid: the step grid (``step_grid``); windows above T are capped at T.
        windows: window sizes p.
    Returns:
        ``{"batch": B, "num_steps": T, "ms": {"sequential": ms, "window=p": ms, ...} (medians), "ms_min",
        "ratio": {"window=p": ms / sequential ms}, "break_even_iterations": {"window=p": T / ratio}}``:
        Picard at window p beats sequential when it needs fewer than ``T / ratio`` iterations.
    """
    grid = grid.like(x_T)
    B, T = x_T.shape[0], len(grid)
    idx0 = torch.zeros(B, dtype=torch.long)

    def sequential():
        return ddim_step(grid, x_T, call_model(model_fn, x_T, grid.timesteps[idx0], cond), idx0)

    def picard(p):
        xs = x_T.expand(p, *x_T.shape).contiguous()  # X[0:p], one window
        t = grid.timesteps[:p].repeat_interleave(B)
        out = call_model(model_fn, xs.flatten(0, 1), t, repeat_cond(cond, p))
        return picard_update(grid, xs, out, 0, x_T)

    ps = sorted({min(p, T) for p in windows})
    calls = {"sequential": sequential} | {f"window={p}": (lambda p=p: picard(p)) for p in ps}
    times = time_interleaved(calls, repeats, warmup)
    ms = {k: statistics.median(v) for k, v in times.items()}
    ratio = {k: v / ms["sequential"] for k, v in ms.items() if k != "sequential"}
    return {"batch": B, "num_steps": T, "ms": ms, "ms_min": {k: min(v) for k, v in times.items()}, "ratio": ratio,
            "break_even_iterations": {k: T / r for k, r in ratio.items()}}


def bench_models(windows: Sequence[int] = (4, 8, 16), repeats: int = 3, batch: int = 1, mid_size: int = 16,
                 guidance: float = 7.5, progress: bool = True) -> dict:
    """``bench_window`` for the tiny LDM (T = 50, the paper's LDM-CelebA T), the tiny SD and a mid-sized
    random ``UNet2DConditionModel`` (T = 30, SD v1.4's; CFG doubling), windows ``windows`` and T.

    Random weights: only the timings mean something. Returns ``{name: bench_window result + "params"}``
    plus a ``"setup"`` entry (threads, torch version, batch, guidance).
    """
    import tempfile

    from diffusers import DDIMScheduler

    from ..lora import LoraScale
    from ..sampling import ClassifierFreeGuidance, step_grid
    from .loaders import load_model
    from .models import TextUNetFn, model_function
    from .processor import encode_prompts, initial_latents
    from .tiny import SD_SCHEDULER, mid_text_unet, save_tiny

    results = {"setup": {"threads": torch.get_num_threads(), "torch": torch.__version__, "batch": batch,
                         "guidance": guidance, "repeats": repeats, "note": "random weights: timings only",
                         "load_average_before": os.getloadavg()}}
    seeds = list(range(batch))
    with tempfile.TemporaryDirectory() as tmp:
        for family, T in (("ldm", 50), ("sd", 30)):
            m = load_model(save_tiny(family, f"{tmp}/{family}"))
            cond = encode_prompts(m, ["a photo of a cat"] * batch) if m.conditional else None
            res = bench_window(model_function(m, guidance), initial_latents(m, seeds), cond,
                               step_grid(m.scheduler, T), [*windows, T], repeats)
            results[f"tiny_{family}"] = {"params": sum(p.numel() for p in m.unet.parameters()), **res}
            if progress:
                print(f"tiny_{family} done", flush=True)
    unet = mid_text_unet(sample_size=mid_size)
    fn = ClassifierFreeGuidance(LoraScale(TextUNetFn(unet), unet), guidance)
    g = torch.Generator().manual_seed(0)
    dim = unet.config.cross_attention_dim
    cond = {h: {"encoder_hidden_states": torch.randn(batch, 77, dim, generator=g)} for h in ("cond", "uncond")}
    sched = DDIMScheduler(**{k: v for k, v in SD_SCHEDULER.items() if k != "skip_prk_steps"}, clip_sample=False)
    x_T = torch.randn(batch, 4, mid_size, mid_size, generator=g)
    res = bench_window(fn, x_T, cond, step_grid(sched, 30), [*windows, 30], repeats)
    results["mid_sd_unet"] = {"params": sum(p.numel() for p in unet.parameters()), "latent": [4, mid_size, mid_size],
                              **res}
    results["setup"]["load_average_after"] = os.getloadavg()
    return results


SD14_UNET = dict(  # CompVis/stable-diffusion-v1-4 unet/config.json (the architecture; weights random here)
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)


def bench_sd14(windows: Sequence[int] = (1, 2, 4, 8, 16, 30), repeats: int = 3, batch: int = 1,
               device: str = "cuda", dtype: torch.dtype = torch.float16, guidance: float = 7.5,
               sample_size: int = 64) -> dict:
    """``bench_window`` for a randomly initialised UNet2DConditionModel with SD v1.4's real config (860M
    parameters, 4x64x64 latents, CFG doubling, T = 30) on ``device`` in ``dtype``: the GPU check
    (``scripts/device_check.sh``). Each timed call waits for the device. Returns the bench_window result
    plus ``params``, ``device`` and ``dtype``."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from ..lora import LoraScale
    from ..sampling import ClassifierFreeGuidance, step_grid
    from .models import TextUNetFn
    from .tiny import SD_SCHEDULER

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**SD14_UNET, "sample_size": sample_size}).to(device, dtype).eval()
    inner = ClassifierFreeGuidance(LoraScale(TextUNetFn(unet), unet), guidance)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def fn(x, t, cond, **kw):
        out = inner(x, t, cond, **kw)
        sync()
        return out

    g = torch.Generator().manual_seed(0)
    cond = {h: {"encoder_hidden_states": torch.randn(batch, 77, 768, generator=g).to(device)}
            for h in ("cond", "uncond")}
    sched = DDIMScheduler(**{k: v for k, v in SD_SCHEDULER.items() if k != "skip_prk_steps"}, clip_sample=False)
    x_T = torch.randn(batch, 4, sample_size, sample_size, generator=g).to(device)
    res = bench_window(fn, x_T, cond, step_grid(sched, 30), [*windows, 30], repeats)
    name = torch.cuda.get_device_name(device) if str(device).startswith("cuda") else "cpu"
    return {"params": sum(p.numel() for p in unet.parameters()), "device": name, "dtype": str(dtype),
            "latent": [4, sample_size, sample_size], **res}
