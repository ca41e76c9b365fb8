"""The command line of ``scripts/vision/eval_celeba.py`` (family ldm) and ``eval_sd.py`` (family sd): arguments,
the shipped small models as defaults, one-line errors (exit 2), then one call of ``evaluate.evaluate``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = {"ldm": ("checkpoints/vision/ldm_mnist", "checkpoints/vision/ldm_mnist_pcm"),
           "sd": ("checkpoints/vision/sd_mnist", "checkpoints/vision/sd_mnist_pcm")}
REAL = {"ldm": ("CompVis/ldm-celebahq-256", "LDM-CelebA-HQ", "CelebA-HQ"),
        "sd": ("CompVis/stable-diffusion-v1-4", "Stable Diffusion v1.4", "SD v1.4")}
SCRIPT = {"ldm": "eval_celeba.py", "sd": "eval_sd.py"}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"error: {message}\n")


def parser(family: str, description: str) -> argparse.ArgumentParser:
    repo, _, _ = REAL[family]
    p = _Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None,
                   help=f"model folder in the {repo} layout (default: the shipped stand-in {SHIPPED[family][0]})")
    p.add_argument("--adapter", type=Path, default=None,
                   help=f"PCM adapter folder (default with the stand-in: {SHIPPED[family][1]})")
    p.add_argument("--samplers", default="sequential,ddim-k,picard,taa,pcm", help="comma list")
    p.add_argument("--ks", default="1,2,3,4,5", help="comma list of budgets k (sequential model calls)")
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
    p.add_argument("--out", type=Path, default=ROOT / "runs" / f"eval_{'celeba' if family == 'ldm' else 'sd'}")
    p.add_argument("--force", action="store_true", help="allow writing into files git tracks (results/)")
    return p


def main(family: str, argv=None, description: str = "") -> int:
    """Parse ``argv``, evaluate, print the table; 0, or 2 with one ``error:`` line on bad input."""
    a = parser(family, description).parse_args(argv)
    try:
        return _run(family, a)
    except (ValueError, OSError, ImportError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # one line: what was kept, how to resume; exit 130
        print(f"\ninterrupted: the finished cells are kept in {a.out}/cells (and the reference features in the "
              "cache); re-run the same command to resume from them", file=sys.stderr)
        return 130


def _run(family: str, a) -> int:
    import torch

    from ..io import check_not_shipped
    from .evaluate import DIGIT_PROMPTS, NAMES, default_reference, evaluate
    from .loaders import check_folder

    repo, name, data = REAL[family]
    try:
        samplers = [s for s in a.samplers.split(",") if s]
        ks = [int(k) for k in a.ks.split(",") if k]
    except ValueError as e:
        raise ValueError(f"--ks must be a comma list of integers ({e})") from e
    bad = [s for s in samplers if s not in NAMES]
    if bad:
        raise ValueError(f"unknown sampler(s) {', '.join(bad)}; choose from {', '.join(NAMES)}")
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
        raise ValueError(f"{model} is a {layout.pipeline} ({layout.family}) folder; {SCRIPT[family]} evaluates the "
                         f"{repo} layout: use {SCRIPT[other]}")
    if a.reference is None and not stand_in:
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
        raise ValueError(f"{SCRIPT[family]}: the {repo} model is unconditional and takes no --prompts")
    if family == "ldm" and a.guidance is not None:
        raise ValueError(f"{SCRIPT[family]}: the {repo} model is unconditional and takes no --guidance")
    check_not_shipped(a.out, a.force, "--force", "--out")
    if a.threads:
        from ..device import check_threads

        torch.set_num_threads(check_threads(a.threads))
    note = (f"Stand-in model: {SHIPPED[family][0]} is a small model trained here on MNIST digits, not {name}; "
            f"these are NOT {data} / {name} results.") if stand_in else None
    reference = a.reference if a.reference is not None else default_reference()
    res = evaluate(model, out=a.out, adapter=adapter, samplers=samplers, ks=ks, num_samples=a.num_samples,
                   seed=a.seed, steps=a.steps, prompts=prompts, guidance=a.guidance, reference=reference,
                   clip=a.clip, batch_size=a.batch_size, stand_in=note)
    print(f"wrote {a.out}/metrics.json, metrics.csv, table.md, grid.png, pareto.png ({res['elapsed_s']:.0f} s)")
    return 0
