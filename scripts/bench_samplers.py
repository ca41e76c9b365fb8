"""Side-by-side latency of sequential DDIM-50, Picard and PCM on the shipped PushT policy, CPU or GPU (JSON out).

Run it on a QUIET machine (nothing else busy: the load average is recorded and a warning printed),
once per thread setting, from the repository root:

    # 1 thread for every call (the baseline)
    OMP_NUM_THREADS=1 python scripts/bench_samplers.py --checkpoint checkpoints/pusht_base \\
        --adapter checkpoints/pusht_pcm --threads 1 --window-threads 1 --out results/bench_samplers_1thread.json
    # batch-1 calls on 1 thread, calls with >= 4 rows (Picard/PCM windows) on 2 threads
    OMP_NUM_THREADS=1 python scripts/bench_samplers.py --checkpoint checkpoints/pusht_base \\
        --adapter checkpoints/pusht_pcm --threads 1 --window-threads 2 --switch-rows 4 \\
        --out results/bench_samplers_2thread.json

Each takes a few minutes. Compare the two JSONs: ``derived`` (full-window call / batch-1 call,
target <= 3x; batch-1 path through the ThreadPolicy vs fixed 1 thread, should be ~1.00x) and the
per-sampler medians. Only the 2-thread run's windows use the second core; its batch-1 path is the
1-thread run's. Caveat, measured on the loaded 2-core machine (load ~5): with libgomp's default
spin-waiting, 2-thread calls took 1.4 s (batch 1) and 0.47 s (50 rows) instead of 8-27 ms, and
``OMP_WAIT_POLICY=PASSIVE`` removed that (11 / 37 ms). So use the 2-thread setting only where the
cores are free, and if in doubt also run the 2-thread line with ``OMP_WAIT_POLICY=PASSIVE`` (recorded
in the JSON) and keep the faster one.

On a GPU, add ``--device cuda`` (TF32 off; every timing waits for the GPU; thread settings do not
matter there): ``scripts/device_check.sh`` runs it that way.

A quick check of the script itself (about a minute; the numbers mean nothing):

    OMP_NUM_THREADS=1 python scripts/bench_samplers.py --checkpoint /tmp/smoke/checkpoint --adapter random \\
        --conds 1 --repeats 1 --windows 50 --tols 0.1 --safeguards none --curve 1,50 --curve-repeats 2

What runs: the policy's own sampler-protocol denoiser (``policy.model_fn``) and noise schedule
(``policy.noise_scheduler``, solved with DDIM, eta = 0), conditioned on observation windows
(``n_obs_steps`` consecutive steps of one episode) drawn from the demonstrations (``--dataset``),
one action chunk of ``--batch`` samples per window. The UNet runs as frozen TorchScript graphs
(``DiffusionPolicy.freeze``: the eager kernels without Python's per-layer cost, same outputs;
``--eager`` for the module itself; the curve times both). Every call goes through
``pcm_policy.sampling.ThreadPolicy``: calls with fewer than ``--switch-rows`` rows run on
``--threads`` threads (the sequential path), wider ones on ``--window-threads`` (Picard windows);
its switching cost is included in every timing and also reported apart.

Fairness: sequential DDIM and Picard use the base policy without adapters; PCM uses a copy with
the adapter attached (peft's LoRA layers compute their branch even at lambda = 0, a cost PCM
really pays). One process, interleaved repeats (round robin over samplers, per condition),
warm-up first; median and min per action chunk. Accuracy: max |x_0 - DDIM-50's x_0| in normalised
action units and in pixels (normalised / the action normaliser's scale).

The batch-cost curve (one denoiser call with 1..50 rows, per fixed thread count and through the
ThreadPolicy) explains the sampler timings: a full-window Picard iteration is one 50-row call, so
Picard pays off when iterations * cost(50 rows) < 50 * cost(1 row).

``--adapter random`` (the default when ``checkpoints/pusht_pcm`` is missing) attaches a random
LoRA adapter: PCM timings are then representative per iteration, its iteration counts are not.
``--size NAME`` benches a randomly initialised policy of that UNet preset instead of a checkpoint
(timing only: iteration counts of a random network mean nothing).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pcm_policy.device import pick_device, synchronize
from pcm_policy.lora import add_lora
from pcm_policy.pusht.checkpoint import load_adapter_folder, load_policy, read_config
from pcm_policy.pusht.unet1d import count_parameters
from pcm_policy.sampling import (
    DEFAULTS,
    TAA,
    SamplerSpec,
    Switch,
    ThreadPolicy,
    make_sampler,
    num_threads,
    switch_cost_us,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASE, DEFAULT_ADAPTER = ROOT / "checkpoints/pusht_base", ROOT / "checkpoints/pusht_pcm"
DEFAULT_DATA = ROOT / "data/pusht_expert.zarr"
SEQ = "ddim_sequential"


def ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help=f"policy folder (default: {DEFAULT_BASE.relative_to(ROOT)} if present)")
    src.add_argument("--size", help="bench a RANDOM policy with this UNet preset instead (timing only)")
    p.add_argument("--adapter", help=f"PCM adapter folder, or 'random' (default: {DEFAULT_ADAPTER.relative_to(ROOT)} "
                                     "if present, else random)")
    p.add_argument("--dataset", default=str(DEFAULT_DATA), help="demonstrations the conditions are drawn from")
    p.add_argument("--conds", type=int, default=4, help="observation windows (one action chunk each)")
    p.add_argument("--batch", type=int, default=1, help="samples per action chunk")
    p.add_argument("--num-steps", type=int, default=50)
    p.add_argument("--windows", default="50,25,10", help="Picard windows")
    p.add_argument("--tols", default="0.1,0.01", help="Picard and PCM tolerances")
    p.add_argument("--safeguards", default="none,1.0", help="iterate safeguard kappas ('none': off)")
    p.add_argument("--pcm-windows", default="50", help="PCM windows")
    p.add_argument("--inits", default="noise,prior", help="Picard first iterates (PCM uses its adapter's)")
    p.add_argument("--anderson", default=str(DEFAULTS["taa"]["taa"].memory),
                   help="Picard + triangular Anderson acceleration (init prior) with these memories ('' for none)")
    p.add_argument("--ddim-ks", default="5", help="also DDIM re-discretised to these step counts ('' for none)")
    p.add_argument("--pcm-spaces", help="weight,feature (default: the adapter's own space)")
    p.add_argument("--k-on", type=int, help="override the adapter's schedule (random adapter: 2)")
    p.add_argument("--k-off", type=int, help="override the adapter's schedule (random adapter: 6)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per sampler and condition")
    p.add_argument("--curve", default="1,2,4,8,16,25,32,50", help="batch-cost curve widths (rows per call)")
    p.add_argument("--curve-threads", default="1,2", help="fixed thread counts of the curve")
    p.add_argument("--curve-repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="threads of calls narrower than --switch-rows")
    p.add_argument("--window-threads", type=int, default=1, help="threads of calls with >= --switch-rows rows")
    p.add_argument("--switch-rows", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: every timing then waits for the GPU")
    p.add_argument("--eager", action="store_true", help="samplers call the eager UNet (default: its frozen "
                                                        "TorchScript graphs, same outputs; the curve shows both)")
    p.add_argument("--out", help="write the JSON here (else it is printed after the table)")
    a = p.parse_args(argv)
    for name in ("conds", "batch", "num_steps", "repeats", "curve_repeats", "threads", "window_threads",
                 "switch_rows"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return a


# ---------------------------------------------------------------------------------------------- setup
def load_base(a, dataset):
    """(policy, description). A checkpoint, or a random policy of preset ``--size``."""
    if a.size:
        from pcm_policy.pusht.normalizer import NormalizerDict
        from pcm_policy.pusht.policy import DiffusionPolicy, PolicyConfig

        torch.manual_seed(a.seed)
        policy = DiffusionPolicy(PolicyConfig(unet_size=a.size)).eval()
        ds = dataset(policy.cfg.obs_type)
        policy.normalizer = NormalizerDict.fit({"obs": ds.get_all_obs(), "action": ds.get_all_actions()})
        return policy.to(a.device), {"source": f"random weights, UNet preset {a.size!r} (timing only)"}
    path = Path(a.checkpoint) if a.checkpoint else DEFAULT_BASE
    if not a.checkpoint and not path.is_dir():
        sys.exit(f"no policy: {path} does not exist; pass --checkpoint DIR (a folder from "
                 "scripts/train_policy.py) or --size small|medium for a random policy (timing only)")
    policy = load_policy(path, a.device)
    cfg = read_config(path)
    return policy, {"source": str(path), "step": cfg.get("step"), "command": cfg.get("command")}


def load_pcm(a, policy):
    """(adapted copy of policy, its PCM SamplerSpec, description)."""
    pcm = copy.deepcopy(policy)
    path = a.adapter or (str(DEFAULT_ADAPTER) if DEFAULT_ADAPTER.is_dir() else "random")
    if path == "random":
        add_lora(pcm.model)
        g = torch.Generator().manual_seed(a.seed + 1)
        with torch.no_grad():  # lora_B starts at zero: give the adapter weights so it changes the model
            for n, p in pcm.model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g).to(p.device) * 0.05)
        spec, info = SamplerSpec.named("pcm", switch=Switch(2, 6)), {"source": "random (timing only)"}
    else:
        spec, cfg = load_adapter_folder(pcm, path)
        info = {"source": path, **{k: v for k, v in cfg.items() if k not in ("schedule", "sampler") and _small(v)}}
    sw = spec.switch
    spec = spec.replace(switch=Switch(sw.k_on if a.k_on is None else a.k_on, sw.k_off if a.k_off is None else a.k_off,
                                      sw.space))
    return pcm.eval(), spec, info


def _small(v) -> bool:
    return len(json.dumps(v, default=str)) < 2000


def draw_conditions(policy, ds, n: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """``n`` observation windows of ``n_obs_steps`` consecutive steps of one episode -> (n, cond_dim)."""
    obs, ends, k = ds.get_all_obs(), np.asarray(ds.episode_ends), policy.cfg.n_obs_steps
    starts = np.concatenate([[0], ends[:-1]])
    valid = np.concatenate([np.arange(s, e - k + 1) for s, e in zip(starts, ends, strict=True) if e - s >= k])
    idx = np.random.default_rng(seed).choice(valid, size=n, replace=len(valid) < n)
    windows = torch.from_numpy(np.stack([obs[i:i + k] for i in idx]))
    return policy.condition(windows), [int(i) for i in idx]


# ---------------------------------------------------------------------------------------------- timing
def ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def summary(ms: list[float]) -> dict:
    return {"median_ms": round(statistics.median(ms), 3), "min_ms": round(min(ms), 3)}


@torch.no_grad()
def batch_cost_curve(rows: dict, widths: list[int], conds: torch.Tensor, horizon: int, action_dim: int,
                     n_train: int, repeats: int, seed: int) -> dict:
    """{row name: {width: summary}}; ``rows`` maps a name to (denoiser, thread count in force, kw).
    Interleaved: for each width, round robin over the rows."""
    g = torch.Generator().manual_seed(seed)
    out = {name: {} for name in rows}
    for w in widths:
        x = torch.randn(w, horizon, action_dim, generator=g).to(conds.device)
        t = torch.randint(0, n_train, (w,), generator=g).to(conds.device)
        c = conds[torch.arange(w) % len(conds)]
        times = {name: [] for name in rows}
        for rep in range(repeats + 2):  # 2 warm-up calls
            for name, (fn, th, kw) in rows.items():
                with num_threads(th):
                    t0 = time.perf_counter()
                    fn(x, t, c, **kw)
                    synchronize(conds.device)
                    ms = ms_since(t0)
                if rep >= 2:
                    times[name].append(ms)
        for name in rows:
            out[name][w] = summary(times[name])
    return out


def wrapper_overhead_us(a, n: int = 2000) -> dict:
    """Median cost of one ThreadPolicy call around a no-op denoiser, narrow (no switch) and wide
    (a set_num_threads pair), minus the bare no-op call."""
    def noop(x, t, c):
        return x

    wrapped = ThreadPolicy(noop, a.threads, a.window_threads, a.switch_rows)
    out = {}
    for name, rows in (("narrow_call", 1), ("wide_call", a.switch_rows)):
        x, t = torch.zeros(rows, 1), torch.zeros(rows, dtype=torch.long)
        per = {}
        for label, fn in (("bare", noop), ("wrapped", wrapped)):
            ts = []
            for _ in range(n):
                t0 = time.perf_counter()
                fn(x, t, None)
                ts.append(time.perf_counter() - t0)
            per[label] = statistics.median(ts) * 1e6
        out[name] = round(per["wrapped"] - per["bare"], 3)
    return out


@torch.no_grad()
def compute_floor(model, rows: int, conds: torch.Tensor, horizon: int, action_dim: int, threads: int) -> dict:
    """FLOPs of one ``rows``-row UNet call (torch's FLOP counter: convolutions and matmuls) and this
    machine's fp32 matmul rate on ``threads`` threads: the call cannot take less than flops / rate."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(rows, horizon, action_dim, device=conds.device)
    t = torch.zeros(rows, dtype=torch.long, device=conds.device)
    c = conds[torch.arange(rows) % len(conds)]
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, t, c)
    n = 1024
    a, b = torch.randn(n, n, device=conds.device), torch.randn(n, n, device=conds.device)
    times = []
    with num_threads(threads):
        for _ in range(12):
            t0 = time.perf_counter()
            a @ b
            synchronize(conds.device)
            times.append(time.perf_counter() - t0)
    gflops = 2 * n**3 / min(times[2:]) / 1e9
    flops = counter.get_total_flops()
    return {"rows": rows, "flops": flops, "matmul_gflops": round(gflops, 1), "threads": threads,
            "floor_ms": round(flops / gflops / 1e6, 3)}


def build_samplers(a, spec: SamplerSpec, sched, base_d, pcm_d) -> dict:
    """{name: fn(x_T, cond) -> (x_0, stats)}; ``SEQ`` first. ``spec``: the adapter's PCM spec."""
    T = a.num_steps
    sgs = [None if s.strip().lower() in ("none", "off", "") else float(s) for s in a.safeguards.split(",")]
    tols = [float(v) for v in a.tols.split(",")]

    def tag(sg):
        return "" if sg is None else f"_sg{sg:g}"

    def run(s: SamplerSpec, model_fn):
        sampler = make_sampler(s, sched)
        return lambda x, c: sampler(model_fn, x, c)

    runs = {SEQ: run(SamplerSpec.named("ddim", num_steps=T), base_d)}
    for k in ints(a.ddim_ks) if a.ddim_ks else []:
        runs[f"ddim_k{k}"] = run(SamplerSpec.named("ddim-k", k=k), base_d)
    variants = [("picard", "" if init == "noise" else f"_{init}", {"init": init}) for init in a.inits.split(",")]
    mems = ints(a.anderson) if a.anderson else []
    variants += [(f"taa{m}", "", {"init": "prior", "taa": TAA(memory=m)}) for m in mems]
    for prefix, suffix, extra in variants:
        for w in ints(a.windows):
            for tol in tols:
                for sg in sgs:
                    s = SamplerSpec(name="picard", num_steps=T, window=w, tol=tol, safeguard=sg, **extra)
                    runs[f"{prefix}_w{w}_tol{tol:g}{tag(sg)}{suffix}"] = run(s, base_d)
    spaces = a.pcm_spaces.split(",") if a.pcm_spaces else [spec.switch.space]
    for space in spaces:
        for w in ints(a.pcm_windows):
            for tol in tols:
                for sg in sgs:
                    sw = Switch(spec.switch.k_on, spec.switch.k_off, space)
                    s = spec.replace(num_steps=T, window=w, tol=tol, safeguard=sg, switch=sw)
                    runs[f"pcm_{space}_w{w}_tol{tol:g}{tag(sg)}"] = run(s, pcm_d)
    return runs


# ---------------------------------------------------------------------------------------------- report
def table(result: dict) -> str:
    head = (f"{'sampler':34s} {'median ms':>10s} {'min ms':>9s} {'x seq':>6s} {'iters':>7s} {'NFE':>7s} "
            f"{'max|d| norm':>11s} {'max|d| px':>10s}")
    lines = [head, "-" * len(head)]
    for name, s in result["samplers"].items():
        it = f"{s['iterations']['median']:g}" + ("" if s["iterations"]["max"] == s["iterations"]["median"]
                                                 else f"-{s['iterations']['max']:g}")
        lines.append(f"{name:34s} {s['median_ms']:10.1f} {s['min_ms']:9.1f} {s['latency_vs_sequential']:6.2f} "
                     f"{it:>7s} {s['nfe']['median']:7g} {s['max_abs_delta_norm']:11.2e} "
                     f"{s['max_abs_delta_px']:10.2e}" + ("" if s["converged"] else "  (not converged)"))
    d = result["derived"]
    lines += ["", "batch-cost curve, median ms per call (rows ->):",
              f"{'':34s} " + " ".join(f"{w:>7d}" for w in result["settings"]["curve_widths"])]
    for name, row in result["batch_cost_curve"].items():
        lines.append(f"{name:34s} " + " ".join(f"{v['median_ms']:7.2f}" for v in row.values()))
    lines += ["", f"full-window call / batch-1 call (ThreadPolicy): {d['full_window_call_over_batch1_call']:.2f}x "
                  f"(target <= 3x); per fixed thread count: {d['full_window_over_batch1_fixed_threads']}",
              f"batch-1 call, ThreadPolicy vs fixed {result['settings']['threads']} thread(s): "
              f"{d['batch1_thread_policy_over_fixed']:.3f}x; Picard break-even at "
              f"{d['picard_break_even_iterations']} full-window iterations",
              f"set_num_threads switch pair: {d['switch_pair_us']:.2f} us; ThreadPolicy overhead per call (us): "
              f"{d['thread_policy_overhead_us']}; wide call through ThreadPolicy vs fixed "
              f"{result['settings']['window_threads']} thread(s): {d['wide_thread_policy_over_fixed']:.3f}x"]
    f = d["full_window_compute_floor"]
    lines += [f"compute floor of a full-window call: {f['flops'] / 1e9:.2f} GFLOP at {f['matmul_gflops']} GFLOP/s "
              f"(fp32 matmul, {f['threads']} thread(s)) = {f['floor_ms']:.2f} ms = {f['floor_over_batch1_call']:.2f}x "
              "the batch-1 call"]
    if "frozen_speedup_over_eager" in d:
        lines += [f"frozen graphs vs eager, speed-up per width: {d['frozen_speedup_over_eager']}"]
    if result["machine"]["warning"]:
        lines += ["", "WARNING: " + result["machine"]["warning"]]
    return "\n".join(lines)


def main(argv=None):
    a = parse(argv)
    try:
        a.device = pick_device(a.device)
    except ValueError as e:
        sys.exit(f"error: {e}")
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    torch.set_num_threads(a.threads)  # the process default; ThreadPolicy switches wide calls from here
    from pcm_policy.pusht.dataset import PushTLowdimDataset

    datasets = {}

    def dataset(obs_type):
        if obs_type not in datasets:
            datasets[obs_type] = PushTLowdimDataset(a.dataset, obs_type=obs_type)
        return datasets[obs_type]

    policy, base_info = load_base(a, dataset)
    pcm, spec, adapter_info = load_pcm(a, policy)
    ds = dataset(policy.cfg.obs_type)
    cfg = policy.cfg
    B, T = a.batch, a.num_steps
    with torch.no_grad():
        conds, obs_idx = draw_conditions(policy, ds, a.conds * B, a.seed)
    conds = conds.view(a.conds, B, -1)
    g = torch.Generator().manual_seed(a.seed)
    noises = torch.randn(a.conds, B, cfg.horizon, cfg.action_dim, generator=g).to(a.device)
    px_scale = policy.normalizer["action"].scale.detach()  # pixels = normalised / scale

    eager = None if a.eager else copy.deepcopy(policy)  # the curve times eager calls beside frozen ones
    policy.freeze(not a.eager)
    pcm.freeze(not a.eager)
    base_d = ThreadPolicy(policy.model_fn, a.threads, a.window_threads, a.switch_rows)
    pcm_d = ThreadPolicy(pcm.model_fn, a.threads, a.window_threads, a.switch_rows)

    # batch-cost curve: fixed thread counts, then through the ThreadPolicy (base and adapted model);
    # always holds width 1 and the full window (T * B rows), and the two thread counts in use
    widths = sorted({1, T * B, *ints(a.curve)})
    fixed = sorted({a.threads, a.window_threads, *ints(a.curve_threads)})
    rows = {f"threads={th}": (policy.model_fn, th, {}) for th in fixed}
    rows["thread_policy"] = (base_d, a.threads, {})
    rows["thread_policy_pcm_adapter_lambda1"] = (pcm_d, a.threads, {"lora_scale": 1.0})
    if eager is not None:
        rows.update({f"eager threads={th}": (eager.model_fn, th, {}) for th in fixed})
    curve = batch_cost_curve(rows, widths, conds.flatten(0, 1), cfg.horizon, cfg.action_dim,
                             cfg.num_train_timesteps, a.curve_repeats, a.seed)
    with num_threads(a.threads):
        switch_us = switch_cost_us(a.threads, a.window_threads)
        overhead_us = wrapper_overhead_us(a)
    floor = compute_floor((eager or policy).model, T * B, conds.flatten(0, 1), cfg.horizon, cfg.action_dim,
                          a.window_threads)

    # samplers: warm-up on the first condition, then interleaved repeats
    runs = build_samplers(a, spec, policy.noise_scheduler, base_d, pcm_d)
    for fn in runs.values():
        fn(noises[0], conds[0])
    times = {name: [] for name in runs}
    outputs = {name: [None] * a.conds for name in runs}
    for _ in range(a.repeats):
        for ci in range(a.conds):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                x0, st = fn(noises[ci], conds[ci])
                synchronize(a.device)
                times[name].append(ms_since(t0))
                outputs[name][ci] = (x0, st)

    seq_ms = statistics.median(times[SEQ])
    samplers = {}
    for name, outs in outputs.items():
        delta = torch.stack([(x0 - ref).abs() for (x0, _), (ref, _) in zip(outs, outputs[SEQ], strict=True)])
        its = [st.iterations for _, st in outs]
        nfe = [st.nfe for _, st in outs]
        samplers[name] = {
            **summary(times[name]),
            "latency_vs_sequential": round(statistics.median(times[name]) / seq_ms, 3),
            "iterations": {"median": statistics.median(its), "max": max(its), "per_condition": its},
            "nfe": {"median": statistics.median(nfe), "max": max(nfe), "per_condition": nfe},
            "converged": all(st.converged for _, st in outs),
            "clamped": sum(st.clamped for _, st in outs),
            "max_abs_delta_norm": float(delta.max()),
            "max_abs_delta_px": float((delta / px_scale).max()),
        }

    full, tp = T * B, curve["thread_policy"]
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    busy = load_end is not None and max(load_start[0], load_end[0]) > 0.3
    wide_fixed, narrow_fixed = curve[f"threads={a.window_threads}"][full], curve[f"threads={a.threads}"][1]
    result = {
        "machine": {
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "device": str(a.device),
            "gpu": torch.cuda.get_device_name(a.device) if a.device.type == "cuda" else None,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "load_avg_start": load_start,
            "load_avg_end": load_end,
            "warning": (f"1-min load average {max(load_start[0], load_end[0]):.2f}: other processes were "
                        "running, timings are not representative") if busy else None,
        },
        "settings": {
            "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
            "policy": {**base_info, "unet_size": cfg.unet_size, "unet": cfg.unet,
                       "parameters": count_parameters(policy.model), "obs_type": cfg.obs_type,
                       "horizon": cfg.horizon, "n_obs_steps": cfg.n_obs_steps},
            "adapter": {**adapter_info, "sampler": spec.to_dict(),
                        "parameters_with_adapter": count_parameters(pcm.model)},
            "dataset": a.dataset, "observation_start_steps": obs_idx, "conds": a.conds, "batch": B,
            "num_steps": T, "solver": "ddim", "repeats": a.repeats, "threads": a.threads,
            "window_threads": a.window_threads, "switch_rows": a.switch_rows, "curve_widths": widths,
            "curve_repeats": a.curve_repeats, "seed": a.seed, "unet": "eager" if a.eager else "frozen graphs",
            "px_per_normalised_unit": [round(float(1 / s), 4) for s in px_scale],
        },
        "batch_cost_curve": curve,
        "derived": {
            "full_window_rows": full,
            "full_window_call_over_batch1_call": round(tp[full]["median_ms"] / tp[1]["median_ms"], 3),
            "full_window_over_batch1_fixed_threads": {
                name: round(row[full]["median_ms"] / row[1]["median_ms"], 3)
                for name, row in curve.items() if name.startswith("threads=")},
            "batch1_thread_policy_over_fixed": round(tp[1]["median_ms"] / narrow_fixed["median_ms"], 3),
            "wide_thread_policy_over_fixed": round(tp[full]["median_ms"] / wide_fixed["median_ms"], 3),
            "switch_pair_us": round(switch_us, 3),
            "thread_policy_overhead_us": overhead_us,
            "picard_break_even_iterations": round(seq_ms / tp[full]["median_ms"], 1),
            "sequential_median_ms": round(seq_ms, 3),
            "full_window_compute_floor": {**floor, "floor_over_batch1_call": round(
                floor["floor_ms"] / tp[1]["median_ms"], 3)},
            **({"frozen_speedup_over_eager": {
                f"threads={th}": {w: round(curve[f"eager threads={th}"][w]["median_ms"] / v["median_ms"], 3)
                                  for w, v in curve[f"threads={th}"].items()} for th in fixed}}
               if eager is not None else {}),
        },
        "samplers": samplers,
    }
    print(table(result))
    text = json.dumps(result, indent=1)
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)
        print(f"\nwrote {out}")
    else:
        print(text)


if __name__ == "__main__":
    main()
