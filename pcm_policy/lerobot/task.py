"""The lerobot Task: a lerobot diffusion policy folder and a LeRobotDataset folder, for the generic drivers.

  conditions "train" / "val" / "eval": the dataset's frames, split by EPISODE (sorted episode indices; the i-th
             episode is "eval" when i % 10 == 0, "val" when i % 10 == 5, else "train"), each frame one
             condition: its observation window (lerobot's own delta timestamps for the policy's
             ``n_obs_steps``, padded at episode starts as lerobot pads), normalised by the policy's own
             preprocessor and encoded by ``LerobotDiffusion.condition`` (lerobot's global conditioning). Frames
             are taken in a fixed shuffled order (``seed``), so the first n of a split spread over its episodes;
             x_T ~ N(0, I) (horizon, action_dim) is drawn once per split from ``seed`` and the split's index, row
             by row in that order, so a frame's x_T does not depend on n.
             With ``RolloutStates(fraction=f > 0)`` (state-only PushT policies only), "train" / "val" of n rows are
             the first n - round(n f) frames followed by round(n f) observation windows that the policy itself
             visits in this package's PushT env (a ``rollout_windows`` collector handed in by the caller, e.g.
             ``pusht.pct_data.rollout_windows``, which ``scripts/train_pct.py`` passes: DDIM-T rollouts of 200
             steps, ``per_episode`` random chunks per episode) on training seeds ``seed`` + i ("train") and
             ``seed`` + 50000 + i ("val"), disjoint from the evaluation seeds 100000-100199; as PushT's own
             recipe does (half rollout states). Their x_T are drawn from their own seeded stream. The split is
             then fixed by n (its first rows are not those of a smaller n).
  distance   mean over the horizon of the Euclidean distance between two action chunks after lerobot's own
             postprocessor (unnormalised: the dataset's action units; env pixels for PushT), differentiable.
  lora_targets every Conv1d and Linear of the UNet (``LerobotDiffusion.lora_targets``: no attention to adapt).

``task_fields`` returns the Task's fields as a dict (``pcm_policy.task.Task(**task_fields(...))``); ``make_task``
builds the Task. Raises ``PolicyFolderError`` / ValueError for a bad policy folder or a dataset whose features
do not match the policy, ImportError without lerobot.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .. import adapters
from .adapter import LerobotDiffusion

__all__ = ["SPLIT_EVERY", "RolloutStates", "episode_split", "make_task", "pct_task", "task_fields"]

SPLIT_EVERY = 10  # episode i (in sorted order): eval if i % 10 == 0, val if i % 10 == 5, else train
_SPLIT_INDEX = {"train": 0, "val": 1, "eval": 2}
VAL_SEED_OFFSET = 50_000  # "val" rollout seeds start this far after "train"'s


@dataclass(frozen=True)
class RolloutStates:
    """The share of "train" / "val" conditions taken from the policy's own rollouts in this package's PushT env
    (module doc). ``fraction`` 0 (the default): dataset frames only. ``seed``: the first training seed;
    ``per_episode``: chunks kept per episode; ``batch``: episodes in lockstep; ``max_steps``: env steps."""

    fraction: float = 0.0
    seed: int = 400_000
    per_episode: int = 8
    batch: int = 64
    max_steps: int = 200

    def __post_init__(self):
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"task.rollouts.fraction={self.fraction}: it must lie in [0, 1]")


def episode_split(episodes: list[int]) -> dict[str, list[int]]:
    """Episode indices per split (module doc): every tenth episode (from the first) is "eval", every tenth from
    the sixth "val", the rest "train". Deterministic; appended episodes never move earlier ones."""
    eps = sorted(set(int(e) for e in episodes))
    out = {"train": [], "val": [], "eval": []}
    for i, e in enumerate(eps):
        out["eval" if i % SPLIT_EVERY == 0 else "val" if i % SPLIT_EVERY == SPLIT_EVERY // 2 else "train"].append(e)
    return out


def _check_features(adapter: LerobotDiffusion, features: dict, root) -> None:
    for key, ft in {**adapter.config.input_features, **adapter.config.output_features}.items():
        if key not in features:
            raise ValueError(f"dataset {root} has no {key!r}, which the policy reads; pass the dataset it was "
                             f"trained on (it has {sorted(k for k in features if '.' in k or k == 'action')})")
        shape = tuple(features[key]["shape"])
        want = tuple(ft.shape)
        if shape != want and not (len(shape) == 3 and shape[::-1][:1] + shape[:2] == want):  # images: HWC on disk
            raise ValueError(f"dataset {root}: {key!r} has shape {shape}, the policy expects {want}; pass the "
                             f"dataset the policy was trained on")


def task_fields(policy: str | os.PathLike | LerobotDiffusion, dataset: str | os.PathLike, *,
                num_steps: int | None = None, seed: int = 0, device: str = "cpu", repo_id: str | None = None,
                batch_size: int = 256, rollouts: RolloutStates | None = None, rollout_windows=None,
                rollout_cache=None, progress: bool = True) -> dict:
    """The fields of the lerobot ``Task`` (module doc) of a policy folder (or a ``LerobotDiffusion``) and a
    LeRobotDataset folder.

    Args:
        num_steps: T of the reference DDIM trajectory; default the policy's own inference steps.
        seed: the frame order and x_T of the splits.
        batch_size: frames encoded per batch (images go through ResNet18).
        rollouts: rollout states in "train" / "val" (module doc); None: none. Raises ValueError when the share is
            above 0 and the policy is not a state-only PushT policy (``envpolicy.EnvPolicy``).
        rollout_windows: the collector of rollout states, ``f(policy, n, seed, *, num_steps, per_episode, batch,
            max_steps, rng, progress, cache) -> (n, n_obs_steps, 5)`` raw windows (``pusht.pct_data.rollout_windows``;
            needed when ``rollouts.fraction`` > 0, else ValueError).
        rollout_cache: a folder keeping each finished batch of rollouts, so an interrupted collection resumes.
    Returns:
        ``dict(name, module, model_fn, scheduler, num_steps, lora_targets, distance, unit, conditions, key,
        save_adapter)``.
    """
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    a = policy if isinstance(policy, LerobotDiffusion) else LerobotDiffusion.from_folder(policy, device)
    if a.preprocessor is None or a.postprocessor is None:
        raise ValueError("the lerobot task needs the policy's processors; load it with LerobotDiffusion.from_folder")
    rollouts = rollouts or RolloutStates()
    T = int(num_steps or a.num_steps)
    env_policy = None
    if rollouts.fraction > 0:
        from .envpolicy import EnvPolicy, PolicyFolderError

        try:
            env_policy = EnvPolicy(a)
        except PolicyFolderError as e:
            raise ValueError(f"task.rollouts.fraction={rollouts.fraction} needs a state-only PushT policy that this "
                             f"package's env can drive ({e}); set task.rollouts.fraction=0") from None
        if rollout_windows is None:
            raise ValueError("rollout states need a collector: pass rollout_windows=pcm_policy.pusht.pct_data."
                             "rollout_windows (scripts/train_pct.py does), or set task.rollouts.fraction=0")
    root = Path(dataset)
    if not (root / "meta" / "info.json").is_file():
        raise ValueError(f"{root} is not a LeRobotDataset folder (no meta/info.json); write one with "
                         f"pcm_policy.lerobot.dataset or lerobot's LeRobotDataset.create")
    repo_id = repo_id or f"local/{root.name}"
    meta = LeRobotDatasetMetadata(repo_id, root=root)
    _check_features(a, meta.features, root)
    ds = LeRobotDataset(repo_id, root=root, delta_timestamps=resolve_delta_timestamps(a.config, meta))
    frame_episode = torch.as_tensor(ds.hf_dataset["episode_index"]).long()
    splits = episode_split(frame_episode.unique().tolist())
    keys = [*a.config.input_features]
    memo: dict[str, dict] = {}

    def frames(split: str) -> torch.Tensor:  # the split's frame indices in their fixed shuffled order
        idx = torch.isin(frame_episode, torch.tensor(splits[split], dtype=torch.long)).nonzero().flatten()
        g = torch.Generator().manual_seed(seed * 3 + _SPLIT_INDEX[split])
        return idx[torch.randperm(len(idx), generator=g)]

    @torch.no_grad()
    def encode(rows: torch.Tensor) -> torch.Tensor:
        conds = []
        for chunk in rows.split(batch_size):
            items = [ds[int(i)] for i in chunk]
            batch = {k: torch.stack([it[k] for it in items]) for k in keys}
            conds.append(a.condition(a.preprocessor(batch)).cpu())
        return torch.cat(conds) if conds else torch.zeros(0, 0)

    def rollout_states(split: str, n: int):  # (cond, x_T) of n windows of the policy's own rollouts
        key = f"{split}_rollouts_{n}"
        if key not in memo:
            first = rollouts.seed + (VAL_SEED_OFFSET if split == "val" else 0)
            cache = None if rollout_cache is None else Path(rollout_cache) / split
            obs = rollout_windows(env_policy, n, first, num_steps=T, per_episode=rollouts.per_episode,
                                  batch=rollouts.batch, max_steps=rollouts.max_steps,
                                  rng=np.random.default_rng([seed, _SPLIT_INDEX[split]]), progress=progress,
                                  cache=cache)
            cond = env_policy.condition(torch.as_tensor(obs).float()).cpu()
            g = torch.Generator().manual_seed(seed * 3 + _SPLIT_INDEX[split] + 2_000_033)
            memo[key] = (cond, torch.randn((n, *a.sample_shape), generator=g))
            if cache is not None:  # complete: the caller's store keeps the conditions from here on
                shutil.rmtree(cache, ignore_errors=True)
        return memo[key]

    def conditions(split: str, n: int):
        if split != "eval" and rollouts.fraction > 0:
            n_roll = round(n * rollouts.fraction)
            fc, fx = frame_conditions(split, n - n_roll)
            if not n_roll:
                return fc, fx
            rc, rx = rollout_states(split, n_roll)
            dev = fc.device
            return torch.cat([fc, rc.to(dev)]), torch.cat([fx, rx.to(dev)])
        return frame_conditions(split, n)

    def frame_conditions(split: str, n: int):
        m = memo.setdefault(split, {"rows": frames(split), "cond": None})
        rows = m["rows"][:n]
        have = 0 if m["cond"] is None else len(m["cond"])
        if len(rows) > have:
            new = encode(rows[have:])
            m["cond"] = new if m["cond"] is None else torch.cat([m["cond"], new])
        if "x_T" not in m:
            g = torch.Generator().manual_seed(seed * 3 + _SPLIT_INDEX[split] + 1_000_003)
            m["x_T"] = torch.randn((len(m["rows"]), *a.sample_shape), generator=g)
        dev = next(a.network.parameters()).device
        return m["cond"][: len(rows)].to(dev), m["x_T"][: len(rows)].to(dev)

    def distance(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return (a.postprocessor(out) - a.postprocessor(ref)).norm(dim=-1).mean(-1)

    def save_adapter(folder, spec, extra=None):
        # "solver": the grid the adapter was trained on (the Task's DDIM reference), read back by ``accelerate``
        extra = {"task": "lerobot", "solver": "ddim", **(extra or {})}
        return adapters.save_adapter_folder(a.network, folder, spec, extra)

    stats = hashlib.sha256()
    for k, v in _tensors({"pre": a.preprocessor.state_dict(), "post": a.postprocessor.state_dict()}):
        stats.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
    key = {"dataset": str(root.resolve()), "episodes": {s: len(e) for s, e in splits.items()}, "seed": seed,
           "processors": stats.hexdigest()[:16], "policy": {"horizon": a.sample_shape[0], "solver": a.solver},
           **({"rollouts": asdict(rollouts)} if rollouts.fraction > 0 else {})}
    return dict(name="lerobot", module=a.network, model_fn=a.model_fn, scheduler=a.scheduler,
                num_steps=T, lora_targets=a.lora_targets, distance=distance,
                unit="action units", conditions=conditions, key=key, save_adapter=save_adapter)


def _tensors(d, prefix=""):  # (name, tensor) pairs of a nested state dict, sorted
    for k in sorted(d):
        if isinstance(d[k], dict):
            yield from _tensors(d[k], f"{prefix}{k}.")
        elif torch.is_tensor(d[k]):
            yield f"{prefix}{k}", d[k]


def make_task(policy, dataset, **kw):
    """``pcm_policy.task.Task(**task_fields(policy, dataset, **kw))``."""
    from ..task import Task

    return Task(**task_fields(policy, dataset, **kw))


def pct_task(cfg: dict, root, *, rollout_windows=None) -> tuple:
    """(Task, store settings, adapter.json extras) of a resolved ``train_pct`` config for ``task=lerobot`` (a plain
    dict: ``task`` = ``configs/task/lerobot.yaml``: ``policy`` and ``dataset`` folders, relative paths under
    ``root``). Raises ValueError for a missing folder (naming the key to set), ``PolicyFolderError`` for a folder
    that is not a lerobot diffusion policy, ImportError without lerobot. ``rollout_windows``: the rollout-state
    collector (``task_fields``), which ``scripts/train_pct.py`` hands in from the PushT package."""
    from ..training.pct_data import PCTData, rollout_cache

    t = cfg["task"]
    paths = {}
    for name in ("policy", "dataset"):
        if not t.get(name):
            raise ValueError(f"task=lerobot needs task.{name}=FOLDER (a lerobot {name} folder on this machine)")
        p = Path(t[name])
        paths[name] = p if p.is_absolute() else Path(root) / p
        if not paths[name].is_dir():
            raise ValueError(f"task.{name}={t[name]}: no such folder")
    rollouts = RolloutStates(**(t.get("rollouts") or {}))
    task = make_task(paths["policy"], paths["dataset"], num_steps=t.get("num_steps"), seed=int(t["seed"]),
                     batch_size=int(t["batch"]), rollouts=rollouts, rollout_windows=rollout_windows,
                     rollout_cache=rollout_cache(cfg["data_path"], root, asdict(rollouts)))
    store = PCTData(n=int(t["n"]), num_steps=task.num_steps, iterates=int(t["iterates"]),
                    val_fraction=float(t["val_fraction"]), chunk=int(t["batch"]), var_n=16,
                    cache_bytes=float(t["cache_bytes"]), draw_chunk=int(t["batch"]) * 8)
    return task, store, {"base": str(t["policy"]), "dataset": str(t["dataset"])}  # as given: no machine's root
