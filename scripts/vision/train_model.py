"""Train the small image models that ship with pcm-policy (stand-ins trained here on MNIST digits).

    python scripts/vision/train_model.py --family classifier      # digit CNN, ~1 min
    python scripts/vision/train_model.py --family ldm             # VQModel + UNet2DModel, LDM-CelebA layout
    python scripts/vision/train_model.py --family sd              # AutoencoderKL + UNet2DConditionModel +
                                                                  # CLIP text encoder, SD v1.4 layout
    python scripts/vision/train_model.py --family ldm --out checkpoints/vision/ldm_mnist --force   # ship
    torchrun --standalone --nproc_per_node=N scripts/vision/train_model.py --family ldm   # N processes (CPU)

Runs go to --run-dir (default runs/vision/<family>_mnist); rerunning the same command resumes there (a
finished stage is not retrained; another config is refused). The pipeline folder is run_dir/model
(written with the real pipeline's save_pretrained), with TRAINING.json (command, config, commit, train
seconds, logs, metrics), log_*.jsonl and samples.png. --out copies it (classifier: its two files) to a
folder; files git tracks (the shipped checkpoints/) are replaced only with --force.
These are SMALL STAND-INS trained on 4,000 MNIST digits: never CelebA-HQ or SD v1.4 results.
Under torchrun (ldm, sd) the N processes train data-parallel (gloo, CPU): each stage's batch is split over
them (it must be divisible by N), rank 0 alone writes; a stopped run resumes with any number of processes.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message}\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=("ldm", "sd", "classifier"), required=True)
    p.add_argument("--preset", default=None, help="a pcm_policy.vision.train.PRESETS name (default: the family)")
    p.add_argument("--run-dir", type=Path, default=None, help="default runs/vision/<family>_mnist")
    p.add_argument("--ae-steps", type=int, default=None)
    p.add_argument("--unet-steps", type=int, default=None)
    p.add_argument("--steps", type=int, default=1500, help="classifier steps")
    p.add_argument("--no-eval", action="store_true", help="skip the sample grid and class metrics")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", type=Path, default=None, help="copy the result here (e.g. checkpoints/vision/ldm_mnist)")
    p.add_argument("--force", action="store_true", help="allow --out to replace files git tracks")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from pcm_policy.io import check_not_shipped
    from pcm_policy.training import ResumeError
    from pcm_policy.training import distributed as dist

    torch.set_num_threads(args.threads)
    command = "python " + shlex.join(["scripts/vision/train_model.py", *(sys.argv[1:] if argv is None else argv)])
    run_dir = args.run_dir or ROOT / "runs" / "vision" / f"{args.family}_mnist"
    try:
        if args.out is not None:  # refuse before hours of training, not after
            check_not_shipped(args.out, args.force, "--force", "--out")
        world = dist.env_world_size()
        if args.family == "classifier" and world > 1:
            raise ValueError("--family classifier trains in one process; run it without torchrun")
        if args.family == "classifier":
            from pcm_policy.vision.classifier import train_classifier

            weights = train_classifier(run_dir, steps=args.steps, command=command)
            if args.out is not None:
                args.out.mkdir(parents=True, exist_ok=True)
                for f in (weights, weights.with_suffix(".json")):
                    shutil.copyfile(f, args.out / f.name)
            print(f"digit classifier -> {weights if args.out is None else args.out}")
            return 0
        from pcm_policy.vision.train import PRESETS, save_pipeline, train_model, with_overrides  # noqa: F401

        preset = args.preset or args.family
        if preset not in PRESETS or PRESETS[preset].family != args.family:
            raise ValueError(f"--preset must be one of {[k for k, v in PRESETS.items() if v.family == args.family]}")
        cfg = with_overrides(PRESETS[preset], ae_steps=args.ae_steps, unet_steps=args.unet_steps)
        dist.check_divisible(cfg.ae_batch, "the autoencoder batch (ae_batch)", world)  # before any work
        dist.check_divisible(cfg.unet_batch, "the UNet batch (unet_batch)", world)
        dist.init_from_env("cpu")  # torchrun: join the process group (one process: nothing)
        folder = train_model(cfg, run_dir, evaluate=not args.no_eval, command=command)
        if not dist.is_main():
            return 0
        if args.out is not None:
            tmp = args.out.with_name(args.out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(folder, tmp)
            shutil.rmtree(args.out, ignore_errors=True)
            tmp.rename(args.out)
        print(f"{args.family} model -> {folder if args.out is None else args.out}")
    except (ValueError, ResumeError, OSError, dist.DistributedError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    finally:
        dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
