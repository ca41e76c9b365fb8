"""ms per sequential step vs one Picard iteration (one UNet call of window x B rows, CFG doubled) on this CPU.

    python scripts/vision/bench_window.py --out results/vision_bench_window.json

Models: the tiny LDM and SD pipelines (tests' models) and a mid-sized random UNet2DConditionModel
(35M parameters, 4x16x16 latents), all timed side by side in one run (interleaved repeats, medians).
ratio = median ms(window p) / median ms(step): Picard at window p beats sequential if it needs < T / ratio iterations.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--windows", default="4,8,16", help="window sizes (T is always added)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=1, help="samples B per call")
    p.add_argument("--mid-size", type=int, default=16, help="latent side of the mid-sized UNet")
    p.add_argument("--out", type=Path, default=ROOT / "results/vision_bench_window.json")
    args = p.parse_args(argv)
    from pcm_policy.vision.bench import bench_models

    t0 = time.time()
    res = bench_models([int(w) for w in args.windows.split(",")], args.repeats, args.batch, args.mid_size)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    res["setup"] |= {"command": " ".join(["python scripts/vision/bench_window.py", *(argv or sys.argv[1:])]),
                     "commit": commit.stdout.strip(), "date": time.strftime("%Y-%m-%d %H:%M"),
                     "seconds": round(time.time() - t0, 1)}
    for name, r in res.items():
        if name == "setup":
            continue
        print(f"{name} ({r['params'] / 1e6:.2f}M params, T={r['num_steps']}, B={r['batch']}): "
              f"step {r['ms']['sequential']:.1f} ms")
        for w, ratio in r["ratio"].items():
            print(f"  {w:>10}: {r['ms'][w]:8.1f} ms  ratio {ratio:5.2f}  break-even iterations "
                  f"{r['break_even_iterations'][w]:5.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
