"""Latency of exact parallel sampling at the lerobot UNet sizes users run (issue 22, item 7): CPU, one thread, batch 1.

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv-lerobot/bin/python scripts/lerobot/bench_sizes.py \\
        --policy runs/lerobot/diffusion_pusht_keypoints/checkpoints/last/pretrained_model \\
        --dataset runs/lerobot/pusht_keypoints_dataset --out runs/lerobot/bench_sizes.json

What it measures, in one process (``torch.set_num_threads(1)``):

1. Iterations, from the TRAINED policy (``--policy``, a lerobot diffusion folder; its step is printed): sequential
   DDIM-T (T = 50), Picard and Picard + TAA at ``--tol`` (default 0.1, full window) on ``--conds`` observation
   windows of the dataset's "eval" episodes (``pcm_policy.lerobot.task``), batch 1 each, x_T drawn as the Task
   draws it. Every model call's row count is recorded (a full-window Picard iteration is one call with up to T
   rows), and the max distance of each output to DDIM-T's (the Task's distance: env pixels).
2. Cost, per size: lerobot ``DiffusionPolicy`` objects built by lerobot with random weights and the trained
   policy's config except ``down_dims`` (``--sizes``: (64,128,256) = 4.5M, (128,256,512) = 16.6M,
   (256,512,1024) = 63.5M parameters): the batch-cost curve (ms of one UNet call with n rows, n = ``--widths``,
   and its ratio to a 1-row call) and the MEASURED latency of sequential DDIM-50 and DDIM-10 (lerobot's own
   schedule re-spaced to 10 steps, what users pick with ``num_inference_steps=10``).
3. Picard / Picard + TAA latency per size is a PROJECTION: the sum, over the recorded calls of the trained policy,
   of that size's measured cost of a call of that many rows (linear between measured widths), averaged over the
   conditions: model calls only, set against DDIM-T's model calls alone (T x a 1-row call) and against DDIM-T
   measured (which includes the sequential loop's own per-step cost). For the trained size (4.5M) the same
   samplers are also timed directly on the trained policy (their per-iteration overhead included). PCM needs an
   adapter trained for this policy (``--adapter``, item 6); without one its row is not printed.

Timings are wall clock on a shared machine: per size, every width and sampler is timed in ONE block of interleaved
rounds (round robin), and the best round is kept (the least disturbed; medians are in the JSON), read as ratios.
Output: a table on stdout and ``--out`` (JSON, written atomically).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from pcm_policy.evaluation.latency import load_average, time_interleaved
from pcm_policy.io import write_json
from pcm_policy.sampling import SamplerSpec

SIZES = {"4.5M": (64, 128, 256), "16.6M": (128, 256, 512), "63.5M": (256, 512, 1024)}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", required=True, help="the trained lerobot diffusion policy folder")
    p.add_argument("--dataset", required=True, help="its LeRobotDataset folder (observation windows)")
    p.add_argument("--adapter", default=None, help="a PCM adapter folder for --policy (optional)")
    p.add_argument("--conds", type=int, default=8, help="observation windows for the iteration counts")
    p.add_argument("--tol", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=50, help="T of the exact trajectory (DDIM-T)")
    p.add_argument("--few-steps", type=int, default=10, help="the few-step DDIM users pick")
    p.add_argument("--sizes", default=",".join(SIZES), help=f"comma list of {', '.join(SIZES)}")
    p.add_argument("--widths", default="1,2,4,8,16,24,32,40,50")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds (the best is kept)")
    p.add_argument("--out", default=None, help="JSON path (written atomically)")
    a = p.parse_args(argv)
    a.sizes = [s.strip() for s in a.sizes.split(",") if s.strip()]
    bad = [s for s in a.sizes if s not in SIZES]
    if bad:
        p.error(f"unknown size {bad}; choose from {', '.join(SIZES)}")
    a.widths = sorted({int(w) for w in a.widths.split(",")})
    if a.widths[0] != 1 or a.widths[-1] < a.steps:
        p.error(f"--widths must include 1 and reach T={a.steps} (a full Picard window)")
    return a


class Recorder:
    """A model function that records the rows of every call (``widths``)."""

    def __init__(self, fn):
        self.fn, self.widths = fn, []

    def __call__(self, x, t, cond, **kw):
        self.widths.append(int(x.shape[0]))
        return self.fn(x, t, cond, **kw)


def build(config, down_dims):
    """A lerobot DiffusionPolicy with ``config`` but ``down_dims``, random weights (lerobot's init), eval mode."""
    import copy

    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    cfg = copy.deepcopy(config)
    cfg.down_dims = tuple(down_dims)
    torch.manual_seed(0)
    return DiffusionPolicy(cfg).eval()


def interp(curve: dict[int, float], w: int) -> float:
    """Cost of a ``w``-row call, linear between the measured widths of ``curve`` (ms), and along the last two of
    them past the widest (PCM's calls carry the jump's row beside a full window: T + 1 rows)."""
    ws = sorted(curve)
    if w in curve:
        return curve[w]
    if w > ws[-1]:
        lo, hi = ws[-2], ws[-1]
    else:
        hi = next(x for x in ws if x > w)
        lo = max(x for x in ws if x < w)
    return curve[lo] + (curve[hi] - curve[lo]) * (w - lo) / (hi - lo)


@torch.no_grad()
def iterations(adapter, conds, x_T, specs, distance):
    """Per sampler: recorded call widths per condition, iterations, max distance to the first sampler's output."""
    out, ref = {}, None
    for name, spec in specs.items():
        sampler = adapter.sampler(spec, solver="ddim")
        rec = Recorder(adapter.model_fn)
        per, xs = [], []
        for i in range(len(conds)):
            n0 = len(rec.widths)
            x, st = sampler(rec, x_T[i:i + 1], conds[i:i + 1])
            per.append(rec.widths[n0:])
            xs.append(x)
        xs = torch.cat(xs)
        ref = xs if ref is None else ref
        out[name] = {"widths": per, "calls": [len(w) for w in per], "rows": [sum(w) for w in per],
                     "max_distance": float(distance(xs, ref).max())}
    return out


def main(argv=None) -> int:
    a = parse(argv)
    torch.set_num_threads(1)
    from pcm_policy.lerobot.adapter import LerobotDiffusion, PolicyFolderError, resolve_policy_folder
    from pcm_policy.lerobot.task import make_task

    try:
        folder = resolve_policy_folder(a.policy)
        trained = LerobotDiffusion.from_folder(folder)
        task = make_task(trained, a.dataset, num_steps=a.steps)
    except (PolicyFolderError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    step = folder.parent.resolve().name
    conds, x_T = task.conditions("eval", a.conds)
    T, k = a.steps, a.few_steps
    specs = {f"DDIM-{T}": SamplerSpec.named("ddim", num_steps=T),
             f"Picard tol {a.tol}": SamplerSpec.named("picard", num_steps=T, tol=a.tol),
             f"Picard+TAA tol {a.tol}": SamplerSpec.named("taa", num_steps=T, tol=a.tol)}
    if a.adapter:
        from pcm_policy.lerobot.dropin import accelerate

        specs[f"PCM tol {a.tol}"] = accelerate(trained.policy, a.adapter, tol=a.tol, num_steps=T).spec
    its = iterations(trained, conds, x_T, specs, task.distance)
    print(f"# policy {folder} (training step {step}), {len(conds)} eval windows, batch 1, T={T}, load "
          f"{load_average()}")
    for name, r in its.items():
        print(f"  {name:22s} calls/chunk mean {statistics.mean(r['calls']):5.2f} (min {min(r['calls'])}, max "
              f"{max(r['calls'])}), rows/chunk {statistics.mean(r['rows']):6.1f}, max distance to DDIM-{T} "
              f"{r['max_distance']:.3g} px")

    report = {"command": "python scripts/lerobot/bench_sizes.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "policy": str(folder), "step": step, "T": T, "tol": a.tol, "conds": len(conds),
              "load_before": load_average(), "iterations": {n: {k2: v for k2, v in r.items() if k2 != "widths"}
                                                            | {"widths": r["widths"]} for n, r in its.items()},
              "sizes": {}}
    g = torch.Generator().manual_seed(1)
    for size in a.sizes:
        pol = build(trained.config, SIZES[size])
        ad = LerobotDiffusion(pol)
        params = sum(p.numel() for p in pol.parameters())
        calls = {}  # ONE interleaved block per size: curve widths and samplers share every round's load
        for w in a.widths:
            x = torch.randn(w, *ad.sample_shape, generator=g)
            t = torch.randint(0, 100, (w,), generator=g)
            c = conds[torch.arange(w) % len(conds)]
            calls[f"call {w}"] = (lambda x=x, t=t, c=c, f=ad.model_fn: f(x, t, c))
        for n, steps in ((f"DDIM-{T}", T), (f"DDIM-{k}", k)):
            s = ad.sampler(SamplerSpec.named("ddim", num_steps=steps))
            calls[n] = (lambda s=s, f=ad.model_fn: s(f, x_T[:1], conds[:1]))
        if tuple(SIZES[size]) == tuple(trained.config.down_dims):  # the trained size: its samplers timed directly
            for n, spec in specs.items():
                s = trained.sampler(spec, solver="ddim")
                calls[f"{n} (trained, measured)"] = (
                    lambda s=s: [s(trained.model_fn, x_T[i:i + 1], conds[i:i + 1]) for i in range(len(conds))])
        with torch.no_grad():
            times = time_interleaved(calls, repeats=a.repeats, warmup=1)
        per = {n: len(conds) if "(trained" in n else 1 for n in times}
        best = {n: min(v) / per[n] for n, v in times.items()}  # best of the rounds: the least disturbed (shared CPU)
        med = {n: statistics.median(v) / per[n] for n, v in times.items()}
        curve = {w: best[f"call {w}"] for w in a.widths}
        calls_only = T * curve[1]  # DDIM-T's model calls alone
        proj = {f"{n} (projected)": statistics.mean(sum(interp(curve, w) for w in ws) for ws in r["widths"])
                for n, r in its.items() if not n.startswith("DDIM")}
        lat = {n: v for n, v in best.items() if not n.startswith("call ")}
        base = lat[f"DDIM-{T}"]
        report["sizes"][size] = {
            "down_dims": SIZES[size], "parameters": params, "repeats": a.repeats,
            "curve_ms_best": curve, "curve_ms_median": {w: med[f"call {w}"] for w in a.widths},
            "curve_ratio": {w: curve[w] / curve[1] for w in curve},
            "latency_ms_best": lat, "latency_ms_median": {n: med[n] for n in lat}, "projected_ms": proj,
            "x_ddim_measured": {n: v / base for n, v in lat.items()},
            "x_ddim_calls_only": {n: v / calls_only for n, v in proj.items()},
            "x_ddim_2row_calls": {n: v / (T * curve[2]) for n, v in proj.items()} if 2 in curve else None}
        del pol, ad
        print(f"\n## {size}: down_dims {SIZES[size]}, {params / 1e6:.2f}M parameters (best of {a.repeats} rounds)")
        print("  batch-cost curve, ms per UNet call (x a 1-row call): " + ", ".join(
            f"{w}: {curve[w]:.1f} ({curve[w] / curve[1]:.2f}x)" for w in a.widths))
        for n, v in lat.items():
            print(f"  {n:40s} {v:9.1f} ms/chunk  {v / base:5.2f}x DDIM-{T} measured (median {med[n]:.1f} ms)")
        print(f"  {'DDIM-' + str(T) + ' model calls alone':40s} {calls_only:9.1f} ms/chunk  ({T} x a 1-row call)")
        if 2 in curve:  # torch's CPU convolutions take oneDNN from 2 rows on: a 1-row call can cost more than 2 rows
            print(f"  {'DDIM-' + str(T) + ' at 2-row calls':40s} {T * curve[2]:9.1f} ms/chunk  ({T} x a 2-row call: "
                  f"the 1-row path sidestepped by a duplicated row)")
        for n, v in proj.items():
            print(f"  {n:40s} {v:9.1f} ms/chunk  {v / calls_only:5.2f}x DDIM-{T}'s model calls, "
                  f"{v / base:5.2f}x DDIM-{T} measured")
    report["load_after"] = load_average()
    if a.out:
        write_json(a.out, json.loads(json.dumps(report, default=str)))
    return 0


if __name__ == "__main__":
    t0 = time.time()
    rc = main()
    print(f"# {time.time() - t0:.0f} s wall", file=sys.stderr)
    sys.exit(rc)
