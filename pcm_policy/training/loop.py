"""One training loop for every loss: AdamW + warm-up/cosine + EMA, JSON-lines log, resumable.

The loop knows nothing about diffusion: it gets a module, a ``loss_fn(batch) -> loss``, an iterator
of batches and a ``save_fn(module, step)`` that writes the deliverable (a policy checkpoint or an
adapter; the module carries the EMA weights while it runs). Its own resume state (``state.pt``: the
TRAINED parameters, their EMA, optimiser, schedule, step, RNG) is written atomically every
``ckpt_every`` steps and on exit, so a killed run continues where it stopped; a frozen base is never
copied or saved there.

A resume is announced, and refused (``ResumeError``) when the caller's ``config`` (what defines the run)
differs from the one the run folder was started with (``config.json``, written on a fresh start): a run
folder holds one run, never a mix of two.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..io import atomic_path, write_json, write_text
from .ema import EMA


@dataclass
class LoopConfig:
    steps: int
    lr: float = 1e-4
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 1e-6
    warmup_steps: int = 500
    optimizer: str = "adamw"  # adamw | adam
    ema_power: float = 0.75
    ema_max: float = 0.9999
    use_ema: bool = True
    log_every: int = 100
    val_every: int = 1000
    ckpt_every: int = 1000
    snapshot_every: int = 0  # keep a copy of the deliverable every N steps (0: never)
    seed: int = 42


class ResumeError(ValueError):
    """A run folder holds a run started with another configuration."""


def _flat(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    return {k: v for key, val in d.items() for k, v in _flat(val, f"{prefix}{key}.").items()}


def check_resume(run_dir: Path, config: dict | None, step: int | None) -> None:
    """Write ``config.json`` on a fresh start (``step`` None); on a resume compare and announce."""
    path = run_dir / "config.json"
    config = None if config is None else json.loads(json.dumps(config))  # tuples -> lists, as saved
    if step is None:
        if config is not None:
            write_json(path, config)
        return
    saved = json.loads(path.read_text()) if path.exists() else None
    if config is not None and saved is not None and saved != config:
        old, new = _flat(saved), _flat(config)
        diff = [f"{k}: {old.get(k, '<unset>')!r} there, {new.get(k, '<unset>')!r} now"
                for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        raise ResumeError(f"{run_dir} holds a run started with another config ({'; '.join(diff[:4])}"
                          f"{' ...' if len(diff) > 4 else ''}); pass another run folder for a new run, or the "
                          f"run's own settings ({path}) to resume it")
    print(f"resuming the run in {run_dir} at step {step} (state.pt)"
          + ("" if saved is not None or config is None else "; it has no config.json to compare with"), flush=True)
    if saved is None and config is not None:
        check_resume(run_dir, config, None)


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warm-up from 0, then half-cosine to 0 at ``total`` (diffusers' 'cosine')."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(model: nn.Module, loss_fn: Callable[[dict], torch.Tensor], batches: Iterator[dict], cfg: LoopConfig,
          run_dir: str | os.PathLike, save_fn: Callable[[nn.Module, int], None],
          val_fn: Callable[[nn.Module], dict] | None = None, params: list[nn.Parameter] | None = None,
          desc: str = "train", config: dict | None = None) -> nn.Module:
    """Train ``params`` (default: every trainable parameter of ``model``) for ``cfg.steps`` steps.

    ``config`` (JSON-able): what defines the run, kept in ``run_dir/config.json``; a resume under another
    config raises ``ResumeError`` before anything is loaded or written.
    Returns ``model`` with the EMA weights loaded (``cfg.use_ema``), else as trained.
    Raises ValueError when nothing requires grad or ``params`` are not parameters of ``model``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    ids = {id(p) for p in params}
    names = [n for n, p in model.named_parameters() if id(p) in ids]
    if len(names) != len(params):
        raise ValueError("params must be parameters of model")
    for p in model.parameters():  # the EMA and the resume state follow requires_grad
        p.requires_grad_(id(p) in ids)
    named = dict(model.named_parameters())
    opt_cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[cfg.optimizer]
    opt = opt_cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, cfg.warmup_steps, cfg.steps))
    ema = EMA(model, cfg.ema_power, cfg.ema_max) if cfg.use_ema else None
    step, state_path, log_path = 0, run_dir / "state.pt", run_dir / "log.jsonl"
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        check_resume(run_dir, config, int(state["step"]))
        if "params" not in state:
            raise ResumeError(f"{state_path} was written by an earlier version (no 'params'); pass a new run folder")
        with torch.no_grad():
            for n in names:
                named[n].copy_(state["params"][n])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        step = int(state["step"])
        if log_path.exists():  # drop log rows written after the checkpoint we resume from
            rows = [r for r in log_path.read_text().splitlines() if r and json.loads(r)["step"] <= step]
            write_text(log_path, "".join(r + "\n" for r in rows))
    else:
        check_resume(run_dir, config, None)
        torch.manual_seed(cfg.seed)

    def averaged():
        return ema.applied(model) if ema is not None else contextlib.nullcontext(model)

    def checkpoint():
        state = {"params": {n: named[n].detach().clone() for n in names}, "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "step": step, "rng": torch.get_rng_state()}
        if ema is not None:
            state["ema"] = ema.state_dict()
        with atomic_path(state_path) as tmp:
            torch.save(state, tmp)
        was = model.training
        model.eval()
        with averaged() as m:
            save_fn(m, step)
        model.train(was)

    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc=desc, dynamic_ncols=True)
    losses, t0 = [], time.perf_counter()
    try:
        while step < cfg.steps:
            loss = loss_fn(next(batches))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(model)
            step += 1
            losses.append(loss.item())
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                rec = {"step": step, "loss": sum(losses) / len(losses), "lr": sched.get_last_lr()[0],
                       "s_per_step": (time.perf_counter() - t0) / len(losses)}
                if val_fn is not None and (step % cfg.val_every == 0 or step == cfg.steps):
                    model.eval()
                    with averaged() as m:
                        rec.update(val_fn(m))
                    model.train()
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
                losses, t0 = [], time.perf_counter()
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                checkpoint()
            if cfg.snapshot_every and step % cfg.snapshot_every == 0:
                model.eval()
                with averaged() as m:
                    save_fn(m, -step)
                model.train()
    except KeyboardInterrupt:
        checkpoint()
        raise
    finally:
        bar.close()
    model.eval()
    if ema is not None:
        with torch.no_grad():
            for n, avg in ema.shadow.items():
                named[n].copy_(avg)
    return model


def infinite_batches(loader, start_epoch: int = 0) -> Iterator[dict]:
    """Cycle a DataLoader forever, reseeding its shuffle per epoch."""
    epoch = start_epoch
    while True:
        if hasattr(loader, "generator") and loader.generator is not None:
            loader.generator.manual_seed(epoch)
        yield from loader
        epoch += 1
