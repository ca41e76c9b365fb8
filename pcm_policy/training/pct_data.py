"""The Picard Consistency Training data of any task: conditions, x_T, the DDIM trajectory X*, base iterates.

Glossary (PCM paper; supplement Table 2, PushT: N = 2000, T = 50, K = 30; Table 1, images):
  cond_n, x_T  condition n and its initial noise, from ``task.conditions("train" | "val", n)``: the
               training split first, then the held-out one (schedule tuning and validation).
  X*           the sequential DDIM-T trajectory from x_T on ``task.grid(T)`` (T+1 positions); X*[T] is the
               base model's output.
  X^k          the base model's full-window Picard iterates k = 0..K-1 (tol 0, plain updates, first
               iterate ``init``, iterate safeguard ``safeguard``); kept for every row when N K (T+1)
               samples fit in ``cache_bytes``, else made per batch by ``paper.pct.PCTBatches`` (SD-sized).
  Var_k        mean over (the first ``var_n``) training conditions of mean((X^k - X*)^2); alpha_k =
               1 / sqrt(Var_k).

Store (a folder, ``path``): ``store.json`` (the settings and the task's fingerprint, checked on resume;
``var_k``, timing), ``conditions.pt`` (cond, x_T, split), ``chunk_NNNNN.pt`` (X* and X^k of ``chunk``
rows; each written atomically, so an interrupted run resumes at the first missing chunk).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..io import atomic_path, write_json
from ..sampling import index_cond, sample_picard, sample_sequential
from . import distributed as dist

__all__ = ["PCTData", "PCTDataError", "base_iterates", "cat_cond", "load", "make", "split_sizes"]


class PCTDataError(ValueError):
    """A trajectory store that does not match the requested data, or bad settings."""


@dataclass
class PCTData:
    """What defines the trajectories of a PCT run; validated on construction (raises PCTDataError)."""

    n: int = 200  # conditions N (training + held out)
    num_steps: int = 50  # T
    iterates: int = 30  # K: k ~ U{0..K-1}
    val_fraction: float = 0.1  # held out for validation and schedule tuning
    chunk: int = 50  # rows per batched generation call (and per resumable unit)
    safeguard: float | None = None  # kappa of the iterate safeguard of the base iterates; None: off
    init: str | None = None  # X^0 of the base iterates: None/"noise" (x_T everywhere) or "prior"
    var_n: int | None = None  # training conditions Var_k is estimated on (None: all)
    cache_bytes: float = 2e9  # keep every X^k below this size, else make them per batch
    draw_chunk: int = 2048  # rows per DDIM call for the jump objective's extra draws (``pct.add_draws``)

    def __post_init__(self):
        if min(self.n, self.num_steps, self.iterates, self.chunk) < 1 or not 0 <= self.val_fraction < 1:
            raise PCTDataError(f"bad trajectory data settings {self}: n, num_steps, iterates and chunk must be >= 1 "
                               "and val_fraction in [0, 1)")


def rollout_cache(data_path: str | Path, root: str | Path, settings) -> Path:
    """The folder beside the trajectory store ``data_path`` (relative paths under ``root``) where a task keeps the
    finished rollout batches of its conditions while they are collected, so an interrupted collection resumes:
    ``.<store name>.rollouts-<12 hex of sha256(settings as sorted JSON)>``; other settings never reuse it."""
    store = Path(data_path) if Path(data_path).is_absolute() else Path(root) / data_path
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return store.with_name(f".{store.name}.rollouts-{digest}")


def split_sizes(n: int, val_fraction: float) -> tuple[int, int]:
    """(training, held-out) conditions: round(n f) held out, at least one when f > 0."""
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    return n - n_val, n_val


def cat_cond(a, b):
    """Rows of ``a`` then ``b`` (tensors, dicts of them or None)."""
    if a is None:
        return None
    if isinstance(a, dict):
        return {k: cat_cond(a[k], b[k]) for k in a}
    return torch.cat([a, b])


@torch.no_grad()
def base_iterates(model_fn, grid, x_T, cond, k_max: int, *, safeguard=None, init=None) -> list[torch.Tensor]:
    """[X^0, ..., X^k_max] (each (T+1, B, ...)): full-window base Picard, tol 0, plain updates (converged
    early: the last iterate repeated)."""
    _, st = sample_picard(model_fn, x_T, cond, grid=grid, tol=0.0, max_iters=k_max, return_iterates=True,
                          safeguard=safeguard, init=init)
    return st.iterates + [st.iterates[-1]] * (k_max + 1 - len(st.iterates))


def _stores_iterates(cfg: PCTData, x_T: torch.Tensor) -> bool:
    return cfg.n * cfg.iterates * (cfg.num_steps + 1) * x_T[0].numel() * x_T.element_size() <= cfg.cache_bytes


def _open(path: Path, config: dict) -> dict:
    meta = path / "store.json"
    if meta.is_file():
        have = json.loads(meta.read_text())
        if have.get("config") != config:
            old = have.get("config") or {}
            diff = sorted(k for k in set(config) | set(old) if old.get(k) != config.get(k))
            raise PCTDataError(f"{path} holds trajectories made with other settings (differs in {diff}); "
                               "delete it or choose another data_path")
        return have
    if path.exists() and any(path.iterdir()):
        raise PCTDataError(f"{path} exists and is not a trajectory store; delete it or choose another data_path")
    path.mkdir(parents=True, exist_ok=True)
    have = {"config": config, "timing": {"conditions_s": 0.0, "chunks_s": 0.0, "chunks": 0, "conditions": 0}}
    write_json(meta, have)
    return have


@torch.no_grad()
def make(task, cfg: PCTData, path: str | Path, *, max_chunks: int | None = None, progress: bool = True) -> Path:
    """Create or complete the store at ``path`` for ``task`` (resumable; ``max_chunks`` stops early).
    Raises PCTDataError for a store made with other settings or a task whose splits are empty.

    Several processes (``distributed``; the store on a file system every rank sees): rank 0 makes the
    conditions and writes every file; the missing chunks go out in rounds of one chunk per rank, each computed
    with the rows one process computes it with, and are gathered to rank 0, which writes them (a stopped run
    resumes at the first missing chunk, with any number of processes). ``distributed.DistributedError`` when
    the ranks' settings or task fingerprints differ (nothing is written then)."""
    path = Path(path)
    config = {**{k: v for k, v in asdict(cfg).items() if k != "draw_chunk"}, "task": task.name,
              "fingerprint": task.fingerprint()}
    dist.check_same(config, "trajectory store settings (with the task's fingerprint)")
    main = dist.is_main()
    meta = dist.all_ok(lambda: _open(path, config) if main else None, f"opening the trajectory store {path}")
    grid = task.grid(cfg.num_steps)
    dist.all_ok(lambda: _conditions(task, cfg, path, meta) if main else None, "making the PCT conditions")
    c = torch.load(path / "conditions.pt")
    N, keep = len(c["x_T"]), _stores_iterates(cfg, c["x_T"])
    n_chunks = math.ceil(N / cfg.chunk)
    missing = [i for i in range(n_chunks) if not (path / f"chunk_{i:05d}.pt").is_file()]
    dist.check_same(missing, f"view of {path} (put the store on a file system every rank sees)")
    todo, done = missing[:max_chunks], n_chunks - len(missing)
    if todo and done and main:  # every resume says where it resumed
        print(f"PCT trajectories: resuming {path} at chunk {done}/{n_chunks} (the finished ones are kept)", flush=True)
    world = dist.world_size()
    with tqdm(total=len(todo), desc=f"PCT trajectories ({task.name})", unit="chunk",
              disable=not progress or not todo or not main) as bar:
        for r0 in range(0, len(todo), world):  # one chunk per rank per round; one process: one chunk at a time
            t0, rnd = time.perf_counter(), todo[r0:r0 + world]
            parts = dist.shard_and_gather(lambda ids: [_chunk(task, cfg, grid, c, ci, keep) for ci in ids], rnd)

            def write(rnd=rnd, parts=parts, t0=t0):
                for ci, part in zip(rnd, parts, strict=True):
                    with atomic_path(path / f"chunk_{ci:05d}.pt") as tmp:
                        torch.save(part, tmp)
                tm = meta["timing"]  # one process: per chunk; several: per round (wall time)
                tm.update(chunks_s=tm["chunks_s"] + time.perf_counter() - t0, chunks=tm["chunks"] + len(rnd),
                          conditions=tm["conditions"] + sum(len(p["x_star"]) for p in parts))
                write_json(path / "store.json", meta)

            dist.all_ok(lambda: write() if main else None, f"writing the trajectory store {path}")
            bar.update(len(rnd))
    complete = all((path / f"chunk_{i:05d}.pt").is_file() for i in range(n_chunks))
    need = complete and "var_k" not in (meta if main else json.loads((path / "store.json").read_text()))
    dist.check_same(need, f"view of {path} (put the store on a file system every rank sees)")
    if need:
        var_k = _var_k(task, cfg, grid, load(path, check=False))

        def finish():
            meta["var_k"] = var_k
            write_json(path / "store.json", meta)

        dist.all_ok(lambda: finish() if main else None, f"writing the trajectory store {path}")
    return path


def _conditions(task, cfg: PCTData, path: Path, meta: dict) -> None:
    """``conditions.pt`` (cond, x_T, split: the training split first) unless it is there."""
    if (path / "conditions.pt").is_file():
        return
    t0 = time.perf_counter()
    n_train, n_val = split_sizes(cfg.n, cfg.val_fraction)
    (ct, xt), (cv, xv) = task.split("train", n_train), task.split("val", n_val)
    if not len(xt):
        raise PCTDataError(f"task {task.name} gave no training conditions")
    split = torch.cat([torch.zeros(len(xt), dtype=torch.long), torch.ones(len(xv), dtype=torch.long)])
    with atomic_path(path / "conditions.pt") as tmp:
        torch.save({"cond": cat_cond(ct, cv) if len(xv) else ct, "x_T": torch.cat([xt, xv]), "split": split}, tmp)
    meta["timing"]["conditions_s"] = time.perf_counter() - t0
    write_json(path / "store.json", meta)


def _chunk(task, cfg: PCTData, grid, c: dict, ci: int, keep: bool) -> dict:
    """Chunk ``ci``: X* (B, T+1, ...) and, when ``keep``, the base iterates (B, K, T+1, ...) of its rows."""
    sl = slice(ci * cfg.chunk, min(len(c["x_T"]), (ci + 1) * cfg.chunk))
    x_T, cond = c["x_T"][sl], index_cond(c["cond"], sl)
    _, st = sample_sequential(task.model_fn, x_T, cond, grid=grid, return_trajectory=True)
    part = {"x_star": st.trajectory.transpose(0, 1)}  # (B, T+1, ...)
    if keep:
        its = base_iterates(task.model_fn, grid, x_T, cond, cfg.iterates - 1, safeguard=cfg.safeguard, init=cfg.init)
        part["iterates"] = torch.stack(its).movedim(2, 0)  # (B, K, T+1, ...)
    return part


def _var_k(task, cfg: PCTData, grid, data: dict) -> list[float]:
    """Var_k = mean over the first ``var_n`` training conditions of mean((X^k - X*)^2), k = 0..K-1 (per-sample
    means in float32 numpy, summed in float64, chunk by chunk in order; several processes share the chunks)."""
    idx = (data["split"] == 0).nonzero().flatten()[:cfg.var_n]

    def sums(starts):
        out = []
        for i0 in starts:
            n = idx[i0:i0 + cfg.chunk]
            if data["iterates"] is not None:
                its = data["iterates"][n]
            else:
                its = torch.stack(base_iterates(task.model_fn, grid, data["x_T"][n], index_cond(data["cond"], n),
                                                cfg.iterates - 1, safeguard=cfg.safeguard, init=cfg.init)).movedim(2, 0)
            its, xs = its.numpy(), data["x_star"][n].numpy()
            out.append(((its - xs[:, None]) ** 2).reshape(len(its), cfg.iterates, -1).mean(-1).sum(0))
        return out

    total = np.zeros(cfg.iterates)
    for part in dist.shard_and_gather(sums, range(0, len(idx), cfg.chunk)):
        total += part
    return (total / max(1, len(idx))).tolist()


def load(path: str | Path, check: bool = True) -> dict:
    """The store as tensors: ``cond``, ``x_T``, ``x_star`` (N, T+1, ...), ``iterates`` (N, K, T+1, ...) or None
    (made per batch), ``split`` (N,: 1 held out), ``var_k`` (K,), ``config``, ``timing``. Raises PCTDataError
    for a missing or incomplete store."""
    path = Path(path)
    if not (path / "store.json").is_file() or not (path / "conditions.pt").is_file():
        raise PCTDataError(f"{path}: no trajectory store; make it with scripts/train_pct.py")
    meta, c = json.loads((path / "store.json").read_text()), torch.load(path / "conditions.pt")
    if check and "var_k" not in meta:
        raise PCTDataError(f"{path} is incomplete; rerun scripts/train_pct.py to finish it")
    chunks = [torch.load(path / f"chunk_{i:05d}.pt") for i in range(math.ceil(len(c["x_T"]) / meta["config"]["chunk"]))]
    its = [p["iterates"] for p in chunks if "iterates" in p]
    return {**c, "x_star": torch.cat([p["x_star"] for p in chunks]),
            "iterates": torch.cat(its) if its and len(its) == len(chunks) else None,
            "var_k": torch.tensor(meta["var_k"]) if "var_k" in meta else None,
            "config": meta["config"], "timing": meta["timing"]}
