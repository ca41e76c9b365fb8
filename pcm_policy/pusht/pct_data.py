"""The Picard Consistency Training data set: conditions, seeded x_T, the DDIM trajectory X*, base iterates.

Glossary (supplement Table 2, PushT: N = 2000, T = 50, K = 30, DDIM):
  cond_n   normalised, flattened observation history of condition n: a random demonstration window or
           a state the base policy visits in a rollout on a training seed (``rollout_seed`` + i, a
           range disjoint from the evaluation seeds 100000-100049).
  x_T      seeded initial noise (H, A): trajectory position 0.
  X*       the sequential DDIM-T trajectory from x_T on the policy's DDPM schedule (T+1 positions);
           X*[T] is the action chunk the base policy outputs.
  X^k      the base model's full-window Picard iterates k = 0..K-1 from X^0 = (x_T, ..., x_T), with
           the iterate safeguard (without it base iterates reach 1e5-1e15).
  Var_k    mean squared error of X^k against X* over the training split; alpha_k = 1 / sqrt(Var_k).

Store (zarr v3 group): ``obs`` (N, n_obs, obs_dim) raw, ``cond`` (N, n_obs*obs_dim), ``x_T``,
``x_star`` (N, T+1, H, A), ``iterates`` (N, K, T+1, H, A), ``split`` (0 train, 1 held out: demo
episodes / rollout seeds of their own), ``source`` (0 demo, 1 rollout), ``origin`` (episode index or
env seed), ``step`` (window start or chunk index), ``done`` (a flag per chunk of conditions). Attrs:
``config`` (what decides the content, checked on resume), ``rollout_seeds``, ``var_k``, ``timing``.
Conditions are written first; then each chunk's arrays, then its flag; rerunning skips done chunks. While
the conditions are collected, each finished batch of rollouts is kept next to the store
(``.<store>.rollouts-<config hash>/``, removed once the conditions are written), so an interrupted first stage
resumes at its last finished batch; every resume says where it resumed.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import zarr
from tqdm import tqdm

from ..sampling import sample_picard, sample_sequential, step_grid

__all__ = ["TrajDataConfig", "TrajDataError", "action_distance", "fingerprint", "generate", "iterates",
           "load_trajectories", "pixel_distance", "trajectory"]


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


def fingerprint(policy) -> str:
    """sha256 (16 hex) of the base weights and normaliser (LoRA tensors excluded)."""
    h = hashlib.sha256()
    for k, v in sorted(policy.state_dict().items()):
        if "lora_" not in k:
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


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


# ---------------------------------------------------------------------------------------- trajectories
def trajectory(model_fn, scheduler, x_T, cond, cfg: TrajDataConfig) -> torch.Tensor:
    """X*: the sequential DDIM-T trajectory (B, T+1, H, A) of the base model."""
    grid = step_grid(scheduler, cfg.num_steps, solver="ddim")
    _, st = sample_sequential(model_fn, x_T, cond, grid=grid, return_trajectory=True)
    return st.trajectory.transpose(0, 1)


def iterates(model_fn, scheduler, x_T, cond, cfg: TrajDataConfig):
    """X^0..X^{K-1} (B, K, T+1, H, A): full-window Picard iterates of the base model (tol 0, plain
    updates, first iterate ``cfg.init``, safeguard ``cfg.safeguard``)."""
    grid = step_grid(scheduler, cfg.num_steps, solver="ddim")
    _, st = sample_picard(model_fn, x_T, cond, grid=grid, tol=0.0, max_iters=cfg.iterates - 1, return_iterates=True,
                          safeguard=cfg.safeguard, init=cfg.init)
    its = st.iterates + [st.iterates[-1]] * (cfg.iterates - len(st.iterates))  # converged early: repeat
    return torch.stack(its).movedim(2, 0)


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


def _open(path: Path, config: dict):
    if path.exists():
        root = zarr.open_group(str(path), mode="r+")
        have = root.attrs.get("config")
        if have != config:
            diff = sorted(k for k in set(config) | set(have or {}) if (have or {}).get(k) != config.get(k))
            raise TrajDataError(f"{path} holds trajectories made with other settings (differs in {diff}); "
                                "delete it or choose another pct.data_path")
        return root
    root = zarr.open_group(str(path), mode="w")
    root.attrs["config"] = config
    return root


def generate(policy, path, cfg: TrajDataConfig, demos=None, *, max_chunks: int | None = None,
             progress: bool = True) -> Path:
    """Create or complete the trajectory store at ``path`` (resumable; ``max_chunks`` stops early)."""
    if not 0 <= cfg.rollout_fraction <= 1 or not 0 <= cfg.val_fraction < 1 or cfg.iterates < 1 or cfg.n < 1:
        raise TrajDataError(f"bad trajectory data config {cfg}")
    path = Path(path)
    config = {**asdict(cfg), "policy": fingerprint(policy)}
    root = _open(path, config)
    pc = policy.cfg
    T, K, N, shape = cfg.num_steps, cfg.iterates, cfg.n, (pc.horizon, pc.action_dim)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    cache = path.with_name(f".{path.name}.rollouts-{digest}")  # finished rollout batches, until conditions_done
    if not root.attrs.get("conditions_done"):
        t0 = time.perf_counter()
        c = collect_conditions(policy, cfg, demos, progress, cache)
        with torch.no_grad():
            cond = policy.condition(torch.from_numpy(c["obs"])).cpu().numpy()
        x_T = torch.randn((N, *shape), generator=torch.Generator().manual_seed(cfg.seed)).numpy()
        arrays = dict(obs=c["obs"], cond=cond, x_T=x_T, split=c["split"].astype(np.int8),
                      source=c["source"].astype(np.int8), origin=c["origin"].astype(np.int64),
                      step=c["step"].astype(np.int64))
        for name, a in arrays.items():
            root.create_array(name, data=a, chunks=(cfg.chunk, *a.shape[1:]), overwrite=True)
        f32 = dict(dtype="float32", overwrite=True)
        root.create_array("x_star", shape=(N, T + 1, *shape), chunks=(cfg.chunk, T + 1, *shape), **f32)
        root.create_array("iterates", shape=(N, K, T + 1, *shape), chunks=(cfg.chunk, K, T + 1, *shape), **f32)
        root.create_array("done", data=np.zeros(math.ceil(N / cfg.chunk), bool), overwrite=True)
        root.attrs.update({"rollout_seeds": c["rollout_seeds"], "conditions_done": True,
                           "timing": {"conditions_s": time.perf_counter() - t0, "chunks_s": 0.0, "chunks": 0}})
    shutil.rmtree(cache, ignore_errors=True)
    done = root["done"][:]
    todo = [i for i in range(len(done)) if not done[i]][:max_chunks]
    if todo and done.any():
        print(f"PCT trajectories: resuming {path} at chunk {int(done.sum())}/{len(done)} (the finished ones are kept)",
              flush=True)
    cond_all, xT_all = root["cond"][:], root["x_T"][:]
    for ci in tqdm(todo, desc="PCT trajectories", unit="chunk", disable=not progress or not todo):
        t0 = time.perf_counter()
        i0, i1 = ci * cfg.chunk, min(N, (ci + 1) * cfg.chunk)
        with torch.no_grad():
            args = (policy.model_fn, policy.noise_scheduler, torch.from_numpy(xT_all[i0:i1]),
                    torch.from_numpy(cond_all[i0:i1]), cfg)
            xs, its = trajectory(*args), iterates(*args)
        root["x_star"][i0:i1] = xs.numpy()
        root["iterates"][i0:i1] = its.numpy()
        root["done"][ci] = True  # the chunk's commit: written after its arrays
        tm = dict(root.attrs["timing"])
        tm.update(chunks_s=tm["chunks_s"] + time.perf_counter() - t0, chunks=tm["chunks"] + 1,
                  conditions=tm.get("conditions", 0) + i1 - i0)
        root.attrs["timing"] = tm
    if root["done"][:].all() and "var_k" not in root.attrs:
        root.attrs["var_k"] = _var_k(root, cfg)
    return path


def _var_k(root, cfg: TrajDataConfig) -> list[float]:
    """Var_k = mean over the training split of mean((X^k - X*)^2), read chunk by chunk."""
    train = root["split"][:] == 0
    total = np.zeros(cfg.iterates)
    for i0 in range(0, cfg.n, cfg.chunk):
        m = train[i0:i0 + cfg.chunk]
        if m.any():
            its, xs = root["iterates"][i0:i0 + cfg.chunk][m], root["x_star"][i0:i0 + cfg.chunk][m]
            total += ((its - xs[:, None]) ** 2).reshape(len(its), cfg.iterates, -1).mean(-1).sum(0)
    return (total / max(1, int(train.sum()))).tolist()


def load_trajectories(path) -> dict:
    """A complete store as torch tensors (``cond``, ``x_T``, ``x_star``, ``iterates``, ``split``, ...)
    plus ``var_k`` (K,), ``config`` and ``rollout_seeds``."""
    path = Path(path)
    if not path.exists():
        raise TrajDataError(f"{path}: no trajectory store; generate it with scripts/train_pct.py")
    root = zarr.open_group(str(path), mode="r")
    if "var_k" not in root.attrs:
        raise TrajDataError(f"{path} is incomplete; rerun scripts/train_pct.py to finish it")
    out = {k: torch.from_numpy(np.asarray(root[k][:])) for k in
           ("obs", "cond", "x_T", "x_star", "iterates", "split", "source", "origin", "step")}
    out.update(var_k=torch.tensor(root.attrs["var_k"]), config=dict(root.attrs["config"]),
               rollout_seeds=dict(root.attrs["rollout_seeds"]), timing=dict(root.attrs["timing"]))
    return out
