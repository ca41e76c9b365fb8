"""CUDA graphs for a model function: fixed-shape calls captured once, then replayed (a wrapper, ``wrappers.py``).

On a GPU a small UNet call is launch-bound: a lent H100 took 4.8 ms for a 1-row call of the PushT policy and 5.2
ms for a 50-row Picard window, so DDIM-50 (50 narrow calls) was slower there than on this CPU. A CUDA graph
(``torch.cuda.CUDAGraph``, PyTorch's "CUDA Graphs" notes) records the kernels of one call with fixed shapes and
replays them with one launch. ``CudaGraphs(model_fn)`` does that for every call it sees, for the batched Picard
window and the sequential baseline alike:

  width    a call of n rows runs in the graph of the smallest bucket >= n (default: the next power of two), its
           rows copied into the graph's static inputs and the first n output rows returned (a copy). The padded
           rows hold earlier finite inputs; rows do not interact in these models (no batch statistics in eval
           mode), so row i's output is the same with or without them. A Picard window shrinking from 50 rows to 1
           thus uses at most 7 graphs per LoRA scale.
  key      (bucket, per-row shapes and dtypes of x, t and the condition tensors, the other keywords): a float
           ``lora_scale`` (W_0 + lambda dW) is part of the key, because a graph bakes the scale it was captured
           with. A per-row ``lora_scale`` tensor (a Jump's adapted row beside base rows) is split into its
           distinct values, one graph call per value.
  eager    CPU tensors, gradients enabled, keywords that are not plain scalars, a condition that is not a tensor,
           a dict of tensors or None, or ``enabled=False``: the call goes to ``model_fn`` as it is. So on a CPU the
           wrapper is a no-op (tested: the same outputs, bit for bit). A call whose capture raises (a host sync
           inside the model) warns and runs eager from then on (``stats.failed``).

Capture (``torch.cuda.graph``) runs the call ``warmup`` times on a side stream first (cuDNN autotuning and lazy
initialisation happen outside the graph), then records it; each graph keeps its own memory pool. The model's
weights must not be replaced after a capture (in-place updates are seen; ``reset()`` drops the graphs). Outputs
equal the eager model's to float rounding in fp32 (a lent H200: at most 2.4e-7 after a PushT chunk, bit for bit on a
63.6M 1-D UNet); in fp16 the graphed window calls of an SD v1.4-size UNet were not bit-equal to eager (5-7e-2
after 5-10 Picard iterations; cause not isolated), so there it is approximate (``results/device_h200``). Not
thread-safe.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass, field

import torch

from .denoiser import Cond, ModelFn, index_cond

__all__ = ["CudaGraphs", "GraphStats", "check_buckets"]


def check_buckets(buckets: list[int] | None) -> None:
    """ValueError unless ``buckets`` is None or increasing positive integers (graph widths in rows)."""
    if buckets is not None and (not buckets or any(not isinstance(b, int) or b < 1 for b in buckets)
                                or list(buckets) != sorted(set(buckets))):
        raise ValueError(f"buckets must be increasing positive integers (graph widths in rows), got {buckets!r}")


@dataclass
class GraphStats:
    """What a ``CudaGraphs`` did: ``captures`` (graphs recorded), ``replays`` (calls served by a graph),
    ``eager`` (calls passed to the model function unchanged), ``failed`` captures, and the buckets captured."""

    captures: int = 0
    replays: int = 0
    eager: int = 0
    failed: int = 0  # captures that raised (then eager, with a warning)
    buckets: list = field(default_factory=list)


def _flat(cond: Cond, prefix: str = "") -> list[tuple[str, torch.Tensor]] | None:
    """A condition's tensors as (path, tensor), or None when it holds anything else (then the call runs eager)."""
    if cond is None:
        return []
    if torch.is_tensor(cond):
        return [(prefix, cond)]
    if isinstance(cond, dict):
        out = []
        for k in sorted(cond):
            sub = _flat(cond[k], f"{prefix}/{k}")
            if sub is None:
                return None
            out += sub
        return out
    return None


def _rebuild(cond: Cond, tensors: dict[str, torch.Tensor], prefix: str = "") -> Cond:
    if cond is None:
        return None
    if torch.is_tensor(cond):
        return tensors[prefix]
    return {k: _rebuild(v, tensors, f"{prefix}/{k}") for k, v in cond.items()}


class _Graph:
    """One captured call: static inputs (x, t, condition tensors), the graph and its static output."""

    def __init__(self, fn: ModelFn, x, t, cond, kw: dict, width: int, warmup: int):
        def pad(v):  # width rows: the call's rows, then row 0 repeated (finite values)
            return torch.cat([v, v[:1].expand(width - len(v), *v.shape[1:])]).clone()

        self.x, self.t = pad(x), pad(t)
        self.cond = {p: pad(v) for p, v in _flat(cond)}
        self.cond_tree = cond
        args = (self.x, self.t, _rebuild(cond, self.cond))
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(*args, **kw)
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = fn(*args, **kw)

    def __call__(self, x, t, cond) -> torch.Tensor:
        n = len(x)
        self.x[:n].copy_(x)
        self.t[:n].copy_(t)
        for p, v in _flat(cond):
            self.cond[p][:n].copy_(v)
        self.graph.replay()
        return self.out[:n].clone()


class CudaGraphs:
    """A model function whose CUDA calls replay captured graphs (module doc); any other call runs eager.

    Args:
        model_fn: ``model_fn(x, t, cond, **kw)``, x (N, ...), t (N,), cond None, (N, ...) or a dict of such.
        enabled: False passes every call through (the flag of the scripts' ``--cuda-graphs``).
        buckets: the graph widths (rows), ascending; a call wider than the last runs in a graph of its own
            width. None: powers of two.
        warmup: eager runs on a side stream before each capture.
    Raises:
        ValueError: buckets that are not positive increasing integers, warmup < 1.
    """

    def __init__(self, model_fn: ModelFn, *, enabled: bool = True, buckets: list[int] | None = None, warmup: int = 2):
        check_buckets(buckets)
        if not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be an integer >= 1 (eager runs before a capture), got {warmup!r}")
        self.model_fn, self.enabled, self.buckets, self.warmup = model_fn, bool(enabled), buckets, warmup
        self.stats = GraphStats()
        self._graphs: dict = {}

    def reset(self) -> None:
        """Drop every captured graph (after replacing the model's weights)."""
        self._graphs.clear()

    def width(self, n: int) -> int:
        """The graph width (rows) a call of ``n`` rows runs in."""
        if self.buckets is None:
            return 1 << (n - 1).bit_length()
        return next((b for b in self.buckets if b >= n), n)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond = None, **kw) -> torch.Tensor:
        lam = kw.get("lora_scale")
        if self._eager(x, t, cond, kw):
            self.stats.eager += 1
            return self.model_fn(x, t, cond, **kw)
        t = t.expand(len(x))  # one timestep per row (a 0-d t is every row's)
        if torch.is_tensor(lam):  # per row: one graph call per distinct value
            values = lam.unique().tolist()
            if len(values) > 1:
                out = torch.empty_like(x)
                for v in values:
                    rows = (lam == v).nonzero(as_tuple=True)[0]
                    out[rows] = self(x[rows], t[rows], index_cond(cond, rows), **{**kw, "lora_scale": float(v)})
                return out
            kw = {**kw, "lora_scale": float(values[0])}
        flat = _flat(cond)
        width = self.width(len(x))
        key = (width, x.shape[1:], x.dtype, x.device, t.dtype, tuple((p, v.shape[1:], v.dtype) for p, v in flat),
               tuple(sorted(kw.items())))
        graph = self._graphs.get(key)
        if graph is False:  # this call could not be captured: eager from then on
            self.stats.eager += 1
            return self.model_fn(x, t, cond, **kw)
        if graph is None:
            try:
                graph = self._graphs[key] = _Graph(self.model_fn, x, t, cond, kw, width, self.warmup)
            except RuntimeError as e:  # e.g. a host sync inside the model: not capturable
                warnings.warn(f"CudaGraphs: a call of width {width} could not be captured ({str(e).splitlines()[0]});"
                              " it runs eager", RuntimeWarning, stacklevel=2)
                self._graphs[key] = False
                self.stats.failed += 1
                self.stats.eager += 1
                return self.model_fn(x, t, cond, **kw)
            self.stats.captures += 1
            self.stats.buckets.append(width)
        self.stats.replays += 1
        return graph(x, t, cond)

    def _eager(self, x, t, cond, kw) -> bool:
        if not self.enabled or not torch.is_tensor(x) or x.device.type != "cuda" or torch.is_grad_enabled():
            return True
        if not torch.is_tensor(t) or t.ndim > 1 or t.ndim == 1 and len(t) != len(x) or t.device != x.device:
            return True
        flat = _flat(cond)
        if flat is None or any(v.ndim == 0 or len(v) != len(x) or v.device != x.device for _, v in flat):
            return True
        for k, v in kw.items():
            if k == "lora_scale" and torch.is_tensor(v) and v.shape == x.shape[:1]:
                continue
            if v is not None and not isinstance(v, (numbers.Number, str)):
                return True
        return False

