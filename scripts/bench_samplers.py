"""Side-by-side CPU latency of sequential DDIM, Picard and PCM on a policy-sized UNet (JSON out).

    OMP_NUM_THREADS=1 python scripts/bench_samplers.py --out results/bench_samplers.json

One process, one machine, interleaved repeats (round robin over the samplers, median and min per
action chunk). Also the batch-cost curve (one UNet call with 1..50 rows, per thread count) that
explains the result: a full-window Picard iteration is one 50-row call, so Picard pays off when
iterations * cost(50 rows) < T * cost(1 row).

Threads: ``--threads`` is used for calls with fewer than ``--switch-rows`` rows (the sequential
path), ``--window-threads`` for wider calls (Picard windows). Without ``--state-dict`` the UNet is
randomly initialised: latencies are representative, iteration counts are not (a random network's
Picard iterates converge slowly). Without ``--adapter`` the PCM adapter is random (timing only).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler

from pcm_policy.lora import add_lora, load_adapter, set_lora_scale
from pcm_policy.models.unet1d import build_unet, count_parameters
from pcm_policy.sampling import linear_schedule, sample_pcm, sample_picard, sample_sequential


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="medium", help="UNet preset (pcm_policy.models.unet1d.UNET_PRESETS)")
    p.add_argument("--state-dict", help="base UNet weights (torch.save'd or .safetensors state dict)")
    p.add_argument("--adapter", help="PCM adapter file (pcm_policy.lora.save_adapter); default: random")
    p.add_argument("--num-steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=1, help="samples per action chunk")
    p.add_argument("--windows", default="50,25,10")
    p.add_argument("--tols", default="0.1,0.01")
    p.add_argument("--safeguard", type=float, default=1.0, help="kappa of the iterate safeguard")
    p.add_argument("--k-on", type=int, default=2)
    p.add_argument("--k-off", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--curve", default="1,2,4,8,16,25,32,50")
    p.add_argument("--curve-threads", default="1,2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--window-threads", type=int, default=1)
    p.add_argument("--switch-rows", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the JSON here")
    return p.parse_args()


def load_state(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def summary(ms: list[float]) -> dict:
    return {"median_ms": round(statistics.median(ms), 2), "min_ms": round(min(ms), 2)}


def main():
    a = parse()
    torch.manual_seed(a.seed)
    base = build_unet(a.size).eval()
    if a.state_dict:
        base.load_state_dict(load_state(a.state_dict))
    adapted = add_lora(copy.deepcopy(base)).eval()
    if a.adapter:
        adapted = load_adapter(copy.deepcopy(base), a.adapter).eval()
    else:  # random adapter: lora_B starts at zero, give it weights so the adapter changes the model
        with torch.no_grad():
            for n, p in adapted.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)

    def threads_for(rows: int) -> None:
        torch.set_num_threads(a.window_threads if rows >= a.switch_rows else a.threads)

    def denoise(x, t, cond):
        threads_for(len(x))
        return base(x, t, cond)

    def denoise_pcm(x, t, cond, lora_scale=1.0):
        threads_for(len(x))
        set_lora_scale(adapted, lora_scale)
        return adapted(x, t, cond)

    g = torch.Generator().manual_seed(a.seed)
    horizon, cond_dim = 16, base.global_cond_dim
    x_T, cond = torch.randn(a.batch, horizon, 2, generator=g), torch.randn(a.batch, cond_dim, generator=g)
    sched = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    kw = dict(scheduler=sched, num_steps=a.num_steps)
    T = a.num_steps

    with torch.no_grad():
        curve = {}  # batch-cost curve: one call with B rows
        for th in [int(v) for v in a.curve_threads.split(",")]:
            torch.set_num_threads(th)
            row = {}
            for B in [int(v) for v in a.curve.split(",")]:
                x, t, c = torch.randn(B, horizon, 2), torch.randint(0, 100, (B,)), torch.randn(B, cond_dim)
                base(x, t, c)
                row[B] = summary(timed(lambda x=x, t=t, c=c: base(x, t, c), 10))
            curve[f"threads={th}"] = row

        runs = {"sequential_ddim": lambda: sample_sequential(denoise, x_T, cond, **kw)}
        for w in [int(v) for v in a.windows.split(",")]:
            for tol in [float(v) for v in a.tols.split(",")]:
                for sg in (None, a.safeguard):
                    name = f"picard_w{w}_tol{tol}" + ("_safeguard" if sg else "")
                    runs[name] = (lambda w=w, tol=tol, sg=sg:
                                  sample_picard(denoise, x_T, cond, window=w, tol=tol, safeguard=sg, **kw))
        sched_fn = linear_schedule(a.k_on, a.k_off)

        def pcm(tol, sg, space="weight"):
            return lambda: sample_pcm(denoise_pcm, x_T, cond, schedule=sched_fn, tol=tol, safeguard=sg,
                                      space=space, **kw)

        tols = [float(v) for v in a.tols.split(",")]
        for tol in tols:
            for sg in (None, a.safeguard):
                runs[f"pcm_weight_tol{tol}" + ("_safeguard" if sg else "")] = pcm(tol, sg)
        runs[f"pcm_feature_tol{tols[0]}_safeguard"] = pcm(tols[0], a.safeguard, "feature")

        outputs, times = {}, {k: [] for k in runs}
        for name, fn in runs.items():  # warm-up + results
            outputs[name] = fn()
        for _ in range(a.repeats):  # interleaved repeats
            for name, fn in runs.items():
                times[name] += timed(fn, 1)

    ref = outputs["sequential_ddim"][0]
    samplers = {}
    for name, (x, st) in outputs.items():
        samplers[name] = {**summary(times[name]), "iterations": st.iterations, "nfe": st.nfe,
                          "clamped": st.clamped, "max_abs_diff_vs_sequential": float((x - ref).abs().max())}
    c1 = curve[f"threads={a.window_threads}"]
    full = max(int(v) for v in a.curve.split(","))
    seq_ms = samplers["sequential_ddim"]["median_ms"]
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "settings": {"unet": a.size, "params": count_parameters(base), "trained_weights": bool(a.state_dict),
                     "adapter": a.adapter or "random (timing only)", "num_steps": T, "batch": a.batch,
                     "threads": a.threads, "window_threads": a.window_threads, "switch_rows": a.switch_rows,
                     "repeats": a.repeats, "schedule": f"linear_schedule({a.k_on}, {a.k_off})",
                     "safeguard_kappa": a.safeguard},
        "batch_cost_curve": curve,
        "derived": {
            "ratio_full_window_call_to_batch1_call":
                round(c1[full]["median_ms"] / curve[f"threads={a.threads}"][1]["median_ms"], 2),
            "picard_break_even_iterations": round(seq_ms / c1[full]["median_ms"], 1),
        },
        "samplers": samplers,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)


if __name__ == "__main__":
    main()
