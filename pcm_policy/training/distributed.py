"""Data-parallel training with torch.distributed (under ``torchrun``; gloo on CPU, nccl on GPUs).

The training loop (``loop.train``) is SPMD: every process (rank) reads the SAME whole batch from the same
seeded stream, keeps its contiguous share of the rows (``shard_batch``), and the gradients are averaged over
ranks (``average_gradients``: one ``all_reduce`` per bucket, what ``DistributedDataParallel`` does after
``backward``, written out because the loop's losses call the model through closures, not one ``forward``).
With equal shares the averaged gradient is the whole batch's, so N processes train the parameters one
process trains, up to float summation order. Rank 0 alone writes (state, log, checkpoints); the resume state
holds no world size, so a run resumes with any number of processes at the same step and data position.

A loss that draws randomness per row (noise, timesteps) must draw it with the batch, for all the batch's
rows, so that a rank's share carries the rows' own draws (``pusht.train`` does; PCT's batches do already).
Draws made inside the loss use a per-rank stream (``rank_rng``): independent across ranks, not equal to one
process's. A batch stream whose ``sharded`` attribute is true hands each rank its rows itself (``paper.pct.PCTBatches``
making the base iterates per batch: each rank makes only its rows'); the loop then takes its batches as they are.

Failures: ``all_ok`` runs a rank's part of a setup step and raises on every rank when any rank failed
(rank 0's run-folder lock, its resume check); ``check_same`` compares a hash of the config across ranks; a
collective that fails because another rank died (gloo: connection closed; else the process group's timeout,
``PCM_DIST_TIMEOUT`` seconds, default 1800) raises ``DistributedError`` with one line.

Outside ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) every helper is a one-process no-op.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

__all__ = ["DistributedError", "all_ok", "average_gradients", "broadcast_params", "check_divisible", "check_same",
           "env_world_size", "init_from_env", "is_main", "rank", "rank_rng", "shard_and_gather", "shard_batch",
           "shutdown", "sigterm_held", "sigterm_says", "sync_rng", "world_size"]


class DistributedError(RuntimeError):
    """Another rank failed or disagreed; ``str()`` is one line saying which and what to do."""


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def env_world_size() -> int:
    """The process count ``torchrun`` announces (``WORLD_SIZE``; 1 without it), read before joining the group so
    that a script can refuse bad settings before any work. ValueError for a value that is not an integer >= 1."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(raw)
    except ValueError:
        world = 0
    if world < 1:
        raise ValueError(f"WORLD_SIZE={raw!r} in the environment is not an integer >= 1; launch with torchrun "
                         "--nproc_per_node=N (or unset WORLD_SIZE for one process)")
    return world


def check_divisible(batch: int, what: str, world: int | None = None) -> None:
    """ValueError (one line) unless the process count (default: this group's) divides the whole batch ``batch``
    (``what``: the setting's name, e.g. ``pct.batch_size``): every rank takes an equal share of each batch."""
    world = world_size() if world is None else world
    if int(batch) % world:
        raise ValueError(f"{what} {batch} is not divisible by the {world} processes; choose a batch size that is a "
                         "multiple of the process count (or another --nproc_per_node)")


def init_from_env(device: str = "cpu") -> torch.device:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/
    ``PORT`` in the environment) when ``WORLD_SIZE`` > 1; idempotent. Backend: nccl for ``device`` cuda, else
    gloo. Returns this process's device: ``cuda:LOCAL_RANK`` for cuda (set as the current device), else cpu.
    Raises ValueError for a world size that is not an integer >= 1 and for cuda with fewer GPUs than local ranks."""
    world = env_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if local >= torch.cuda.device_count():
            raise ValueError(f"local rank {local} has no GPU ({torch.cuda.device_count()} visible); use at most "
                             "--nproc_per_node=<number of GPUs>")
        torch.cuda.set_device(local)
    if world > 1 and not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get("PCM_DIST_TIMEOUT", "1800")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    return torch.device("cuda", local) if cuda else torch.device("cpu")


def shutdown() -> None:
    """Leave the process group (when one was joined); call once at the end of a script."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _gather(obj) -> list:
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_ok(fn: Callable[[], object], what: str = "setup"):
    """Run ``fn`` on this rank, then agree: when any rank raised, every rank raises (this rank its own
    exception, the others ``DistributedError`` naming the first failed rank and its message). Returns ``fn()``."""
    err = None
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - passed on to every rank, re-raised here
        err, result = e, None
    if world_size() > 1:
        failed = [(r, m) for r, m in enumerate(_collective(_gather, f"{type(err).__name__}: {err}" if err else None))
                  if m is not None]
        if failed and err is None:
            r, msg = failed[0]
            raise DistributedError(f"{what} failed on rank {r} of {world_size()}: {msg}")
    if err is not None:
        raise err
    return result


def config_hash(config) -> str:
    """sha256 (16 hex digits) of ``config`` as sorted JSON (tuples as lists, other objects by ``str``)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_same(config, what: str = "config") -> None:
    """DistributedError on every rank unless every rank passes the same ``config`` (compared by hash)."""
    if world_size() == 1:
        return
    hashes = _collective(_gather, config_hash(config))
    odd = [r for r, h in enumerate(hashes) if h != hashes[0]]
    if odd:
        raise DistributedError(f"the {what} of rank(s) {odd} differs from rank 0's (hashes {hashes}); launch every "
                               "rank with the same command and files")


def shard_batch(batch, world: int | None = None, rank_: int | None = None):
    """This rank's contiguous share of ``batch`` (a tensor, a nested dict/list/tuple of them): rows
    ``r*B/W .. (r+1)*B/W`` of every tensor whose first dim is the batch size B (the first tensor's). Identity
    for one process. Raises ValueError when W does not divide B (shares must be equal for the average of the
    ranks' mean losses to be the whole batch's)."""
    world = world_size() if world is None else world
    r = rank() if rank_ is None else rank_
    if world == 1:
        return batch
    n = _first_rows(batch)
    if n is None or n % world:
        raise ValueError(f"batch size {n} is not divisible by the {world} processes; choose a batch size that is a "
                         f"multiple of the process count (or another --nproc_per_node)")
    lo, hi = r * n // world, (r + 1) * n // world

    def cut(v):
        if isinstance(v, dict):
            return {k: cut(u) for k, u in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(cut(u) for u in v)
        return v[lo:hi] if torch.is_tensor(v) and v.ndim > 0 and v.shape[0] == n else v

    return cut(batch)


def _first_rows(v):
    if torch.is_tensor(v):
        return v.shape[0] if v.ndim > 0 else None
    for u in (v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else ()):
        n = _first_rows(u)
        if n is not None:
            return n
    return None


def average_gradients(params: Sequence[torch.Tensor], *scalars: float, bucket_mb: float = 25.0) -> list[float]:
    """Replace every ``p.grad`` by its mean over ranks (sum ``all_reduce`` in flat buckets of ~``bucket_mb``,
    divided by W); a parameter without a gradient on this rank counts as zero, and stays without one when no
    rank has one. ``scalars`` (e.g. the loss, a stop flag) are summed over ranks in the same call and returned.
    One process: no-op, returns ``scalars``."""
    world = world_size()
    if world == 1:
        return list(scalars)
    params = list(params)
    ref = params[0]
    has = torch.tensor([p.grad is not None for p in params] + list(scalars), dtype=torch.float64,
                       device=ref.device)
    _collective(dist.all_reduce, has)
    head, sums = has[:len(params)], has[len(params):].tolist()
    live = [p for p, h in zip(params, head.tolist(), strict=True) if h > 0]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    limit, bucket, size = bucket_mb * 2**20, [], 0
    for p in live + [None]:
        if p is not None:
            bucket.append(p)
            size += p.numel() * p.element_size()
        if bucket and (p is None or size >= limit):
            flat = torch.cat([q.grad.reshape(-1) for q in bucket])
            _collective(dist.all_reduce, flat)
            flat /= world
            offset = 0
            for q in bucket:
                q.grad.copy_(flat[offset:offset + q.numel()].view_as(q.grad))
                offset += q.numel()
            bucket, size = [], 0
    return sums


@torch.no_grad()
def broadcast_params(params: Sequence[torch.Tensor]) -> None:
    """Copy rank 0's values of ``params`` to every rank (what DDP does at construction)."""
    if world_size() > 1:
        for p in params:
            _collective(dist.broadcast, p.data, 0)


_sigterm = {"held": 0, "pending": None, "said": False}  # sigterm_held's depth; the stop it deferred; line printed


@contextlib.contextmanager
def sigterm_says(message: Callable[[], str]):
    """While the block runs (several processes, main thread): SIGTERM, which ``torchrun`` sends every rank when
    one fails, prints ``message()`` as one line on stderr and raises SystemExit(143) (files being written are
    left whole: atomic writes), instead of dying without a word. Inside ``sigterm_held`` it waits for the end
    of that block, so ``message()`` never describes a state half recorded. One process: nothing changes."""
    if world_size() == 1 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop():
        _sigterm["said"] = True
        print(f"\nrank {rank()} of {world_size()}: stopped by SIGTERM (torchrun stops every process when one fails: "
              f"its report names the first); {message()}", file=sys.stderr, flush=True)
        raise SystemExit(143)

    def handler(signum, frame):
        if _sigterm["held"]:
            _sigterm["pending"] = stop
        else:
            stop()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _sigterm.update(pending=None, said=False)


@contextlib.contextmanager
def sigterm_held():
    """Run the block whole: a SIGTERM that ``sigterm_says`` handles during it takes effect when it ends (e.g.
    between writing a state file and recording that it was written). Nests; elsewhere a no-op. After the stop's
    line was printed it raises SystemExit(143) at once (a SystemExit raised inside a finalizer is swallowed, and
    the state the line named must stay the last one written)."""
    if _sigterm["said"]:
        raise SystemExit(143)
    _sigterm["held"] += 1
    try:
        yield
    finally:
        _sigterm["held"] -= 1
        if not _sigterm["held"] and _sigterm["pending"] is not None:
            stop, _sigterm["pending"] = _sigterm["pending"], None
            stop()


@contextlib.contextmanager
def rank_rng(seed: int, step: int):
    """Several processes: run the block with torch's RNG (CPU, and the current GPU) seeded from (``seed``,
    ``step``, rank) and restore the shared stream after, so a loss that draws inside (noise, dropout) draws
    independently on each rank, while the batch stream, drawn outside, stays the same on all of them. Exactness
    against one process needs the draws made with the batch instead. One process: nothing changes."""
    if world_size() == 1:
        yield
        return
    import numpy as np

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and dist.get_backend() == "nccl" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(np.random.SeedSequence([int(seed), int(step), rank()]).generate_state(1, np.uint64)[0]
                              >> 1))
        yield


def sync_rng() -> None:
    """Set torch's CPU RNG on every rank to rank 0's: after rank-0-only work (validation, saving) that may
    draw from it (a DataLoader's ``iter`` draws its base seed), the ranks' next draws agree again."""
    if world_size() > 1:
        state = torch.get_rng_state()
        box = state.to("cuda") if dist.get_backend() == "nccl" else state
        _collective(dist.broadcast, box, 0)
        torch.set_rng_state(box.cpu())


def shard_and_gather(fn: Callable[[list], object], items: Sequence) -> object:
    """Split ``items`` into W contiguous parts (sizes differ by at most one), run ``fn(part)`` on each rank,
    and return on EVERY rank the parts' results in the order of ``items``: lists are concatenated, tensors
    ``torch.cat`` along dim 0 (on the CPU), dicts per key (values tensors or lists), None parts skipped.
    ``fn`` returns one result row per item. One process: ``fn(list(items))``.
    PCT's store (``pct_data.make``): its chunks shared out, one per rank per round, gathered for rank 0 to write."""
    items, world, r = list(items), world_size(), rank()
    if world == 1:
        return fn(items)
    bounds = [len(items) * i // world for i in range(world + 1)]
    part = fn(items[bounds[r]:bounds[r + 1]])
    parts = [p for p in _collective(_gather, _to_cpu(part)) if p is not None]
    return _concat(parts)


def _to_cpu(v):
    if torch.is_tensor(v):
        return v.cpu()
    if isinstance(v, dict):
        return {k: _to_cpu(u) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_to_cpu(u) for u in v)
    return v


def _concat(parts: list):
    if not parts:
        return None
    first = parts[0]
    if torch.is_tensor(first):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {k: _concat([p[k] for p in parts]) for k in first}
    if isinstance(first, (list, tuple)):
        return [x for p in parts for x in p]
    raise TypeError(f"shard_and_gather: fn returned a {type(first).__name__}; return a list, a tensor or a dict")


def _collective(op, *args):
    """Run a collective; a failure (another rank died: connection closed, or the process group's timeout)
    becomes one-line ``DistributedError``."""
    try:
        return op(*args)
    except (RuntimeError, dist.DistBackendError) as e:  # gloo/nccl errors; DistBackendError is a RuntimeError
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first = text.split("] ", 1)[-1].split(". ")[0][:160]  # gloo: "[file:line] Connection closed by peer ..."
        raise DistributedError(f"rank {rank()} of {world_size()}: another process stopped or hung ({first})") from e
