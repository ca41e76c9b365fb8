"""Generate images from a local LDM-CelebA or Stable Diffusion v1.4 folder with a sampler of the core.

    python scripts/vision/generate.py --model ~/models/ldm-celebahq-256 --sampler picard --steps 50 --num-samples 4
    python scripts/vision/generate.py --model ~/models/stable-diffusion-v1-4 --sampler ddim --steps 30 \\
        --prompt "a photo of a cat" --guidance 7.5 --seed 0 --out runs/samples/cat
    python scripts/vision/generate.py --model DIR --adapter ADAPTER_DIR --sampler pcm --steps 30 --prompt "..."
    python scripts/vision/generate.py --sampler picard --num-samples 16                 # shipped ldm_mnist
    python scripts/vision/generate.py --prompt "a handwritten digit seven" --num-samples 16   # shipped sd_mnist

Without --model: checkpoints/vision/sd_mnist when --prompt is given, else checkpoints/vision/ldm_mnist.
These are SMALL STAND-INS trained here on MNIST digits in the two real layouts (their TRAINING.json says
how), not CelebA-HQ or Stable Diffusion v1.4.

Writes sample_XXXX.png, grid.png, samples.npz (images (N,H,W,3) uint8, latents (N,C,h,w) float32) and
stats.json (iterations, NFE, ms per sample, the sampler spec) to --out (default runs/samples). Sample i uses
seed S + i, drawn as the diffusers pipeline draws it: sequential DDIM gives the pipeline's image. Nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's own prints the usage too)
        self.exit(2, f"error: {message}\n")


def parse_args(argv=None) -> argparse.Namespace:
    from pcm_policy.sampling import SAMPLERS

    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None,
                   help="local model folder (LDM-CelebA or SD v1.4 layout); default: the shipped small digit "
                   "model (sd_mnist with --prompt, else ldm_mnist)")
    p.add_argument("--adapter", type=Path, default=None, help="PCM adapter folder (pcm only)")
    names = [s for s in SAMPLERS if s != "newton"]  # newton's JVP emulation fails inside diffusers' UNets
    p.add_argument("--sampler", choices=names, default="ddim", help="a sampler of pcm_policy.sampling (pcm: with "
                   "--adapter)")
    p.add_argument("--steps", type=int, default=50, help="T, the DDIM steps of the trajectory")
    p.add_argument("--k", type=int, default=None, help="iteration budget (ddim: truncation)")
    p.add_argument("--tol", type=float, default=None, help="Picard tolerance (default: the sampler's)")
    p.add_argument("--window", type=int, default=None, help="Picard window (default: all T)")
    p.add_argument("--prompt", default=None, help="text prompt (sd only)")
    p.add_argument("--negative-prompt", default="", help='unconditional prompt (default "")')
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (sd only)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed S + i")
    p.add_argument("--batch-size", type=int, default=None, help="samples per sampler call (default: all)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help="UNet dtype")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "samples",
                   help="output folder (default runs/samples, git-ignored); a folder git tracks needs --force")
    p.add_argument("--force", action="store_true", help="allow --out to replace files git tracks (results/)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from pcm_policy import vision

    try:
        from pcm_policy.io import check_not_shipped

        check_not_shipped(args.out, args.force, "--force", "--out")
        gen = vision.generate(args.model, sampler=args.sampler, steps=args.steps, k=args.k, tol=args.tol,
                              window=args.window, prompt=args.prompt, negative_prompt=args.negative_prompt,
                              guidance=args.guidance, num_samples=args.num_samples, seed=args.seed,
                              batch_size=args.batch_size, dtype=args.dtype, adapter=args.adapter)
        out = vision.save_generation(gen, args.out)
    except (ValueError, OSError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    s = gen.stats
    print(f"{s['label']}: {s['num_samples']} samples, iterations {s['iterations']}, NFE/sample "
          f"{s['nfe_per_sample']:.1f}, {s['ms_per_sample']:.1f} ms/sample -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
