"""One training loop for every loss: AdamW + warm-up/cosine + EMA, JSON-lines log, resumable.

The loop knows nothing about diffusion: it gets a module, a ``loss_fn(batch) -> loss``, an iterator
of batches and a ``save_fn(module, step)`` that writes the deliverable (a policy checkpoint or an
adapter; the module carries the EMA weights while it runs). Its own resume state (``state.pt``: the
TRAINED parameters, their EMA, optimiser, schedule, step, RNG) is written atomically every
``ckpt_every`` steps and on exit, so a killed run continues where it stopped; a frozen base is never
copied or saved there.

A resume is announced, and refused (``ResumeError``) when the caller's ``config`` (what defines the run)
differs from the one the run folder was started with (``config.json``, written on a fresh start): a run
folder holds one run, never a mix of two. A running job holds the folder's lock (``run_dir/.lock``, taken
before ``config.json`` is written and released when the job ends or dies): a second job started there while
it runs is refused at once (hydra issue 2925's kind: jobs started together sharing one output folder).

Under ``torchrun`` (``distributed.init_from_env`` called first) the loop is data-parallel: every rank reads the
whole batch, trains on its share, gradients are averaged, rank 0 alone writes; see ``distributed``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..io import atomic_path, run_folder_lock, write_json, write_text
from . import distributed as dist
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

    def __post_init__(self):
        """Every size and rate checked up front (``training.steps=-1`` wrote an untrained checkpoint, exit 0)."""
        def bad(name, ok, rule):
            if not ok:
                raise ValueError(f"training {name} must be {rule}, got {getattr(self, name)!r}")

        def integer(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def real(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        bad("steps", integer(self.steps) and self.steps >= 1, "an integer >= 1")
        bad("lr", real(self.lr) and self.lr > 0, "a finite number > 0")
        bad("betas", len(self.betas) == 2 and all(real(b) and 0 <= b < 1 for b in self.betas), "two numbers in [0, 1)")
        bad("weight_decay", real(self.weight_decay) and self.weight_decay >= 0, "a finite number >= 0")
        bad("warmup_steps", integer(self.warmup_steps) and self.warmup_steps >= 0, "an integer >= 0")
        bad("optimizer", self.optimizer in ("adamw", "adam"), "adamw or adam")
        bad("ema_power", real(self.ema_power) and self.ema_power > 0, "a finite number > 0")
        bad("ema_max", real(self.ema_max) and 0 <= self.ema_max < 1, "in [0, 1)")
        for name in ("log_every", "val_every", "ckpt_every"):
            bad(name, integer(getattr(self, name)) and getattr(self, name) >= 1, "an integer >= 1")
        bad("snapshot_every", integer(self.snapshot_every) and self.snapshot_every >= 0, "an integer >= 0 (0: never)")
        bad("seed", integer(self.seed) and 0 <= self.seed < 2**63, "an integer in 0..2**63 - 1")


class ResumeError(ValueError):
    """A run folder holds a run started with another configuration."""


def _flat(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    return {k: v for key, val in d.items() for k, v in _flat(val, f"{prefix}{key}.").items()}


def _diff(saved: dict, config: dict) -> list[str]:
    old, new = _flat(saved), _flat(config)
    return [f"{k}: {old.get(k, '<unset>')!r} there, {new.get(k, '<unset>')!r} now"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def check_resume(run_dir: Path, config: dict | None, step: int | None) -> None:
    """Write ``config.json`` on a fresh start (``step`` None); on a resume compare and announce."""
    path = run_dir / "config.json"
    config = None if config is None else json.loads(json.dumps(config))  # tuples -> lists, as saved
    if step is None:
        saved = json.loads(path.read_text()) if config is not None and path.exists() else None
        if saved is not None and saved != config:  # a run that stopped before its first state.pt
            raise ResumeError(f"{run_dir} holds the config.json of another run that has no state.pt yet "
                              f"({'; '.join(_diff(saved, config)[:4])}); pass another run folder for a new run, "
                              f"or remove {run_dir} if that run is abandoned")
        if config is not None:
            write_json(path, config)
        return
    saved = json.loads(path.read_text()) if path.exists() else None
    if config is not None and saved is not None and saved != config:
        diff = _diff(saved, config)
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


@contextlib.contextmanager
def hold_run_folder(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the run folder's lock (``io.run_folder_lock``) for one job: rank 0 holds it, and every rank raises
    when it cannot be taken (``FolderInUseError`` on rank 0, ``distributed.DistributedError`` on the others).
    Re-entrant within a process: a driver takes it before its set-up (data, model, trajectory store), so a second
    job in the folder is refused before any work, and ``train`` takes it again around the loop."""
    with contextlib.ExitStack() as held:
        dist.all_ok(lambda: held.enter_context(run_folder_lock(run_dir)) if dist.is_main() else None, "run folder")
        yield Path(run_dir)


def train(model: nn.Module, loss_fn: Callable[[dict], torch.Tensor], batches: Iterator[dict], cfg: LoopConfig,
          run_dir: str | os.PathLike, save_fn: Callable[[nn.Module, int], None],
          val_fn: Callable[[nn.Module], dict] | None = None, params: list[nn.Parameter] | None = None,
          desc: str = "train", config: dict | None = None) -> nn.Module:
    """Train ``params`` (default: every trainable parameter of ``model``) for ``cfg.steps`` steps.

    ``config`` (JSON-able): what defines the run, kept in ``run_dir/config.json``; a resume under another
    config raises ``ResumeError`` before anything is loaded or written.
    Returns ``model`` with the EMA weights loaded (``cfg.use_ema``), else as trained.
    The run folder is locked (``io.run_folder_lock``) before anything is read or written there: a second job
    in it raises ``FolderInUseError`` (a ValueError) at once, whatever its config.
    Raises ValueError when nothing requires grad or ``params`` are not parameters of ``model``.
    Data-parallel (``distributed.world_size()`` > 1): ``distributed.DistributedError`` when the ranks' configs
    differ, when a setup step failed on another rank, or when another rank died during the run; ValueError when
    the batch size is not divisible by the number of processes.
    """
    import dataclasses

    names = [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
    dist.check_same({"config": config, "loop": dataclasses.asdict(cfg), "trained": names}, "run config")
    saved = ["none"]  # the last state written (the SIGTERM line names it)
    with hold_run_folder(run_dir), dist.sigterm_says(lambda: f"the last saved state is {saved[-1]}: re-run the "
                                                     "command to resume (with any number of processes)"):
        return _train(model, loss_fn, batches, cfg, Path(run_dir), save_fn, val_fn, params, desc, config, saved)


def _train(model, loss_fn, batches, cfg: LoopConfig, run_dir: Path, save_fn, val_fn, params, desc, config,
           saved: list):
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    ids = {id(p) for p in params}
    names = [n for n, p in model.named_parameters() if id(p) in ids]
    if len(names) != len(params):
        raise ValueError("params must be parameters of model")
    for p in model.parameters():  # the EMA and the resume state follow requires_grad
        p.requires_grad_(id(p) in ids)
    dist.broadcast_params(params)  # every rank starts from rank 0's weights (DDP's rule)
    main, world = dist.is_main(), dist.world_size()
    named = dict(model.named_parameters())
    opt_cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[cfg.optimizer]
    opt = opt_cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, cfg.warmup_steps, cfg.steps))
    ema = EMA(model, cfg.ema_power, cfg.ema_max) if cfg.use_ema else None
    step, state_path, log_path = 0, run_dir / "state.pt", run_dir / "log.jsonl"
    found = state_path.exists()
    dist.check_same(found and state_path.stat().st_mtime_ns,  # the ranks must read the same state.pt
                    f"view of {state_path} (put the run folder on a file system every rank sees)")
    if found:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        dist.all_ok(lambda: check_resume(run_dir, config, int(state["step"])) if main else None, "resume check")
        if "params" not in state:
            raise ResumeError(f"{state_path} was written by an earlier version (no 'params'); pass a new run folder")
        with torch.no_grad():
            for n in names:
                named[n].copy_(state["params"][n])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        step = int(state["step"])
        if hasattr(batches, "seek"):  # the data position: a resumed run reads the batches the stopped one would
            batches.seek(int(state.get("batches", step)))
        torch.set_rng_state(state["rng"])  # after the seek: reading batches may draw from it
        if main and log_path.exists():  # drop log rows written after the checkpoint we resume from
            rows = [r for r in log_path.read_text().splitlines() if r and json.loads(r)["step"] <= step]
            write_text(log_path, "".join(r + "\n" for r in rows))
    else:
        dist.all_ok(lambda: check_resume(run_dir, config, None) if main else None, "fresh start")
        torch.manual_seed(cfg.seed)

    def averaged():
        return ema.applied(model) if ema is not None else contextlib.nullcontext(model)

    def checkpoint(rng=None):  # rng: the RNG state at the start of the step (an interrupted one), else now
        if not main:  # rank 0 writes it
            saved.append(f"step {step} ({state_path})")
            return
        state = {"params": {n: named[n].detach().clone() for n in names}, "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "step": step, "batches": step,  # one batch per step
                 "rng": torch.get_rng_state() if rng is None else rng}
        if ema is not None:
            state["ema"] = ema.state_dict()
        with dist.sigterm_held():  # torchrun's SIGTERM waits until the state is both written and recorded
            with atomic_path(state_path) as tmp:
                torch.save(state, tmp)
            saved.append(f"step {step} ({state_path})")
        was = model.training
        model.eval()
        with averaged() as m:
            save_fn(m, step)
        model.train(was)

    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc=desc, dynamic_ncols=True, disable=not main)
    losses, t0 = [], time.perf_counter()
    untouched, rng, stop_all = True, None, False  # untouched: the current step has changed no state yet
    saved.append(f"step {step} ({state_path})" if step else "none")
    try:
        with _deferred_sigint() as stop:
            while step < cfg.steps:
                if stop if world == 1 else stop_all:  # Ctrl-C at a step boundary (every rank at the same one)
                    raise KeyboardInterrupt
                rng, untouched = torch.get_rng_state(), True
                batch = next(batches)  # every rank reads the whole batch, keeps its rows (or the stream did)
                batch = batch if getattr(batches, "sharded", False) else dist.shard_batch(batch)
                with dist.rank_rng(cfg.seed, step):  # several ranks: draws inside the loss differ per rank
                    loss = loss_fn(batch)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                untouched = False
                total, stops = dist.average_gradients(params, loss.item(), float(bool(stop)))
                stop_all = stops > 0
                opt.step()
                sched.step()
                if ema is not None:
                    ema.update(model)
                step += 1
                losses.append(total / world)  # the whole batch's loss
                bar.update(1)
                if main and (step % cfg.log_every == 0 or step == cfg.steps):
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
                rng, untouched = None, True  # the step, its log row and validation are done: RNG now the next's
                if step % cfg.ckpt_every == 0 or step == cfg.steps:
                    checkpoint()
                if main and cfg.snapshot_every and step % cfg.snapshot_every == 0:
                    model.eval()
                    with averaged() as m:
                        save_fn(m, -step)
                    model.train()
                dist.sync_rng()  # rank 0's validation and saving may have drawn from its RNG
    except KeyboardInterrupt:
        bar.close()
        if not untouched:  # stopped inside the parameter update: what is in memory is half a step
            raise Interrupted(f"interrupted inside step {step + 1} of {cfg.steps}; kept the last saved state "
                              f"{state_path if state_path.exists() else '(none yet)'}") from None
        checkpoint(rng)
        raise Interrupted(f"interrupted at step {step} of {cfg.steps}; saved {state_path}") from None
    except dist.DistributedError as e:  # another rank died: say where the run can resume from
        raise dist.DistributedError(f"{e} in step {step + 1}; the last saved state is {saved[-1]}: re-run the "
                                    "command to resume (with any number of processes)") from None
    finally:
        bar.close()
    model.eval()
    if ema is not None:
        with torch.no_grad():
            for n, avg in ema.shadow.items():
                named[n].copy_(avg)
    return model


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped ``train``; ``str()`` says what was saved (scripts print it and exit 130)."""


@contextlib.contextmanager
def _deferred_sigint():
    """While the block runs (main thread only), the first Ctrl-C sets a flag the loop reads at its next step
    boundary (a step is never half done); a second one interrupts at once."""
    stop: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop:
            raise KeyboardInterrupt
        stop.append(True)
        print("\nCtrl-C: stopping after this step and saving (Ctrl-C again to stop at once)", file=sys.stderr,
              flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def infinite_batches(loader, start_epoch: int = 0, *, seed: int | None = None) -> BatchStream:
    """Cycle a DataLoader forever (``BatchStream``): epoch e shuffles with its own seed drawn from (``seed``, e);
    ``seed`` None: the initial seed of ``loader.generator`` (``training.seed`` in ``train_policy``)."""
    return BatchStream(loader, start_epoch, seed)


class BatchStream:
    """A DataLoader's batches, epoch after epoch, that can be positioned: the loop saves how many batches it
    drew and a resumed run ``seek``s there, so it reads the batches the uninterrupted run reads (lerobot PR 4692,
    joeynmt issue 125: a resume that restarts the data order). Exact when the loader's order comes from
    ``loader.generator`` (its sampler's shuffle), which each epoch reseeds from (seed, epoch)."""

    def __init__(self, loader, start_epoch: int = 0, seed: int | None = None):
        self.loader, self.start_epoch = loader, int(start_epoch)
        self.generator = getattr(loader, "generator", None)
        self.seed = seed if seed is not None or self.generator is None else self.generator.initial_seed()
        self.epoch, self.batch, self._it = self.start_epoch, 0, None

    def epoch_seed(self, epoch: int) -> int:
        """The shuffle seed of ``epoch``: independent streams per (seed, epoch) (numpy's SeedSequence)."""
        import numpy as np

        return int(np.random.SeedSequence([int(self.seed), int(epoch)]).generate_state(1, np.uint64)[0] >> 1)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self):
        while True:
            if self._it is None:
                if self.generator is not None and self.seed is not None:
                    self.generator.manual_seed(self.epoch_seed(self.epoch))
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                if self.batch == 0:
                    raise ValueError("the data loader yields no batch (fewer windows than batch_size with "
                                     "drop_last?); use a smaller batch size or more data") from None
                self._it, self.epoch, self.batch = None, self.epoch + 1, 0
                continue
            self.batch += 1
            return batch

    def seek(self, position: int) -> None:
        """Continue after ``position`` batches drawn from the start: whole epochs are skipped without reading
        them, the rest of the last one is read and dropped."""
        try:
            per = len(self.loader)
        except TypeError:  # no length (an iterable dataset): read and drop every batch
            per = 0
        self.epoch, self.batch, self._it = self.start_epoch + (position // per if per else 0), 0, None
        for _ in range(position % per if per else position):
            next(self)
