"""Train the PushT diffusion policy (DDPM, epsilon loss, EMA) into a checkpoint folder (``scripts/train_policy.py``).

Called with the resolved hydra config as a plain dict (the library never sees hydra): ``task`` (dataset,
horizon, observation and action steps, split), ``policy`` (name, unet_size, unet), ``training`` (the
``LoopConfig`` fields plus batch_size and seed), ``run_dir``, ``init_from``, ``force``, ``threads``.
``task.extra_datasets`` add stores to the training windows only; validation stays on the main store's
held-out episodes. ``init_from`` starts from a checkpoint's weights and normaliser (its config must match).
Under ``torchrun --nproc_per_node=N`` it trains data-parallel (``training.distributed``): ``training.batch_size``
is the whole batch, split over the N processes (it must be divisible by N); ``device: cuda`` puts process r on
GPU r (nccl), ``device: cpu`` uses gloo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..device import check_threads, pick_device
from ..io import check_not_shipped
from ..training import LoopConfig, hold_run_folder, infinite_batches, train
from ..training.distributed import check_divisible, env_world_size, init_from_env, world_size
from .checkpoint import load_policy, save_policy
from .dataset import PushTLowdimDataset
from .normalizer import NormalizerDict
from .policy import DiffusionPolicy, PolicyConfig

__all__ = ["NOT_THE_RUN", "train_policy"]

NOT_THE_RUN = ("threads", "force", "run_dir", "device")  # settings that do not change what a run computes


def train_policy(cfg: dict, command: str, root: Path) -> Path:
    """One training run from a resolved config dict; resumes ``run_dir/state.pt`` when present.

    Args:
        cfg: the config (see the module doc); relative paths are taken from ``root``.
        command: recorded in every checkpoint's config.json.
        root: the repository root.
    Returns:
        the EMA checkpoint folder, ``run_dir/checkpoint`` (written every ``ckpt_every`` steps; log in
        ``run_dir/log.jsonl``).
    Raises:
        ValueError: threads < 1, a missing dataset, an ``init_from`` that cannot be loaded or does not
        match ``policy``, a shipped ``run_dir`` without force; ReplayBufferError (a bad store),
        ResumeError (a resume under another config), CheckpointError.
    """
    def resolve(path) -> Path:
        p = Path(path)
        return p if p.is_absolute() else root / p

    torch.set_num_threads(check_threads(cfg["threads"], "threads"))
    device = pick_device(cfg.get("device") or "cpu")
    tr = cfg["training"]
    loop = LoopConfig(**{k: v for k, v in tr.items() if k != "batch_size"})  # every setting checked before any work
    if not (isinstance(tr["batch_size"], int) and tr["batch_size"] >= 1):
        raise ValueError(f"training batch_size must be an integer >= 1, got {tr['batch_size']!r}")
    check_divisible(tr["batch_size"], "training batch_size", env_world_size())
    device = init_from_env(device.type)  # joins torchrun's process group (WORLD_SIZE > 1): cuda:LOCAL_RANK or cpu
    run_dir = resolve(cfg["run_dir"])
    check_not_shipped(run_dir, bool(cfg["force"]), "force=true", "run_dir")
    task, tr, pol = cfg["task"], cfg["training"], cfg["policy"]
    dataset_path = resolve(task["dataset"])
    if not dataset_path.exists():
        raise ValueError(f"dataset {dataset_path} not found; make one with "
                         "python scripts/collect_demos.py --episodes 1000 --out data/pusht_expert.zarr")
    with hold_run_folder(run_dir):  # a second job in this run folder is refused here, before any set-up work
        kw = dict(horizon=task["horizon"], pad_before=task["n_obs_steps"] - 1, pad_after=task["n_action_steps"] - 1,
                  obs_type=task["obs_type"], val_ratio=task["val_ratio"], seed=task["split_seed"],
                  max_train_episodes=task["max_train_episodes"])
        train_set = PushTLowdimDataset(str(dataset_path), split="train", **kw)
        val_set = train_set.get_validation_dataset()
        parts = [train_set]
        for extra in task.get("extra_datasets") or []:
            if not resolve(extra).exists():
                raise ValueError(f"task.extra_datasets entry {resolve(extra)} not found")
            parts.append(PushTLowdimDataset(str(resolve(extra)), split="train",
                                            **{**kw, "val_ratio": 0.0, "max_train_episodes": None}))
        pcfg = PolicyConfig(obs_type=task["obs_type"], horizon=task["horizon"], n_obs_steps=task["n_obs_steps"],
                            n_action_steps=task["n_action_steps"], unet_size=pol["unet_size"], unet=pol["unet"])
        if cfg.get("init_from"):
            try:
                policy = load_policy(resolve(cfg["init_from"]))
            except ValueError as e:  # CheckpointError
                raise ValueError(f"init_from: {e}") from e
            if policy.cfg != pcfg:
                raise ValueError(f"init_from={cfg['init_from']} holds {policy.cfg}, but this run configures "
                                 f"{pcfg}; pick the matching policy=... or drop init_from")
        else:
            torch.manual_seed(int(tr["seed"]))  # the initial weights too: the same config trains the same policy
            policy = DiffusionPolicy(pcfg)
            # Normaliser fitted on every episode (train and validation) of every store, as the reference does.
            policy.normalizer.load_state_dict(NormalizerDict.fit(
                {"obs": np.concatenate([d.get_all_obs() for d in parts]),
                 "action": np.concatenate([d.get_all_actions() for d in parts])}).state_dict())
        train_set = parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)
        policy.to(device)

        g = torch.Generator().manual_seed(int(tr["seed"]))
        loader = torch.utils.data.DataLoader(train_set, batch_size=int(tr["batch_size"]), shuffle=True, drop_last=True,
                                             generator=g)
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=256, shuffle=False)
        n_params = sum(p.numel() for p in policy.model.parameters())
        if world_size() == 1 or torch.distributed.get_rank() == 0:
            print(f"policy {pol['name']}: {n_params:,} parameters; {len(train_set)} train windows "
                  f"({sum(int(d.train_mask.sum()) for d in parts)} episodes), {len(val_set)} val windows; run dir "
                  f"{run_dir}" + (f"; {world_size()} processes, {tr['batch_size'] // world_size()} rows each"
                                  if world_size() > 1 else ""))

        @torch.no_grad()
        def val_fn(model):
            gen = torch.Generator().manual_seed(0)  # same noise every time: comparable numbers
            losses = [model.compute_loss(b, generator=gen).item() for b in val_loader]
            return {"val_loss": sum(losses) / max(1, len(losses))}

        def save_fn(model, step):
            extra = {"step": abs(step), "parameters": n_params, "command": command, "training": tr, "task": task}
            folder = run_dir / ("checkpoint" if step >= 0 else f"snapshots/step_{-step:07d}")
            save_policy(model, folder, extra)

        config = {k: v for k, v in cfg.items() if k not in NOT_THE_RUN}
        train(policy, policy.compute_loss, NoisedBatches(infinite_batches(loader), policy), loop, run_dir, save_fn,
              val_fn, desc=f"train {pol['name']}", config=config)
        if world_size() == 1 or torch.distributed.get_rank() == 0:
            print(f"done: EMA checkpoint at {run_dir / 'checkpoint'}")
        return run_dir / "checkpoint"


class NoisedBatches:
    """A ``BatchStream`` whose batches carry the DDPM loss's noise and timesteps for ALL their rows, drawn on the
    CPU from torch's global RNG in ``compute_loss``'s order (one process: the same numbers it draws itself), so a
    data-parallel rank's share of the rows keeps the rows' own draws. ``seek`` passes through."""

    def __init__(self, stream, policy: DiffusionPolicy):
        self.stream, self.policy = stream, policy

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return self.policy.draw_noise(next(self.stream), device="cpu")

    def seek(self, position: int) -> None:
        self.stream.seek(position)
