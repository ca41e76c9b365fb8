"""Receding-horizon control of PushT envs in lockstep, with the reference's evaluation semantics.

Each control step feeds the last ``n_obs_steps`` observations of every running episode to ONE
batched policy call, then executes ``n_action_steps`` actions per env, stopping an env as soon as it
succeeds (coverage > 0.95) or reaches ``max_steps`` (the reference protocol). Score = the episode's max reward.

Every random draw of a chunk (the initial noise x_T and, for DDPM, the step noise) comes from a generator
of its own per (episode seed, chunk), so an episode's actions do not depend on which other episodes share
the batch, nor on torch's global seed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import numpy as np
import torch

from envs.pusht import PushTEnv

from ..device import synchronize


def chunk_generator(seed: int, chunk: int, noise_seed: int = 0) -> torch.Generator:
    """The generator of one (episode seed, chunk): x_T first, then any step noise (CPU, any device)."""
    return torch.Generator().manual_seed(hash((noise_seed, seed, chunk)) % (2**63))


def chunk_noise(seed: int, chunk: int, shape: tuple, noise_seed: int = 0) -> torch.Tensor:
    """x_T of one (episode seed, chunk): the first draw of ``chunk_generator``."""
    return torch.randn(shape, generator=chunk_generator(seed, chunk, noise_seed))


def run_rollouts(policy, sampler: Callable, seeds: list[int], *, max_steps: int = 200, legacy: bool = True,
                 noise_seed: int = 0, record: set[int] | None = None, render_size: int = 256,
                 caption: Callable[[dict], str] | None = None, progress: bool = False,
                 warm_start: bool = False, budget_s: float | None = None,
                 on_chunk: Callable[[int, torch.Tensor, dict], None] | None = None) -> dict:
    """Roll out ``policy`` with ``sampler`` on ``seeds`` in lockstep.

    Args:
        policy: a ``DiffusionPolicy`` (``predict_action``, ``cfg``, ``device``).
        sampler: ``sampler(model_fn, x_T, cond, **kw) -> (x_0, stats)`` (``sampling.make_sampler``).
        seeds: episode seeds (legacy reset: the reference's start state for each).
        max_steps: env steps per episode (200 in the evaluation protocol).
        noise_seed: salt of the per-(seed, chunk) initial noise.
        on_chunk: called after every batched chunk as ``on_chunk(chunk, obs, out)``: ``obs`` (B_active,
            n_obs_steps, obs_dim) raw observations, ``out`` the ``predict_action`` dict (rows in the
            order of the running episodes, by seed order).
    Returns:
        {"episodes": [{"seed", "score", "success", "steps", "max_coverage", "final_coverage", "chunks": [
        {"chunk", "iterations", "nfe", "batch_iterations", "latency_s" (s), "batch", "budget_hit"}, ...]}, ...],
        "frames": {seed: [...]}, "envs": [...], "cold_restarts": samples the sampler re-solved cold after a
        non-finite iterate} (the envs are left where their episodes ended). A chunk's
        ``iterations`` and ``nfe`` are the episode's own sample's (iterative samplers converge per sample),
        ``batch_iterations`` the batched calls of the whole chunk (its slowest sample), ``budget_hit`` whether
        the time budget stopped this episode's sample before it converged.

    ``record``: seeds whose frames (with the action marker) are kept for a video; ``caption(chunk)``
    turns a chunk's figures (None for the first frame) into a line drawn on its frames.
    ``warm_start``: pass each chunk's sampler an x0 guess (``init``, Picard/PCM/Newton only): the previous
    chunk's normalised prediction shifted by the executed actions (its last action repeated at the end;
    zeros for the first chunk, and after a chunk whose sample did not converge: an unconverged iterate is never
    carried forward, where it could grow chunk after chunk). The sampler's fixed point, and so the converged
    action, does not change. A non-finite action is never handed to an env (ValueError).
    ``budget_s``: each chunk's time budget (iterative samplers, ``sampling.picard``): the sampler returns
    its current iterate when it is spent.
    """
    cfg = policy.cfg
    record = record or set()
    envs = [PushTEnv(obs_type=cfg.obs_type, legacy=legacy, render_mode="rgb_array" if s in record else None,
                     render_size=render_size) for s in seeds]
    hist, eps, frames = [], [], {s: [] for s in seeds if s in record}
    for env, s in zip(envs, seeds, strict=True):
        obs, info = env.reset(seed=s)
        hist.append(deque([obs] * cfg.n_obs_steps, maxlen=cfg.n_obs_steps))
        eps.append({"seed": s, "score": float(np.clip(info["coverage"] / 0.95, 0, 1)), "success": False,
                    "steps": 0, "max_coverage": info["coverage"], "final_coverage": info["coverage"],
                    "final_n_contacts": info["n_contacts"], "chunks": []})
        if s in frames:
            frame = env.render()
            frames[s].append(frame if caption is None else _caption(frame, caption(None)))
    active, chunk = [i for i in range(len(envs))], 0
    shape = (cfg.horizon, cfg.action_dim)
    guess = torch.zeros(len(envs), *shape)  # warm start: x0 guess per episode
    restarts = 0  # samples the sampler re-solved cold after a non-finite iterate (``picard.picard_loop``)
    while active:
        obs = torch.as_tensor(np.stack([np.stack(hist[i]) for i in active]), dtype=torch.float32)
        gens = [chunk_generator(seeds[i], chunk, noise_seed) for i in active]
        noise = torch.stack([torch.randn(shape, generator=g) for g in gens])  # x_T = chunk_noise(...)
        t0 = time.perf_counter()
        kw = {"init": guess[active].to(policy.device)} if warm_start else {}
        if budget_s is not None:
            kw["budget_s"] = budget_s
        out = policy.predict_action(obs, sampler, noise=noise, generator=gens, **kw)  # gens: the step noise
        synchronize(policy.device)
        latency = time.perf_counter() - t0
        if on_chunk is not None:
            on_chunk(chunk, obs, out)
        st, n_act = out["stats"], len(active)
        restarts += st.cold_restarts
        if warm_start:  # only a converged prediction is carried: an unconverged one could compound chunk to chunk
            pred, n = out["action_pred_norm"].detach().cpu(), cfg.n_action_steps
            done_rows = torch.tensor(st.sample_converged or [st.converged] * n_act).view(-1, 1, 1)
            guess[active] = torch.where(done_rows, torch.cat([pred[:, n:], pred[:, -1:].expand(-1, n, -1)], dim=1), 0)
        its = st.sample_iterations or [st.iterations] * n_act  # sequential samplers: the batch's
        nfe = st.sample_nfe or [st.nfe] * n_act
        conv = st.sample_converged or [st.converged] * n_act
        figs = [{"chunk": chunk, "iterations": int(its[r]), "nfe": float(nfe[r]),
                 "batch_iterations": int(st.iterations), "latency_s": latency, "batch": n_act,
                 "budget_hit": bool(st.out_of_budget and not conv[r])} for r in range(n_act)]
        actions = out["action"].cpu().numpy().astype(np.float64)
        if not np.isfinite(actions).all():  # never handed to an env
            bad = [seeds[i] for row, i in enumerate(active) if not np.isfinite(actions[row]).all()]
            raise ValueError(f"the sampler returned non-finite actions for episode seed(s) {bad} at chunk {chunk}; "
                             "check the checkpoint and the sampler settings")
        still = []
        for row, i in enumerate(active):
            env, ep = envs[i], eps[i]
            fig = figs[row]
            ep["chunks"].append(fig)
            done = False
            for a in actions[row]:
                obs_i, reward, terminated, _, info = env.step(a)
                hist[i].append(obs_i)
                ep["steps"] += 1
                ep["score"] = max(ep["score"], reward)
                ep["max_coverage"] = max(ep["max_coverage"], info["coverage"])
                ep["final_coverage"], ep["final_n_contacts"] = info["coverage"], info["n_contacts"]
                if seeds[i] in frames:
                    frame = env.render()
                    frames[seeds[i]].append(frame if caption is None else _caption(frame, caption(fig)))
                if terminated:
                    ep["success"] = True
                if terminated or ep["steps"] >= max_steps:
                    done = True
                    break
            if not done:
                still.append(i)
        active, chunk = still, chunk + 1
        if progress:
            print(f"\rchunk {chunk}: {len(active)} running", end="", flush=True)
    if progress:
        print()
    return {"episodes": eps, "frames": frames, "envs": envs, "cold_restarts": restarts}


def summarize(episodes: list[dict]) -> dict:
    """Means over episode-chunks (``mean_iterations``, ``mean_nfe``: per sample; ``budget_hit_rate``: the
    share whose sample the time budget stopped) and over batched chunks (``mean_batch_iterations``)."""
    chunks = [c for e in episodes for c in e["chunks"]]
    batch_its = {c["chunk"]: c.get("batch_iterations", c["iterations"]) for c in chunks}  # one per batched call
    return {"episodes": len(episodes), "mean_score": float(np.mean([e["score"] for e in episodes])),
            "success_rate": float(np.mean([e["success"] for e in episodes])),
            "mean_steps": float(np.mean([e["steps"] for e in episodes])),
            "mean_iterations": float(np.mean([c["iterations"] for c in chunks])),
            "mean_batch_iterations": float(np.mean(list(batch_its.values()))),
            "mean_nfe": float(np.mean([c["nfe"] for c in chunks])),
            "budget_hit_rate": float(np.mean([c.get("budget_hit", False) for c in chunks])),
            "median_latency_s": float(np.median([c["latency_s"] for c in chunks]))}


def _caption(frame: np.ndarray, text: str) -> np.ndarray:
    from envs.pusht.video import caption

    return caption(frame, text)
