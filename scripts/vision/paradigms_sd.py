"""diffusers' own StableDiffusionParadigmsPipeline against our Picard / TAA / PCM on an SD-layout folder, at a
matched final distance to sequential DDIM-T (``pcm_policy.vision.paradigms``).

    python scripts/vision/paradigms_sd.py --out results/vision/paradigms_sd.json     # the shipped sd stand-in

Same prompts, guidance, x_T for every method; prints each method's runs (latent RMSE to sequential, batched
calls, NFE per sample, wall seconds) and the matched table. Stand-in numbers are not SD v1.4 results.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[2]
MODEL, ADAPTER = ROOT / "checkpoints/vision/sd_mnist", ROOT / "checkpoints/vision/sd_mnist_pcm"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=MODEL, help="SD-layout folder (default: the sd stand-in)")
    p.add_argument("--adapter", type=Path, default=None, help="PCM adapter (default with the stand-in: its own)")
    p.add_argument("--num-samples", type=int, default=10, help="N: seeds S..S+N-1, the digit prompts cycled")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--parallel", type=int, default=None, help="the window (default T)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="JSON output")
    a = p.parse_args(argv)
    try:
        import torch

        from pcm_policy.adapters import load_adapter_folder
        from pcm_policy.io import write_json
        from pcm_policy.vision.evaluate import DIGIT_PROMPTS
        from pcm_policy.vision.loaders import load_model
        from pcm_policy.vision.paradigms import compare_paradigms

        if a.num_samples < 1 or a.steps < 1 or a.threads < 1:
            raise ValueError("--num-samples, --steps and --threads must be >= 1")
        torch.set_num_threads(a.threads)
        model = load_model(a.model)
        adapter = a.adapter or (ADAPTER if a.model == MODEL else None)
        spec = load_adapter_folder(model.unet, adapter)[0] if adapter else None
        seeds = list(range(a.seed, a.seed + a.num_samples))
        prompts = [DIGIT_PROMPTS[i % len(DIGIT_PROMPTS)] for i in range(a.num_samples)]
        res = compare_paradigms(model, prompts=prompts, seeds=seeds, num_steps=a.steps, parallel=a.parallel,
                                pcm_spec=spec)
    except (ValueError, OSError, ImportError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    print(f"\nmatched final distance (latent RMSE to sequential DDIM-{a.steps}); calls / calls per sample / NFE per "
          "sample / wall s")
    for m in res["matched"]:
        r = m["paradigms"]
        print(f"ParaDiGMS tol {r['tol']:g}: {r['distance']:.4f}, {r['iterations']} / "
              f"{r['nfe']:.1f} / {r['wall_s']:.2f}")
        for name in (k for k in m if k != "paradigms"):
            o = m[name]
            print(f"    {name:7s} " + ("none within" if o is None else
                                      f"tol {o['tol']:g}: {o['distance']:.4f}, {o['iterations']} / "
                                      f"{o['mean_sample_iterations']:.1f} / {o['nfe']:.1f} / {o['wall_s']:.2f}"))
    if a.out:
        res["command"] = " ".join(["python scripts/vision/paradigms_sd.py", *(sys.argv[1:] if argv is None else argv)])
        write_json(a.out, res)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
