"""The sampler benchmark at several batch sizes in one run (``scripts/bench_samplers.py --batch 1,8,32``).

Batch B means B episodes in lockstep: B conditions sampled together, one action chunk each, so a
sequential DDIM step is one call with B rows and a full-window Picard iteration one call with up to T * B
rows (samples leave the window as they converge). ``bench_samplers`` runs once per batch size (its own
conditions, ``conds * B`` demonstration windows drawn with ``seed``; its batch-cost curve holds the widths
1, B and T * B); this module puts the runs side by side.

Per sampler and batch: ``best_ms``, the best of the ``repeats`` timed runs of each condition, averaged over
the conditions (best-of-N: the least disturbed run of a shared machine), its ratio to the reference's
``best_ms`` at the same batch, the median ms and its ratio, batched calls per chunk (median over
conditions), NFE (model evaluations, rows) per sample and per chunk (x B), and the largest distance to the
reference's output in px. Per batch, the curve gives why parallel-in-time gains shrink with B: the
sequential sampler pays T calls of B rows, a Picard iteration one call of T * B rows, so Picard breaks even at
``T * cost(B) / cost(T * B)`` iterations (ParaDiGMS, Shih et al. 2023), which falls towards 1 as the
calls stop being overhead-bound.
"""

from __future__ import annotations

import dataclasses
import statistics

__all__ = ["batch_rows", "best_of", "format_batches"]


def best_of(times: list[float], conds: int) -> float:
    """Mean over conditions of each condition's fastest run, in ms.

    Args:
        times: ``time_samplers``' list for one sampler: ``repeats`` rounds of ``conds`` runs, round-major.
        conds: the conditions per round.
    Raises:
        ValueError: ``times`` is empty or not a whole number of rounds.
    """
    if not times or len(times) % conds:
        raise ValueError(f"{len(times)} timings are not whole rounds of {conds} conditions")
    return statistics.fmean(min(times[c::conds]) for c in range(conds))


def batch_rows(result: dict, times: dict, reference: str) -> dict:
    """The side-by-side entries of one ``bench_samplers`` run.

    Args:
        result: ``bench_samplers``' result (``settings.batch``, ``settings.conds``, ``settings.num_steps``,
            ``batch_cost_curve.thread_policy`` with widths 1, B and T * B, ``samplers``).
        times: the raw ``{name: [ms, ...]}`` of the run; reference: the sequential sampler's name.
    Returns:
        ``{"batch", "samplers": {name: {best_ms, best_vs_reference, median_ms, median_vs_reference, calls,
        nfe_per_sample, nfe_per_chunk, max_px}}, "curve_ms": {"1", "B", "T*B"}, "picard_break_even_iterations"}``.
    """
    st = result["settings"]
    B, C, T = st["batch"], st["conds"], st["num_steps"]
    ref_best = best_of(times[reference], C)
    ref_med = result["samplers"][reference]["median_ms"]
    rows = {}
    for name, s in result["samplers"].items():
        best = best_of(times[name], C)
        rows[name] = {"best_ms": round(best, 3), "best_vs_reference": round(best / ref_best, 3),
                      "median_ms": s["median_ms"], "median_vs_reference": round(s["median_ms"] / ref_med, 3),
                      "calls": s["iterations"]["median"], "nfe_per_sample": s["nfe"]["median"],
                      "nfe_per_chunk": round(s["nfe"]["median"] * B, 1), "max_px": s["max_abs_delta_px"]}
    tp = result["batch_cost_curve"]["thread_policy"]
    curve = {"1": tp[1]["median_ms"], "B": tp[B]["median_ms"], "T*B": tp[T * B]["median_ms"]}
    return {"batch": B, "samplers": rows, "curve_ms": curve,
            "picard_break_even_iterations": round(T * curve["B"] / curve["T*B"], 2)}


def format_batches(entries: list[dict], labels: dict[str, str] | None = None) -> str:
    """``batch_rows`` entries as one text table (a line per sampler and batch) and the batch-cost lines.

    Args:
        entries: ``batch_rows`` results, one per batch; labels: sampler name -> shown name (default: the name).
    Returns:
        the table, lines joined by newlines (no trailing newline).
    """
    labels = labels or {}
    head = (f"{'batch':>5s} {'sampler':34s} {'best ms':>9s} {'x DDIM-50':>9s} {'median ms':>10s} {'x med':>6s} "
            f"{'calls':>6s} {'NFE/sample':>10s} {'NFE/chunk':>10s} {'max px':>8s}")
    lines = [head, "-" * len(head)]
    for e in entries:
        for name, r in e["samplers"].items():
            lines.append(f"{e['batch']:5d} {labels.get(name, name):34s} {r['best_ms']:9.1f} "
                         f"{r['best_vs_reference']:9.3f} {r['median_ms']:10.1f} {r['median_vs_reference']:6.3f} "
                         f"{r['calls']:6g} {r['nfe_per_sample']:10g} {r['nfe_per_chunk']:10g} {r['max_px']:8.2f}")
        lines.append("")
    lines.append("batch-cost curve (ThreadPolicy, median ms per call): 1 row / B rows / T*B rows (a full window); "
                 "Picard break-even iterations = T * cost(B) / cost(T*B)")
    for e in entries:
        c = e["curve_ms"]
        lines.append(f"  B = {e['batch']:3d}: {c['1']:.2f} / {c['B']:.2f} / {c['T*B']:.2f} ms; T*B-row call = "
                     f"{c['T*B'] / c['B']:.1f}x a B-row call; break-even {e['picard_break_even_iterations']:.1f}")
    return "\n".join(lines)


def per_batch(cfg, batches: list[int]):
    """One ``cfg`` per batch size: ``batch`` set, B added to the curve's widths (1 and T * B are always in)."""
    return [dataclasses.replace(cfg, batch=b, batches=(), curve=tuple(sorted({*cfg.curve, b}))) for b in batches]
