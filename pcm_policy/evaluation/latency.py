"""Latency benchmarks generic over a model function and a set of samplers: interleaved timing, the
batch-cost curve, the FLOP-count compute floor, ThreadPolicy overhead, and the derived ratios.

A task supplies its samplers as ``{name: fn(x_T, cond) -> (x_0, stats)}`` (``stats``: ``SampleStats``),
its model functions ``fn(x, t, cond, **kw)``, one initial noise and condition per timed call, and the
units its output differences are reported in. Timings are wall-clock ms; every timed call waits for
the device (``synchronize``), so GPU timings include the queued work. Calls are interleaved (round
robin over the things compared, repeat by repeat) so load that comes and goes hits them alike.

A full-window Picard iteration is one call with ``T * B`` rows, so Picard pays off when
``iterations * cost(T*B rows) < T * cost(B rows)`` (ParaDiGMS): the curve and ``derived`` say where.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from ..device import synchronize
from ..sampling import ThreadPolicy, num_threads, switch_cost_us

__all__ = ["batch_cost_curve", "benchmark", "compute_floor", "derived_ratios", "format_report", "load_average",
           "machine_info", "sampler_table", "summary", "thread_policy_overhead_us", "time_interleaved", "time_samplers"]


def summary(ms: Sequence[float]) -> dict:
    """``{"median_ms", "min_ms"}`` of timings in ms (rounded to 1 us)."""
    return {"median_ms": round(statistics.median(ms), 3), "min_ms": round(min(ms), 3)}


def time_interleaved(calls: dict[str, Callable[[], object]], repeats: int = 3, warmup: int = 1,
                     sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Wall times in ms of each call; every round runs all calls once, in order.

    Args:
        calls: name -> a function of no arguments.
        repeats: timed rounds (>= 1); warmup: untimed rounds first.
        sync: called after each call, inside the timing (e.g. wait for a GPU); None: nothing.
    Returns:
        name -> ``repeats`` times in ms.
    Raises:
        ValueError: ``repeats`` < 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(warmup + repeats):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            if sync is not None:
                sync()
            if r >= warmup:
                times[name].append(1e3 * (time.perf_counter() - t0))
    return times


@torch.no_grad()
def batch_cost_curve(rows: dict, widths: Sequence[int], conds: torch.Tensor, sample_shape: Sequence[int],
                     n_train: int, repeats: int, seed: int) -> dict:
    """ms per model call vs the number of rows in it, for several model functions / thread counts.

    Args:
        rows: name -> (model_fn, thread count in force during the call, extra keywords of the call).
        widths: rows per call.
        conds: ``(N, ...)`` conditions on the device, cycled over the rows of a call.
        sample_shape: one row's shape (PushT: ``(horizon, action_dim)``).
        n_train: timesteps are drawn uniformly from ``0..n_train-1``.
        repeats: timed calls per (name, width), after 2 warm-up calls.
        seed: of the random inputs (the same for every name).
    Returns:
        ``{name: {width: summary}}``; for each width, the names are timed round robin.
    """
    g = torch.Generator().manual_seed(seed)
    out = {name: {} for name in rows}
    for w in widths:
        x = torch.randn(w, *sample_shape, generator=g).to(conds.device)
        t = torch.randint(0, n_train, (w,), generator=g).to(conds.device)
        c = conds[torch.arange(w) % len(conds)]
        times = {name: [] for name in rows}
        for rep in range(repeats + 2):  # 2 warm-up calls
            for name, (fn, th, kw) in rows.items():
                with num_threads(th):
                    t0 = time.perf_counter()
                    fn(x, t, c, **kw)
                    synchronize(conds.device)
                    ms = 1e3 * (time.perf_counter() - t0)
                if rep >= 2:
                    times[name].append(ms)
        for name in rows:
            out[name][w] = summary(times[name])
    return out


def thread_policy_overhead_us(threads: int, window_threads: int, switch_rows: int, n: int = 2000) -> dict:
    """What ``ThreadPolicy`` itself adds to a call, in microseconds.

    Args:
        threads, window_threads, switch_rows: the ThreadPolicy's settings.
        n: calls timed per variant (the median is kept).
    Returns:
        ``{"narrow_call": us, "wide_call": us}``: a wrapped no-op call minus the bare one, with 1 row (no
        switch) and ``switch_rows`` rows (a ``set_num_threads`` pair).
    """
    def noop(x, t, c):
        return x

    wrapped = ThreadPolicy(noop, threads, window_threads, switch_rows)
    out = {}
    for name, rows in (("narrow_call", 1), ("wide_call", switch_rows)):
        x, t = torch.zeros(rows, 1), torch.zeros(rows, dtype=torch.long)
        per = {}
        for label, fn in (("bare", noop), ("wrapped", wrapped)):
            ts = []
            for _ in range(n):
                t0 = time.perf_counter()
                fn(x, t, None)
                ts.append(time.perf_counter() - t0)
            per[label] = statistics.median(ts) * 1e6
        out[name] = round(per["wrapped"] - per["bare"], 3)
    return out


@torch.no_grad()
def compute_floor(model: Callable, rows: int, conds: torch.Tensor, sample_shape: Sequence[int],
                  threads: int) -> dict:
    """The least time a ``rows``-row call can take here: its FLOPs over this machine's fp32 matmul rate.

    Args:
        model: ``model(x, t, cond)``, the network (eager: torch's FLOP counter sees convolutions and
            matmuls, not TorchScript graphs).
        rows: rows of the call; conds: ``(N, ...)`` conditions, cycled; sample_shape: one row's shape.
        threads: threads of the matmul timing (a 1024x1024 product, the best of 10 after 2 warm-ups).
    Returns:
        ``{"rows", "flops", "matmul_gflops", "threads", "floor_ms"}``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(rows, *sample_shape, device=conds.device)
    t = torch.zeros(rows, dtype=torch.long, device=conds.device)
    c = conds[torch.arange(rows) % len(conds)]
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, t, c)
    n = 1024
    a, b = torch.randn(n, n, device=conds.device), torch.randn(n, n, device=conds.device)
    times = []
    with num_threads(threads):
        for _ in range(12):
            t0 = time.perf_counter()
            a @ b
            synchronize(conds.device)
            times.append(time.perf_counter() - t0)
    gflops = 2 * n**3 / min(times[2:]) / 1e9
    flops = counter.get_total_flops()
    return {"rows": rows, "flops": flops, "matmul_gflops": round(gflops, 1), "threads": threads,
            "floor_ms": round(flops / gflops / 1e6, 3)}


def time_samplers(runs: dict, noises: torch.Tensor, conds: torch.Tensor, repeats: int,
                  device: torch.device) -> tuple[dict, dict]:
    """Time every sampler on every (noise, condition): one warm-up call each on the first, then
    ``repeats`` rounds, each round per condition round robin over the samplers.

    Args:
        runs: name -> ``fn(x_T, cond) -> (x_0, stats)``.
        noises: ``(C, B, ...)`` initial noise; conds: ``(C, B, ...)`` conditions (C timed calls per round).
        repeats: rounds (>= 1); device: waited for after each call.
    Returns:
        (``{name: [ms, ...]}`` with C * repeats entries, ``{name: [(x_0, stats) per condition]}`` of the
        last round).
    """
    for fn in runs.values():
        fn(noises[0], conds[0])
    times = {name: [] for name in runs}
    outputs = {name: [None] * len(conds) for name in runs}
    for _ in range(repeats):
        for ci in range(len(conds)):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                x0, st = fn(noises[ci], conds[ci])
                synchronize(device)
                times[name].append(1e3 * (time.perf_counter() - t0))
                outputs[name][ci] = (x0, st)
    return times, outputs


def sampler_table(times: dict, outputs: dict, reference: str, units: dict[str, torch.Tensor | float]) -> dict:
    """Per-sampler timing, iteration counts and accuracy against the ``reference`` sampler's outputs.

    Args:
        times, outputs: from ``time_samplers``.
        reference: the name whose outputs are exact (e.g. sequential DDIM-T) and whose median is 1x.
        units: unit name -> divisor of |x_0 - reference x_0| (broadcast over the last dimension; 1.0 for
            the model's own units).
    Returns:
        ``{name: {median_ms, min_ms, latency_vs_sequential, iterations, nfe, converged, clamped,
        max_abs_delta_<unit>...}}``.
    """
    seq_ms = statistics.median(times[reference])
    out = {}
    for name, outs in outputs.items():
        delta = torch.stack([(x0 - ref).abs() for (x0, _), (ref, _) in zip(outs, outputs[reference], strict=True)])
        its = [st.iterations for _, st in outs]
        nfe = [st.nfe for _, st in outs]
        out[name] = {
            **summary(times[name]),
            "latency_vs_sequential": round(statistics.median(times[name]) / seq_ms, 3),
            "iterations": {"median": statistics.median(its), "max": max(its), "per_condition": its},
            "nfe": {"median": statistics.median(nfe), "max": max(nfe), "per_condition": nfe},
            "converged": all(st.converged for _, st in outs),
            "clamped": sum(st.clamped for _, st in outs),
            **{f"max_abs_delta_{u}": float((delta / s).max()) for u, s in units.items()},
        }
    return out


def load_average() -> tuple[float, float, float] | None:
    """``os.getloadavg()``, or None where the platform has none."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def machine_info(device: torch.device, load_start, load_end, busy_load: float = 0.3) -> dict:
    """Platform, torch, device and thread environment of a benchmark, and a warning when the 1-minute
    load average (``load_average()`` before and after, None: unknown) exceeded ``busy_load``."""
    busy = load_end is not None and max(load_start[0], load_end[0]) > busy_load
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "load_avg_start": load_start,
        "load_avg_end": load_end,
        "warning": (f"1-min load average {max(load_start[0], load_end[0]):.2f}: other processes were "
                    "running, timings are not representative") if busy else None,
    }


def derived_ratios(curve: dict, full: int, threads: int, window_threads: int, seq_ms: float, switch_us: float,
                   overhead_us: dict, floor: dict) -> dict:
    """The ratios a reader compares, from a ``batch_cost_curve`` that holds the rows ``threads=N`` (fixed
    thread counts, including ``threads`` and ``window_threads``), ``thread_policy`` and, optionally,
    ``eager threads=N``, at widths 1 and ``full`` (one full-window Picard call).

    Args:
        curve: the batch-cost curve; full: rows of a full-window call (T * B).
        threads, window_threads: the ThreadPolicy's narrow and wide thread counts.
        seq_ms: median ms of the sequential sampler; switch_us: ``switch_cost_us``;
        overhead_us: ``thread_policy_overhead_us``; floor: ``compute_floor`` of a full-window call.
    Returns:
        full-window / batch-1 cost (through the ThreadPolicy and per fixed thread count), the
        ThreadPolicy's cost against fixed threads, the Picard break-even iteration count
        (``seq_ms`` / full-window call), the compute floor over the batch-1 call and, with eager rows,
        the frozen graphs' speed-up over eager calls per width.
    """
    tp = curve["thread_policy"]
    wide_fixed, narrow_fixed = curve[f"threads={window_threads}"][full], curve[f"threads={threads}"][1]
    fixed = [name.split("=")[1] for name in curve if name.startswith("threads=")]
    eager = {f"threads={th}": {w: round(curve[f"eager threads={th}"][w]["median_ms"] / v["median_ms"], 3)
                               for w, v in curve[f"threads={th}"].items()}
             for th in fixed if f"eager threads={th}" in curve}
    return {
        "full_window_rows": full,
        "full_window_call_over_batch1_call": round(tp[full]["median_ms"] / tp[1]["median_ms"], 3),
        "full_window_over_batch1_fixed_threads": {
            name: round(row[full]["median_ms"] / row[1]["median_ms"], 3)
            for name, row in curve.items() if name.startswith("threads=")},
        "batch1_thread_policy_over_fixed": round(tp[1]["median_ms"] / narrow_fixed["median_ms"], 3),
        "wide_thread_policy_over_fixed": round(tp[full]["median_ms"] / wide_fixed["median_ms"], 3),
        "switch_pair_us": round(switch_us, 3),
        "thread_policy_overhead_us": overhead_us,
        "picard_break_even_iterations": round(seq_ms / tp[full]["median_ms"], 1),
        "sequential_median_ms": round(seq_ms, 3),
        "full_window_compute_floor": {**floor, "floor_over_batch1_call": round(
            floor["floor_ms"] / tp[1]["median_ms"], 3)},
        **({"frozen_speedup_over_eager": eager} if eager else {}),
    }


def format_report(result: dict) -> str:
    """A benchmark result as a text table: one line per sampler, the curve, the derived ratios.

    Args:
        result: ``{"machine": machine_info, "settings": {..., "curve_widths", "threads", "window_threads"},
            "batch_cost_curve", "derived": derived_ratios, "samplers": sampler_table}``; one column per
            ``max_abs_delta_<unit>`` key of the samplers.
    Returns:
        the table, lines joined by newlines (no trailing newline).
    """
    first = next(iter(result["samplers"].values()))
    units = [(k, f"max|d| {k[len('max_abs_delta_'):]}") for k in first if k.startswith("max_abs_delta_")]
    units = [(k, label, max(10, len(label))) for k, label in units]
    head = (f"{'sampler':34s} {'median ms':>10s} {'min ms':>9s} {'x seq':>6s} {'iters':>7s} {'NFE':>7s}"
            + "".join(f" {label:>{w}s}" for _, label, w in units))
    lines = [head, "-" * len(head)]
    for name, s in result["samplers"].items():
        it = f"{s['iterations']['median']:g}" + ("" if s["iterations"]["max"] == s["iterations"]["median"]
                                                 else f"-{s['iterations']['max']:g}")
        lines.append(f"{name:34s} {s['median_ms']:10.1f} {s['min_ms']:9.1f} {s['latency_vs_sequential']:6.2f} "
                     f"{it:>7s} {s['nfe']['median']:7g}" + "".join(f" {s[k]:{w}.2e}" for k, _, w in units)
                     + ("" if s["converged"] else "  (not converged)"))
    d, st = result["derived"], result["settings"]
    lines += ["", "batch-cost curve, median ms per call (rows ->):",
              f"{'':34s} " + " ".join(f"{w:>7d}" for w in st["curve_widths"])]
    for name, row in result["batch_cost_curve"].items():
        lines.append(f"{name:34s} " + " ".join(f"{v['median_ms']:7.2f}" for v in row.values()))
    lines += ["", f"full-window call / batch-1 call (ThreadPolicy): {d['full_window_call_over_batch1_call']:.2f}x "
                  f"(target <= 3x); per fixed thread count: {d['full_window_over_batch1_fixed_threads']}",
              f"batch-1 call, ThreadPolicy vs fixed {st['threads']} thread(s): "
              f"{d['batch1_thread_policy_over_fixed']:.3f}x; Picard break-even at "
              f"{d['picard_break_even_iterations']} full-window iterations",
              f"set_num_threads switch pair: {d['switch_pair_us']:.2f} us; ThreadPolicy overhead per call (us): "
              f"{d['thread_policy_overhead_us']}; wide call through ThreadPolicy vs fixed "
              f"{st['window_threads']} thread(s): {d['wide_thread_policy_over_fixed']:.3f}x"]
    f = d["full_window_compute_floor"]
    lines += [f"compute floor of a full-window call: {f['flops'] / 1e9:.2f} GFLOP at {f['matmul_gflops']} GFLOP/s "
              f"(fp32 matmul, {f['threads']} thread(s)) = {f['floor_ms']:.2f} ms = {f['floor_over_batch1_call']:.2f}x "
              "the batch-1 call"]
    if "frozen_speedup_over_eager" in d:
        lines += [f"frozen graphs vs eager, speed-up per width: {d['frozen_speedup_over_eager']}"]
    if result["machine"]["warning"]:
        lines += ["", "WARNING: " + result["machine"]["warning"]]
    return "\n".join(lines)


def benchmark(runs: dict, noises: torch.Tensor, conds: torch.Tensor, *, reference: str, curve_rows: dict,
              widths: Sequence[int], full_rows: int, sample_shape: Sequence[int], n_train: int,
              floor_model: Callable, threads: int, window_threads: int, switch_rows: int, repeats: int,
              curve_repeats: int, seed: int, units: dict[str, torch.Tensor | float], keep_times: bool = False) -> dict:
    """The whole latency benchmark of a set of samplers of one model, in this order: the batch-cost curve,
    the thread-switch and ThreadPolicy costs, the compute floor of a full-window call, the samplers.

    Args:
        runs: name -> ``fn(x_T, cond) -> (x_0, stats)``, the ``reference`` (sequential) among them.
        noises, conds: ``(C, B, ...)`` initial noise and conditions, one timed call each per round.
        curve_rows: ``batch_cost_curve``'s rows; it needs ``threads=N`` for ``threads`` and
            ``window_threads`` and ``thread_policy`` (optionally ``eager threads=N``).
        widths: the curve's widths, including 1 and ``full_rows`` (T * B, one full-window call).
        sample_shape, n_train: one row's shape and the training timesteps (random curve inputs).
        floor_model: the eager network ``model(x, t, cond)`` whose FLOPs are counted.
        threads, window_threads, switch_rows: the ThreadPolicy's settings.
        repeats, curve_repeats, seed: timed rounds of the samplers and of the curve; the curve's seed.
        units: ``sampler_table``'s units.
        keep_times: also return every timed run, ``"times_ms": {name: [ms, ...]}`` (``time_samplers``' order).
    Returns:
        ``{"batch_cost_curve", "derived", "samplers"}`` (see ``batch_cost_curve``, ``derived_ratios``,
        ``sampler_table``), and ``"times_ms"`` with ``keep_times``.
    """
    flat = conds.flatten(0, 1)
    curve = batch_cost_curve(curve_rows, widths, flat, sample_shape, n_train, curve_repeats, seed)
    with num_threads(threads):
        switch_us = switch_cost_us(threads, window_threads)
        overhead_us = thread_policy_overhead_us(threads, window_threads, switch_rows)
    floor = compute_floor(floor_model, full_rows, flat, sample_shape, window_threads)
    times, outputs = time_samplers(runs, noises, conds, repeats, flat.device)
    samplers = sampler_table(times, outputs, reference, units)
    seq_ms = statistics.median(times[reference])
    return {"batch_cost_curve": curve,
            "derived": derived_ratios(curve, full_rows, threads, window_threads, seq_ms, switch_us, overhead_us,
                                      floor),
            "samplers": samplers, **({"times_ms": times} if keep_times else {})}
