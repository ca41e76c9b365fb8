"""ms per sequential step vs one Picard iteration (one UNet call of window x B rows, CFG doubled) on this CPU.

    python scripts/vision/bench_window.py --out results/vision_bench_window.json

Models: the tiny LDM and SD pipelines (tests' models) and a mid-sized random UNet2DConditionModel
(35M parameters, 4x16x16 latents), all timed side by side in one run (interleaved repeats, medians).
``--sd14 --device cuda --dtype float16``: instead, a random UNet with SD v1.4's real config, windows
1..T (the GPU check of scripts/device_check.sh).
ratio = median ms(window p) / median ms(step): Picard at window p beats sequential if it needs < T / ratio iterations.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--windows", default="4,8,16", help="window sizes (T is always added)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=1, help="samples B per call")
    p.add_argument("--mid-size", type=int, default=16, help="latent side of the mid-sized UNet")
    p.add_argument("--sd14", action="store_true", help="SD v1.4's real UNet config (random weights), windows 1..T")
    p.add_argument("--device", default="cpu", help="--sd14 only: cpu or cuda[:N]")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"), help="--sd14 only")
    p.add_argument("--out", type=Path, default=ROOT / "runs/vision_bench_window.json")
    p.add_argument("--force", action="store_true", help="allow replacing files git tracks (results/)")
    args = p.parse_args(argv)
    from pcm_policy.io import check_not_shipped

    try:
        for _out in [args.out]:
            check_not_shipped(_out, args.force, "--force", "--out")
    except ValueError as _e:
        p.exit(2, f"error: {_e}\n")
    try:
        windows = [int(w) for w in args.windows.split(",")]
    except ValueError:
        p.exit(2, f"error: --windows must be a comma list of integers, got {args.windows!r}\n")
    if min(windows + [args.repeats, args.batch, args.mid_size]) < 1:
        p.exit(2, "error: --windows, --repeats, --batch and --mid-size must be >= 1\n")
    import torch

    from pcm_policy.io import run_record, write_json
    from pcm_policy.vision.bench import bench_models, bench_sd14

    t0 = time.time()
    if args.sd14:
        res = {"setup": {"note": "random weights: timings only"},
               "sd14_unet": bench_sd14(sorted({1, 2, 4, 8, 16, *windows}), args.repeats, args.batch, args.device,
                                       getattr(torch, args.dtype))}
    else:
        res = bench_models(windows, args.repeats, args.batch, args.mid_size)
    res["setup"] |= {**run_record("scripts/vision/bench_window.py", argv or sys.argv[1:]),
                     "seconds": round(time.time() - t0, 1)}
    for name, r in res.items():
        if name == "setup":
            continue
        print(f"{name} ({r['params'] / 1e6:.2f}M params, T={r['num_steps']}, B={r['batch']}): "
              f"step {r['ms']['sequential']:.1f} ms")
        for w, ratio in r["ratio"].items():
            print(f"  {w:>10}: {r['ms'][w]:8.1f} ms  ratio {ratio:5.2f}  break-even iterations "
                  f"{r['break_even_iterations'][w]:5.1f}")
    write_json(args.out, res)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
