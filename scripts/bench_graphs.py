"""Sequential DDIM vs Picard / Picard + TAA / PCM, eager and with CUDA graphs, side by side (the GPU check).

    python scripts/bench_graphs.py --device cuda --out OUT.json                    # scripts/device_check.sh
    python scripts/bench_graphs.py --models pusht --repeats 1 --conds 1           # the same on a CPU (graphs: no-op)

Models (``--models``, comma list):
  pusht      the shipped PushT policy and adapter (``checkpoints/pusht_base``, ``checkpoints/pusht_pcm``), T = 50,
             batch 1, every sampler at tol 0.1 (PCM: the adapter's spec), one chunk at each of the start states
             of the first ``--conds`` evaluation seeds (100000..), seeded x_T.
  lerobot    a lerobot-size 1-D UNet built with this project's ``ConditionalUnet1D``: lerobot's diffusion conv
             stack (down_dims 256/512/1024, kernel 5, step embedding 128, FiLM) without the mid-block attention
             (63.5M parameters here, as lerobot's own at these dims); random weights, so the iterative samplers
             run a fixed number of iterations (``--ks``: what the trained PushT policy needs at tol 0.1).
  sd14       a random ``UNet2DConditionModel`` with SD v1.4's config (860M), 4x64x64 latents, classifier-free
             guidance 7.5 (2 rows per position), T = 30 with window 30, in ``--sd-dtype`` (float16); fixed ks.
Samplers: ddim (sequential, T calls), picard, taa (Picard + TAA, prior init, safeguard), pcm. For the random models
"pcm" is PCM's call shape without an adapter: TAA with the shipped jump's rows (lambda 0): its cost, not its output.
Modes: eager (the eager UNet) and graphs (``sampling.CudaGraphs`` around the same model function). On a CPU the
graphs are a no-op, so both modes time the same thing. Printed: ms per chunk (median of ``--repeats`` interleaved
runs after one warm-up, which also captures the graphs), x DDIM-T of the same mode, iterations, and the max
|graphs - eager| output difference beside the eager path's own run-to-run difference (its floor).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
MODELS = ("pusht", "lerobot", "sd14")
KS = {"picard": 10, "taa": 6, "pcm": 5}  # PushT at tol 0.1: Picard 9-10, TAA 5.5-6, PCM 5 (docs/pusht.md)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--device", default="cpu", help="cpu (graphs: a no-op) or cuda[:N]")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per sampler and mode (medians)")
    p.add_argument("--conds", type=int, default=2, help="pusht: conditions (one chunk each)")
    p.add_argument("--ks", default="picard=10,taa=6,pcm=5", help="iterations of the random models' samplers")
    p.add_argument("--sd-dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    p.add_argument("--sd-size", type=int, default=64, help="sd14 latent side (64: SD v1.4 at 512x512)")
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints/pusht_base"))
    p.add_argument("--adapter", default=str(ROOT / "checkpoints/pusht_pcm"))
    p.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    p.add_argument("--buckets", default=None,
                   help="graph widths in rows, comma list (default: powers of two; a call pads to the next one)")
    p.add_argument("--out", type=Path, default=None, help="JSON (written atomically); a tracked file needs --force")
    p.add_argument("--force", action="store_true")
    a = p.parse_args(argv)
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    bad = [m for m in a.models if m not in MODELS]
    if bad or not a.models:
        p.exit(2, f"error: --models must be a comma list of {', '.join(MODELS)}, got {bad or a.models}\n")
    try:
        a.ks = {k: int(v) for k, v in (kv.split("=") for kv in a.ks.split(","))}
    except ValueError:
        p.exit(2, f"error: --ks must look like picard=10,taa=6,pcm=5, got {a.ks!r}\n")
    if set(a.ks) != set(KS) or min(a.ks.values()) < 1:
        p.exit(2, f"error: --ks needs picard, taa and pcm, each >= 1, got {a.ks}\n")
    from pcm_policy.sampling.graphs import check_buckets

    try:
        a.buckets = None if a.buckets is None else [int(b) for b in a.buckets.split(",")]
    except ValueError:
        p.exit(2, f"error: --buckets must be a comma list of integers like 1,30, got {a.buckets!r}\n")
    try:
        check_buckets(a.buckets)
    except ValueError as e:
        p.exit(2, f"error: --{e}\n")  # "--buckets must be increasing positive integers ..."
    if min(a.repeats, a.conds, a.sd_size, a.threads) < 1:
        p.exit(2, "error: --repeats, --conds, --sd-size and --threads must be >= 1\n")
    from pcm_policy.io import check_out_arg

    check_out_arg(p, a.out, a.force)
    return a


def _pusht(a, device):
    """(model_fn of the eager policy with its adapter, specs, [(x_T, cond)], label)."""
    import numpy as np
    import torch

    from envs.pusht import PushTEnv
    from pcm_policy.pusht.checkpoint import load_adapter_folder, load_policy
    from pcm_policy.sampling import SamplerSpec

    policy = load_policy(a.checkpoint, device)
    pcm, _ = load_adapter_folder(policy, a.adapter)
    policy.freeze(False)
    specs = {"ddim": SamplerSpec.named("ddim"), "picard": SamplerSpec.named("picard", tol=0.1),
             "taa": SamplerSpec.named("taa", tol=0.1), "pcm": pcm.replace(tol=0.1)}
    obs = []
    for i in range(a.conds):  # the start states of the evaluation seeds, as the policy first sees them
        o, _ = PushTEnv(obs_type=policy.cfg.obs_type, legacy=True).reset(seed=100000 + i)
        obs.append(np.stack([o] * policy.cfg.n_obs_steps))
    cond = policy.condition(torch.as_tensor(np.stack(obs), dtype=torch.float32))
    x_T = torch.randn(a.conds, policy.cfg.horizon, policy.cfg.action_dim,
                      generator=torch.Generator().manual_seed(0)).to(device)
    inputs = [(x_T[i:i + 1], cond[i:i + 1]) for i in range(a.conds)]
    params = sum(p.numel() for n, p in policy.model.named_parameters() if "lora_" not in n)
    return policy.model_fn, policy.noise_scheduler, specs, inputs, f"pusht ({params / 1e6:.2f}M, T=50, B=1)"


def _fixed_specs(a, T: int, jump_positions):
    from pcm_policy.sampling import Jump, SamplerSpec

    jump = Jump(jump_positions, (0.0,) * len(jump_positions))
    return {"ddim": SamplerSpec.named("ddim", num_steps=T),
            "picard": SamplerSpec.named("picard", num_steps=T, tol=0.0, k=a.ks["picard"]),
            "taa": SamplerSpec.named("taa", num_steps=T, tol=0.0, k=a.ks["taa"]),
            "pcm": SamplerSpec.named("taa", num_steps=T, tol=0.0, k=a.ks["pcm"], jump=jump)}


def _lerobot(a, device):
    import torch
    from diffusers import DDPMScheduler
    from torch import nn

    from pcm_policy.pusht.unet1d import ConditionalUnet1D, count_parameters

    torch.manual_seed(0)
    unet = ConditionalUnet1D(input_dim=2, global_cond_dim=40, diffusion_step_embed_dim=128,
                             down_dims=(256, 512, 1024), kernel_size=5, n_groups=8)
    unet.mid_modules[1] = nn.Identity()  # lerobot's mid block: two residual blocks, no attention
    unet = unet.to(device).eval()

    def fn(x, t, cond, lora_scale=None):
        return unet(x, t, cond)

    sched = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    g = torch.Generator().manual_seed(0)
    inputs = [(torch.randn(1, 16, 2, generator=g).to(device), torch.randn(1, 40, generator=g).to(device))]
    label = f"lerobot-size 1-D UNet ({count_parameters(unet) / 1e6:.1f}M, random, T=50, B=1)"
    return fn, sched, _fixed_specs(a, 50, (10, 45, 49)), inputs, label


def _sd14(a, device):
    import torch
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from pcm_policy.sampling import ClassifierFreeGuidance
    from pcm_policy.vision.bench import SD14_UNET
    from pcm_policy.vision.models import TextUNetFn
    from pcm_policy.vision.tiny import SD_SCHEDULER

    torch.manual_seed(0)
    dtype = getattr(torch, a.sd_dtype)
    unet = UNet2DConditionModel(**{**SD14_UNET, "sample_size": a.sd_size}).to(device, dtype).eval()
    fn = ClassifierFreeGuidance(TextUNetFn(unet), 7.5)
    g = torch.Generator().manual_seed(0)
    cond = {h: {"encoder_hidden_states": torch.randn(1, 77, 768, generator=g).to(device)} for h in ("cond", "uncond")}
    sched = DDIMScheduler(**{k: v for k, v in SD_SCHEDULER.items() if k != "skip_prk_steps"}, clip_sample=False)
    x_T = torch.randn(1, 4, a.sd_size, a.sd_size, generator=g).to(device)
    params = sum(p.numel() for p in unet.parameters())
    label = f"SD v1.4 UNet ({params / 1e6:.0f}M, random, {a.sd_dtype}, 4x{a.sd_size}x{a.sd_size}, CFG, T=30, window 30)"
    return fn, sched, _fixed_specs(a, 30, (6, 27, 29)), [(x_T, cond)], label


def bench_model(name: str, a, device) -> dict:
    """One model's rows: {sampler: {mode: {"ms", "iterations", "nfe"}}, "max_diff", ...}."""
    import torch

    from pcm_policy.device import synchronize
    from pcm_policy.evaluation.latency import time_interleaved
    from pcm_policy.sampling import CudaGraphs, make_sampler

    fn, sched, specs, inputs, label = {"pusht": _pusht, "lerobot": _lerobot, "sd14": _sd14}[name](a, device)
    graphs = CudaGraphs(fn, buckets=a.buckets)
    modes = {"eager": fn, "graphs": graphs}
    samplers = {s: make_sampler(spec, sched) for s, spec in specs.items()}
    outs, stats, first = {}, {}, {}

    def run(s, mode, i):
        x_T, cond = inputs[i]
        x, st = samplers[s](modes[mode], x_T, cond)
        first.setdefault((s, mode, i), x)  # the warm-up's output: later runs of the same mode are compared with it
        outs[s, mode, i], stats[s, mode, i] = x, st

    calls = {(s, m, i): (lambda s=s, m=m, i=i: run(s, m, i)) for s in specs for m in modes for i in range(len(inputs))}
    with torch.no_grad():
        times = time_interleaved(calls, repeats=a.repeats, warmup=1, sync=lambda: synchronize(device))
    res = {"label": label, "samplers": {s: specs[s].to_dict() for s in specs}, "rows": {}, "graphs": vars(graphs.stats)}
    for s in specs:
        row = {}
        for m in modes:
            ms = [statistics.median(times[s, m, i]) for i in range(len(inputs))]
            row[m] = {"ms": statistics.mean(ms), "iterations": statistics.mean(
                [stats[s, m, i].iterations for i in range(len(inputs))]),
                "nfe": statistics.mean([float(stats[s, m, i].nfe) for i in range(len(inputs))])}
        row["max_diff_graphs_vs_eager"] = max((outs[s, "graphs", i].float() - outs[s, "eager", i].float()).abs().max()
                                             .item() for i in range(len(inputs)))
        row["max_diff_eager_rerun"] = max((outs[s, "eager", i].float() - first[s, "eager", i].float()).abs().max()
                                          .item() for i in range(len(inputs)))  # the floor for graphs vs eager
        res["rows"][s] = row
    return res


def report(res: dict) -> str:
    lines = []
    for r in res.values():
        if not isinstance(r, dict) or "rows" not in r:
            continue
        lines.append(r["label"])
        lines.append(f"  {'sampler':<8} {'iters':>6} {'eager ms':>10} {'x ddim':>7} {'graphs ms':>10} {'x ddim':>7} "
                     f"{'graphs/eager':>12} {'max |diff|':>10} {'eager rerun':>11}")
        base = r["rows"]["ddim"]
        for s, row in r["rows"].items():
            e, g = row["eager"], row["graphs"]
            lines.append(f"  {s:<8} {e['iterations']:>6.2f} {e['ms']:>10.2f} {e['ms'] / base['eager']['ms']:>7.3f} "
                         f"{g['ms']:>10.2f} {g['ms'] / base['graphs']['ms']:>7.3f} {g['ms'] / e['ms']:>12.3f} "
                         f"{row['max_diff_graphs_vs_eager']:>10.2e} "
                         f"{row['max_diff_eager_rerun']:>11.2e}")
        lines.append(f"  graphs: {r['graphs']['captures']} captured, {r['graphs']['replays']} replayed calls, "
                     f"{r['graphs']['eager']} eager calls, {r['graphs']['failed']} failed captures")
    return "\n".join(lines)


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    from pcm_policy.device import check_threads, pick_device
    from pcm_policy.io import run_record, write_json

    try:
        torch.set_num_threads(check_threads(a.threads))
        device = pick_device(a.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    res = {"setup": {**run_record("scripts/bench_graphs.py", argv or sys.argv[1:]), "device": str(device),
                     "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "threads": a.threads}}
    failed = []
    for m in a.models:  # one model's failure (say, out of memory) is recorded and the others still run
        t1 = time.time()
        try:
            res[m] = bench_model(m, a, device)
        except Exception as e:  # noqa: BLE001 - reported, saved and turned into the exit status below
            res[m] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            failed.append(m)
            print(f"{m}: failed: {res[m]['error']}", file=sys.stderr, flush=True)
        res[m]["seconds"] = round(time.time() - t1, 1)
        if "rows" in res[m]:
            print(report({m: res[m]}), flush=True)
        res["setup"]["seconds"] = round(time.time() - t0, 1)
        if a.out is not None:  # after every model, so a run cut short keeps what it measured
            write_json(a.out, res)
    if a.out is not None:
        print(f"wrote {a.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
