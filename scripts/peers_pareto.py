"""Score vs sequential calls and score vs CPU latency (1 thread, batch 1) for every peer on PushT, from measured rows.

    python scripts/peers_pareto.py --paired results/peers/paired_eval200.json --latency-out results/peers/latency.json \
        --out results/peers/pareto.png

1. Latency (unless --latency-from FILE reuses a measurement): each (sampler, k) of the paired rows, plus DDIM-50,
   samples one chunk at batch 1 on one thread (frozen graphs) for the start states of training seeds
   FIRST..LAST, --repeats rounds; rounds are interleaved over the cells (round r of every cell before round r + 1
   of any), so a shared machine's load falls on all of them alike. Per cell: median and minimum ms per chunk.
2. Figure: two panels, mean closed-loop score against the sequential (batched) calls k and against the median
   latency, one marker series per sampler (hollow: a row on fewer episodes than DDIM-50's), DDIM-50 as a line,
   the front of points no other point beats in both.
   Calls are what a GPU pays (a call of a 50-row window costs about what a 1-row call does there); on this CPU a
   call's cost grows with its rows, which the latency panel shows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def measure(cells, *, seeds, repeats, checkpoint, adapter, progress=print) -> dict:
    """{"cells": [{"sampler", "k", "median_ms", "min_ms", "n"}], ...}: batch-1 chunk latency of every cell."""
    import numpy as np
    import torch

    from pcm_policy.pusht.peers import check_seeds, load_peer_policies, peer_sampler, reset_conditions
    from pcm_policy.sampling import make_sampler

    check_seeds(seeds)
    torch.set_num_threads(1)
    base, pcm, spec = load_peer_policies(checkpoint, adapter)
    conds = reset_conditions(base, list(seeds))
    x_T = torch.randn((len(seeds), base.cfg.horizon, base.cfg.action_dim), generator=torch.Generator().manual_seed(0))
    runs = {}
    for name, k in cells:
        if name == "ddim" and k == 50:
            runs[(name, k)] = (make_sampler("ddim", base.noise_scheduler, num_steps=50), base)
        else:
            runs[(name, k)] = (peer_sampler(name, base, spec, k), pcm if name == "pcm" else base)
    times = {c: [] for c in cells}
    with torch.no_grad():
        for s, pol in runs.values():  # warm-up: the frozen graphs optimise over their first calls
            for _ in range(3):
                s(pol.model_fn, x_T[:1], conds[:1])
        for r in range(repeats):
            for c, (s, pol) in runs.items():
                for i in range(len(seeds)):
                    t0 = time.perf_counter()
                    s(pol.model_fn, x_T[i:i + 1], conds[i:i + 1])
                    times[c].append(1e3 * (time.perf_counter() - t0))
            progress(f"round {r + 1}/{repeats} done")
    return {"threads": 1, "batch": 1, "seeds": [seeds[0], seeds[-1]], "repeats": repeats,
            "cells": [{"sampler": n, "k": k, "median_ms": float(np.median(t)), "min_ms": float(np.min(t)),
                       "n": len(t)} for (n, k), t in times.items()]}


def front(points):
    """Points (x, y) no other point beats in both (smaller x, larger y), sorted by x."""
    out, best = [], -float("inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            out, best = out + [(x, y)], y
    return out


def plot(paired: dict, lat: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = {(c["sampler"], c["k"]): c["median_ms"] for c in lat["cells"]}
    ref = paired["reference"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    names = list(dict.fromkeys(r["sampler"] for r in paired["rows"]))
    for ax, xkey, xlabel in ((axes[0], "k", "sequential batched calls k"),
                             (axes[1], "ms", "CPU latency per chunk (ms, 1 thread, batch 1, median)")):
        pts = []
        for n in names:
            rows = sorted((r for r in paired["rows"] if r["sampler"] == n), key=lambda r: r["k"])
            xs = [r["k"] if xkey == "k" else ms.get((n, r["k"])) for r in rows]
            keep = [(x, r) for x, r in zip(xs, rows, strict=True) if x is not None]
            if not keep:
                continue
            line, = ax.plot([x for x, _ in keep], [r["mean_score"] for _, r in keep], "-", label=n)
            for x, r in keep:  # rows on fewer episodes than the reference: hollow markers
                full = r.get("episodes", ref["episodes"]) >= ref["episodes"]
                ax.plot([x], [r["mean_score"]], "o", ms=5, color=line.get_color(),
                        mfc=line.get_color() if full else "none")
            for x, r in keep:
                ax.annotate(str(r["k"]), (x, r["mean_score"]), fontsize=7, xytext=(2, 2), textcoords="offset points")
            pts += [(x, r["mean_score"]) for x, r in keep]
        x50 = 50 if xkey == "k" else ms.get(("ddim", 50))
        if x50 is not None:
            ax.scatter([x50], [ref["mean_score"]], marker="*", s=120, c="k", label="DDIM-50", zorder=5)
            pts.append((x50, ref["mean_score"]))
        ax.axhline(ref["mean_score"], color="k", lw=0.8, ls=":")
        f = front(pts)
        ax.step(*zip(*f, strict=True), "k--", where="post", lw=1, label="front")
        ax.set(xscale="log", xlabel=xlabel, ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"mean score ({ref['episodes']} evaluation episodes; hollow: fewer; labels: k)")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle("PushT: score vs calls and vs CPU latency, every peer")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paired", type=Path, required=True, help="scripts/peers_paired.py's JSON")
    p.add_argument("--latency-from", type=Path, default=None, help="reuse this latency JSON instead of measuring")
    p.add_argument("--latency-out", type=Path, default=None, help="write the measured latencies here")
    p.add_argument("--seeds", type=int, nargs=2, default=(400_000, 400_007), metavar=("FIRST", "LAST"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoints/pusht_base"))
    p.add_argument("--adapter", type=Path, default=Path("checkpoints/pusht_pcm"))
    p.add_argument("--out", type=Path, required=True, help="the figure (PNG)")
    p.add_argument("--force", action="store_true", help="allow replacing files git tracks")
    a = p.parse_args(argv)
    from pcm_policy.io import check_not_shipped, write_json
    from pcm_policy.pusht.checkpoint import CheckpointError

    try:
        for f in (a.out, a.latency_out):
            if f is not None:
                check_not_shipped(f, a.force, "--force", "--out / --latency-out")
        paired = json.loads(a.paired.read_text())
        if a.latency_from is not None:
            lat = json.loads(a.latency_from.read_text())
        else:
            if a.seeds[1] < a.seeds[0] or a.repeats < 1:
                raise ValueError("need --seeds FIRST <= LAST and --repeats >= 1")
            cells = sorted({(r["sampler"], r["k"]) for r in paired["rows"]} | {("ddim", 50)}, key=lambda c: c[::-1])
            lat = measure(cells, seeds=range(a.seeds[0], a.seeds[1] + 1), repeats=a.repeats,
                          checkpoint=a.checkpoint, adapter=a.adapter)
            lat["command"] = "python scripts/peers_pareto.py " + " ".join(sys.argv[1:] if argv is None else argv)
            if a.latency_out is not None:
                write_json(a.latency_out, lat)
        plot(paired, lat, a.out)
    except (CheckpointError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for c in sorted(lat["cells"], key=lambda c: (c["k"], c["sampler"])):
        print(f"{c['sampler']:12s} k={c['k']:2d}  median {c['median_ms']:8.1f} ms  min {c['min_ms']:8.1f} ms")
    print(f"figure: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
