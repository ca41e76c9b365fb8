r"""Train the PushT diffusion policy (DDPM, epsilon loss, EMA) and write a checkpoint folder.

    python scripts/train_policy.py task=pusht
    python scripts/train_policy.py task=pusht policy=medium training.steps=100000
    python scripts/train_policy.py task=pusht training=smoke          # runs/pusht_small_smoke
    torchrun --standalone --nproc_per_node=N scripts/train_policy.py device=cuda   # data-parallel on N GPUs
    python scripts/train_policy.py task=pusht 'task.extra_datasets=[data/pusht_dagger.zarr]' \
        init_from=checkpoints/pusht_base training.steps=20000 run_dir=runs/pusht_small_dagger

``task.extra_datasets`` adds stores (e.g. DAgger relabels) to the training windows only; validation stays on
the main store's held-out episodes. ``init_from`` starts from a policy checkpoint's weights and normaliser
(fine-tuning); its model config must match ``policy``.

The run folder ``run_dir`` defaults to ``runs/<task>_<policy>_<training>``: each choice of configs gets
its own. Re-running the same command resumes from ``run_dir/state.pt`` (it says so); a resume with another
config (``run_dir/config.json`` differs, e.g. ``training.steps=...``) is refused: pass a new ``run_dir``.
The EMA policy is written to ``run_dir/checkpoint`` (config.json + model.safetensors) at every
``ckpt_every`` steps, with ``run_dir/log.jsonl`` holding loss, validation loss and learning rate.
Nothing is written into files git tracks (the shipped ``checkpoints/``) unless ``force=true``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from pcm_policy.pusht.train import train_policy  # noqa: E402
from pcm_policy.training.cli import run_job  # noqa: E402


@hydra.main(config_path="../configs", config_name="train_policy", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job("train_policy.py", lambda command: train_policy(OmegaConf.to_container(cfg, resolve=True), command, ROOT),
            "interrupted before training started (nothing saved)")


if __name__ == "__main__":
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        print(__doc__)
    main()
