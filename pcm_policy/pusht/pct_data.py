"""The PushT conditions of Picard Consistency Training (what ``task.make_task`` serves as "train"/"val").

Glossary (supplement Table 2, PushT: N = 2000, T = 50, K = 30, DDIM):
  cond_n   normalised, flattened observation history of condition n: a random demonstration window or
           a state the base policy visits in a rollout on a training seed (``rollout_seed`` + i, a
           range disjoint from the evaluation seeds 100000-100049); held-out conditions come from
           demonstration episodes and rollout seeds of their own.
  x_T      seeded initial noise (H, A) (``task.make_task``); the trajectories, iterates and Var_k are the
           generic store's (``pcm_policy.training.pct_data``).

While the rollout conditions are collected, each finished batch of rollouts is kept in a cache folder (written
atomically; ``collect_conditions(cache=...)``), so an interrupted first stage resumes at its last finished batch
and says where it resumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..training.pct_data import PCTData

__all__ = ["TrajDataConfig", "TrajDataError", "action_distance", "collect_conditions", "pixel_distance",
           "rollout_windows"]


class TrajDataError(ValueError):
    """A trajectory store that does not match the requested data, or missing inputs."""


@dataclass
class TrajDataConfig:
    n: int = 2000  # conditions N
    num_steps: int = 50  # T
    iterates: int = 30  # K
    chunk: int = 50  # conditions per batched generation call (and per resumable unit)
    val_fraction: float = 0.1  # held out for schedule tuning and validation
    rollout_fraction: float = 0.5  # the rest are demonstration windows
    seed: int = 0
    rollout_seed: int = 400_000  # first training seed; evaluation uses 100000-100049
    per_episode: int = 8  # conditions kept per rollout episode (random chunks)
    rollout_batch: int = 64  # episodes run in lockstep
    max_steps: int = 200
    safeguard: float | None = 1.0  # kappa of the iterate safeguard; None: off
    init: str = "noise"  # X^0 of the Picard iterates: "noise" (x_T everywhere) or "prior" (scaled by noise level)

    def __post_init__(self):
        if not 0 <= self.rollout_fraction <= 1 or not 0 <= self.val_fraction < 1 or self.iterates < 1 or self.n < 1:
            raise TrajDataError(f"bad trajectory data config {self}")

    def pct_data(self) -> PCTData:
        """The generic store's settings (``training.pct_data``): N, T, K, the held-out share, chunk, the
        base iterates' safeguard and first iterate; Var_k over every training condition."""
        return PCTData(n=self.n, num_steps=self.num_steps, iterates=self.iterates, val_fraction=self.val_fraction,
                       chunk=self.chunk, safeguard=self.safeguard, init=self.init)


# ---------------------------------------------------------------------------------------- conditions
def _demo_conditions(policy, path, n_train: int, n_val: int, cfg: TrajDataConfig, rng) -> dict:
    from .dataset import PushTLowdimDataset

    if path is None or not Path(path).exists():
        raise TrajDataError(f"demonstrations {path} not found; make them with python scripts/collect_demos.py "
                            "--episodes 1000 --out data/pusht_expert.zarr (or set pct.data.rollout_fraction=1)")
    h = policy.cfg.n_obs_steps
    train = PushTLowdimDataset(str(path), horizon=h, pad_before=h - 1, pad_after=0, obs_type=policy.cfg.obs_type,
                               val_ratio=cfg.val_fraction, seed=cfg.seed, split="train")
    out = {k: [] for k in ("obs", "split", "source", "origin", "step")}
    for split, ds, n in ((0, train, n_train), (1, train.get_validation_dataset(), n_val)):
        if n and not len(ds):
            raise TrajDataError(f"{path}: no {'held-out' if split else 'training'} demonstration windows; "
                                "it needs more episodes (or set pct.data.rollout_fraction=1)")
        idx = np.sort(rng.choice(len(ds), size=n, replace=len(ds) < n)) if n else np.zeros(0, int)
        ends = ds.episode_ends
        for i in idx:
            start, _, pad, _ = (int(v) for v in ds.sampler.indices[i])
            ep = int(np.searchsorted(ends, start, side="right"))
            out["obs"].append(ds[int(i)]["obs"].numpy())
            out["origin"].append(ep)
            out["step"].append(start - (ends[ep - 1] if ep else 0) - pad)
        out["split"] += [split] * n
        out["source"] += [0] * n
    return out


def _rollout_batch(policy, sampler, batch: list[int], cfg: TrajDataConfig) -> dict[int, np.ndarray]:
    """Per seed of ``batch``, the observation batch (chunks, n_obs, obs_dim) of each chunk of its rollout."""
    from .rollout import run_rollouts

    shown = []  # the observation batch of every chunk
    with torch.no_grad():
        eps = run_rollouts(policy, sampler, batch, max_steps=cfg.max_steps,
                           on_chunk=lambda c, obs, out, shown=shown: shown.append(obs.clone()))["episodes"]
    per_seed = {s: [] for s in batch}
    for c, rows in enumerate(shown):  # run_rollouts keeps running episodes in seed order
        alive = [e["seed"] for e in eps if len(e["chunks"]) > c]
        if len(alive) != len(rows):
            raise RuntimeError("rollout bookkeeping: observation rows do not match running episodes")
        for s, row in zip(alive, rows, strict=True):
            per_seed[s].append(row.numpy())
    return {s: np.stack(rows) for s, rows in per_seed.items()}


def _rollout_conditions(policy, n: int, seed: int, cfg: TrajDataConfig, rng, progress: bool,
                        cache: Path | None = None):
    """Observation histories of base-policy (DDIM-T) rollouts on seeds seed, seed+1, ...:
    up to ``per_episode`` random chunks per episode until ``n`` are collected. ``cache``: a folder keeping each
    finished batch of rollouts (written atomically), so an interrupted run resumes there (and says so)."""
    from ..io import atomic_path
    from ..sampling import make_sampler

    sampler = make_sampler("ddim", policy.noise_scheduler, num_steps=cfg.num_steps)
    obs, origin, step, seeds, reused = [], [], [], [], 0
    bar = tqdm(total=n, desc="rollout conditions", unit="cond", disable=not progress)
    while len(obs) < n:
        batch = list(range(seed, seed + min(cfg.rollout_batch, math.ceil((n - len(obs)) / cfg.per_episode))))
        seed += len(batch)
        saved = None if cache is None else cache / f"seeds_{batch[0]}-{batch[-1]}.npz"
        if saved is not None and saved.exists():
            with np.load(saved) as z:
                per_seed = {s: z[f"s{s}"] for s in batch}
            reused += 1
        else:
            if reused:
                tqdm.write(f"rollout conditions: resumed at {len(obs)}/{n} ({reused} finished rollout batch(es) "
                           f"read from {cache})")
                reused = 0
            per_seed = _rollout_batch(policy, sampler, batch, cfg)
            if saved is not None:
                saved.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(saved) as tmp:
                    np.savez(tmp, **{f"s{s}": rows for s, rows in per_seed.items()})
        for s in batch:
            rows = per_seed[s]
            for j in np.sort(rng.choice(len(rows), size=min(cfg.per_episode, len(rows)), replace=False)):
                obs.append(rows[j])
                origin.append(s)
                step.append(int(j))
        seeds += batch
        bar.update(min(n, len(obs)) - bar.n)
    bar.close()
    if reused:
        print(f"rollout conditions: all {n} read from {cache} (finished before the interruption)", flush=True)
    keep = np.sort(rng.choice(len(obs), size=n, replace=False))
    return [obs[i] for i in keep], [origin[i] for i in keep], [step[i] for i in keep], seeds, seed


def collect_conditions(policy, cfg: TrajDataConfig, demos=None, progress: bool = True,
                       cache: Path | None = None) -> dict:
    """Raw observation histories of all N conditions, training split first, and where each came from.
    ``cache``: where finished rollout batches are kept for a resume (``_rollout_conditions``)."""
    rng = np.random.default_rng(cfg.seed)
    n_val = round(cfg.n * cfg.val_fraction)
    n_roll = round(cfg.n * cfg.rollout_fraction)
    roll_val = round(n_roll * cfg.val_fraction)
    demo_val = n_val - roll_val
    parts = {k: [] for k in ("obs", "split", "source", "origin", "step")}
    if cfg.n - n_roll:
        d = _demo_conditions(policy, demos, cfg.n - n_roll - demo_val, demo_val, cfg, rng)
        for k in parts:
            parts[k] += d[k]
    seeds, next_seed = {}, cfg.rollout_seed
    for split, n in ((0, n_roll - roll_val), (1, roll_val)):  # held-out conditions come from their own seeds
        if n:
            o, org, st, seeds[split], next_seed = _rollout_conditions(policy, n, next_seed, cfg, rng, progress,
                                                                                cache)
            parts["obs"] += o
            parts["origin"] += org
            parts["step"] += st
            parts["split"] += [split] * n
            parts["source"] += [1] * n
    order = np.argsort(np.asarray(parts["split"]), kind="stable")  # training split first
    out = {k: np.asarray(v)[order] for k, v in parts.items()}
    out["obs"] = out["obs"].astype(np.float32)
    out["rollout_seeds"] = {"train": seeds.get(0, []), "val": seeds.get(1, [])}
    return out


def rollout_windows(policy, n: int, seed: int, *, num_steps: int = 50, per_episode: int = 8, batch: int = 64,
                    max_steps: int = 200, rng=None, progress: bool = True, cache: Path | None = None) -> np.ndarray:
    """``n`` raw observation windows ``(n, n_obs_steps, obs_dim)`` float32 that ``policy`` (anything
    ``rollout.run_rollouts`` drives) visits under DDIM-``num_steps`` in this package's PushT env on seeds ``seed``,
    ``seed`` + 1, ...: up to ``per_episode`` random chunks an episode (``rng``: a numpy Generator), ``batch``
    episodes in lockstep, ``max_steps`` env steps; ``cache`` keeps finished batches for a resume. The lerobot
    Task's rollout states come from here (injected by ``scripts/train_pct.py``: task packages do not import each
    other)."""
    cfg = TrajDataConfig(num_steps=num_steps, per_episode=per_episode, rollout_batch=batch, max_steps=max_steps)
    rng = np.random.default_rng(0) if rng is None else rng
    obs = _rollout_conditions(policy, n, seed, cfg, rng, progress, cache)[0]
    return np.stack(obs).astype(np.float32)


def action_distance(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per sample, the mean over the H actions of the Euclidean action distance, in normalised units:
    (..., B, H, A) -> (..., B). Differentiable."""
    return ((out - ref).pow(2).sum(-1) + 1e-12).sqrt().mean(-1)


def pixel_distance(policy):
    """``action_distance`` in env pixels (normalised / the action normaliser's scale): (out, ref) -> (B,)."""
    scale = policy.normalizer["action"].scale

    def distance(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return ((out - ref) / scale).norm(dim=-1).mean(-1)

    return distance
