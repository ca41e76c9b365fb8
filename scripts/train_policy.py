r"""Train the PushT diffusion policy (DDPM, epsilon loss, EMA) and write a checkpoint folder.

    python scripts/train_policy.py task=pusht
    python scripts/train_policy.py task=pusht policy=medium training.steps=100000
    python scripts/train_policy.py task=pusht training=smoke          # runs/pusht_small_smoke
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
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from pcm_policy.data import ReplayBufferError  # noqa: E402
from pcm_policy.io import check_not_shipped  # noqa: E402
from pcm_policy.pusht.checkpoint import CheckpointError, load_policy, save_policy  # noqa: E402
from pcm_policy.pusht.dataset import PushTLowdimDataset  # noqa: E402
from pcm_policy.pusht.normalizer import NormalizerDict  # noqa: E402
from pcm_policy.pusht.policy import DiffusionPolicy, PolicyConfig  # noqa: E402
from pcm_policy.training import LoopConfig, ResumeError, infinite_batches, train  # noqa: E402

NOT_THE_RUN = ("threads", "force", "run_dir")  # settings that do not change what a run computes


def resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


@hydra.main(config_path="../configs", config_name="train_policy", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (ReplayBufferError, ResumeError, CheckpointError, ValueError) as e:  # one line, no traceback
        raise SystemExit(f"error: {e}") from None


def run(cfg: DictConfig) -> None:
    if int(cfg.threads) < 1:
        raise ValueError(f"threads must be >= 1, got {cfg.threads}")
    torch.set_num_threads(int(cfg.threads))
    check_not_shipped(resolve(cfg.run_dir), bool(cfg.force), "force=true", "run_dir")
    task, tr = cfg.task, cfg.training
    dataset_path = resolve(task.dataset)
    if not dataset_path.exists():
        raise SystemExit(f"error: dataset {dataset_path} not found; make one with "
                         "python scripts/collect_demos.py --episodes 1000 --out data/pusht_expert.zarr")
    kw = dict(horizon=task.horizon, pad_before=task.n_obs_steps - 1, pad_after=task.n_action_steps - 1,
              obs_type=task.obs_type, val_ratio=task.val_ratio, seed=task.split_seed,
              max_train_episodes=task.max_train_episodes)
    train_set = PushTLowdimDataset(str(dataset_path), split="train", **kw)
    val_set = train_set.get_validation_dataset()
    parts = [train_set]
    for extra in task.get("extra_datasets") or []:
        if not resolve(extra).exists():
            raise SystemExit(f"error: task.extra_datasets entry {resolve(extra)} not found")
        parts.append(PushTLowdimDataset(str(resolve(extra)), split="train",
                                        **{**kw, "val_ratio": 0.0, "max_train_episodes": None}))
    pcfg = PolicyConfig(obs_type=task.obs_type, horizon=task.horizon, n_obs_steps=task.n_obs_steps,
                        n_action_steps=task.n_action_steps, unet_size=cfg.policy.unet_size,
                        unet=OmegaConf.to_container(cfg.policy.unet))
    if cfg.get("init_from"):
        try:
            policy = load_policy(resolve(cfg.init_from))
        except CheckpointError as e:
            raise SystemExit(f"error: init_from: {e}") from e
        if policy.cfg != pcfg:
            raise SystemExit(f"error: init_from={cfg.init_from} holds {policy.cfg}, but this run configures "
                             f"{pcfg}; pick the matching policy=... or drop init_from")
    else:
        policy = DiffusionPolicy(pcfg)
        # Normaliser fitted on every episode (train and validation) of every store, as the reference does.
        policy.normalizer.load_state_dict(NormalizerDict.fit(
            {"obs": np.concatenate([d.get_all_obs() for d in parts]),
             "action": np.concatenate([d.get_all_actions() for d in parts])}).state_dict())
    train_set = parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)

    g = torch.Generator().manual_seed(int(tr.seed))
    loader = torch.utils.data.DataLoader(train_set, batch_size=int(tr.batch_size), shuffle=True, drop_last=True,
                                         generator=g)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=256, shuffle=False)
    run_dir = resolve(cfg.run_dir)
    n_params = sum(p.numel() for p in policy.model.parameters())
    command = "python scripts/train_policy.py " + " ".join(sys.argv[1:])
    print(f"policy {cfg.policy.name}: {n_params:,} parameters; {len(train_set)} train windows "
          f"({sum(int(d.train_mask.sum()) for d in parts)} episodes), {len(val_set)} val windows; run dir {run_dir}")

    @torch.no_grad()
    def val_fn(model):
        gen = torch.Generator().manual_seed(0)  # same noise every time: comparable numbers
        losses = [model.compute_loss(b, generator=gen).item() for b in val_loader]
        return {"val_loss": sum(losses) / max(1, len(losses))}

    def save_fn(model, step):
        extra = {"step": abs(step), "parameters": n_params, "command": command,
                 "training": OmegaConf.to_container(tr), "task": OmegaConf.to_container(task)}
        folder = run_dir / ("checkpoint" if step >= 0 else f"snapshots/step_{-step:07d}")
        save_policy(model, folder, extra)

    loop = LoopConfig(**{k: v for k, v in OmegaConf.to_container(tr).items() if k != "batch_size"})
    config = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in NOT_THE_RUN}
    train(policy, policy.compute_loss, infinite_batches(loader), loop, run_dir, save_fn, val_fn,
          desc=f"train {cfg.policy.name}", config=config)
    print(f"done: EMA checkpoint at {run_dir / 'checkpoint'}")


if __name__ == "__main__":
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        print(__doc__)
    main()
