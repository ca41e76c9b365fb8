"""Evaluation generic over a task (``pcm_policy.task.Task``): the sweep (``sweep.run_sweep``: distance and
score vs k, k_match, one settings-keyed cache for JSON and tensors, ``cache.Cache``), its report
(``report.write_report``: CSV, table, figures, image grids) and the pieces they share here: distance vs k
(``distances_vs_k``), ``k_match``, ``write_csv`` and the figures (``plots``).

Rows of results are dicts with at least ``sampler``, ``k``, ``distance`` (in the task's unit: PushT pixels,
images latent RMSE) and, where measured, ``score``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_path
from ..sampling import K_STEPS

__all__ = ["budgets", "distances_vs_k", "k_match", "plots", "write_csv"]


def budgets(**lists: str) -> dict[str, list[int]]:
    """Comma lists of budgets k from the command line ("1,2,3"; "" for none), each sorted without repeats, by
    the option they came from (``budgets(ks="1,2", score_ks="")``). Raises ValueError with one line naming the
    options for a non-integer or a k < 1."""
    names = " and ".join(f"--{n.replace('_', '-')}" for n in lists)
    try:
        out = {n: sorted({int(k) for k in text.split(",") if k.strip()}) for n, text in lists.items()}
    except ValueError:
        got = ", ".join(map(repr, lists.values()))
        raise ValueError(f"{names} must be comma lists of integers, got {got}") from None
    if any(k < 1 for ks in out.values() for k in ks):
        raise ValueError(f"every k of {names} must be >= 1")
    return out


@torch.no_grad()
def distances_vs_k(name: str, make: Callable, model_fn, ks: list[int], cond, x_T, traj: torch.Tensor,
                   distance: Callable, batch: int = 100) -> list[float]:
    """Mean ``distance`` to the reference output ``traj[:, -1]`` of sampler ``name``'s output at every k.

    ``traj``: the sequential DDIM-T trajectory (N, T+1, ...) on the same ``x_T`` (N, ...). "ddim" reads
    position k of it (truncated sequential); a k-step solver (``K_STEPS``: "ddim-k", "dpmsolver++",
    "unipc") runs ``make(name, k)`` per k; iterative samplers run
    once with ``make(name, max(ks))`` keeping every iterate's output (``SampleStats.outputs``, else X^k[T];
    k beyond convergence: the last one).
    """
    T, total = traj.shape[1] - 1, torch.zeros(len(ks), dtype=torch.float64)
    from ..sampling import index_cond

    for i0 in range(0, len(x_T), batch):
        c = index_cond(cond, slice(i0, i0 + batch))
        x, tr = x_T[i0:i0 + batch], traj[i0:i0 + batch]
        if name == "ddim":
            outs = [tr[:, min(k, T)] for k in ks]
        elif name in K_STEPS:  # a k-step solver: one run per k
            outs = [make(name, k)(model_fn, x, c)[0] for k in ks]
        else:
            st = make(name, max(ks))(model_fn, x, c, return_iterates=True)[1]
            its = st.outputs or [X[-1] for X in st.iterates]  # outputs: a Jump's estimates where it is the output
            outs = [its[min(k, len(its) - 1)] for k in ks]
        total += torch.stack([distance(o, tr[:, -1]).double().sum() for o in outs]).cpu()
    return (total / len(x_T)).tolist()


def k_match(rows: list[dict], ref_score: float | None, score_tol: float, dist_tol: float) -> int | None:
    """The smallest k whose ``distance`` < ``dist_tol`` and (when ``ref_score`` is given) whose ``score``
    is within ``score_tol`` of it; None if no row qualifies."""
    def ok(r):
        if r["distance"] >= dist_tol:
            return False
        return ref_score is None or (r.get("score") is not None and abs(r["score"] - ref_score) <= score_tol + 1e-12)
    return next((r["k"] for r in sorted(rows, key=lambda r: r["k"]) if ok(r)), None)


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` (dicts with the same keys) as a CSV, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plots(out: Path, res: dict, ref_score: float | None, ref_label: str, unit: str, dist_tol: float | None,
          score_tol: float, score_label: str = "mean score") -> None:
    """score_vs_k.png, distance_vs_k.png and pareto.png in ``out`` from ``res`` = {sampler: rows} (``dist_tol``
    None: no tolerance line on the distance axis)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; plots skipped")
        return
    px = f"distance to {ref_label} ({unit})"
    scored = {s: [(max(r["distance"], 1e-4), r["score"], r["k"]) for r in rows if r.get("score") is not None]
              for s, rows in res.items()}
    for name, title, xlabel, ylabel in (("score_vs_k", "Score vs k", "k", score_label),
                                        ("distance_vs_k", "Distance vs k", "k", px),
                                        ("pareto", "Score vs distance (labels: k)", px, score_label)):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for s, rows in res.items():
            if name == "score_vs_k" and scored[s]:
                ax.plot([k for _, _, k in scored[s]], [v for _, v, _ in scored[s]], "o-", label=s)
            elif name == "distance_vs_k":
                ax.plot([r["k"] for r in rows], [max(r["distance"], 1e-4) for r in rows], "o-", label=s)
            elif name == "pareto" and scored[s]:
                ax.scatter([d for d, _, _ in scored[s]], [v for _, v, _ in scored[s]], label=s)
                for d, v, k in scored[s]:
                    ax.annotate(str(k), (d, v), fontsize=7, xytext=(2, 2), textcoords="offset points")
        if name == "pareto":  # the front: points no other point beats in both distance and score
            front, best = [], -np.inf
            for d, v, _ in sorted((p for ps in scored.values() for p in ps), key=lambda q: (q[0], -q[1])):
                if v > best:
                    front, best = front + [(d, v)], v
            if front:
                ax.step(*zip(*front, strict=True), "k--", where="post", lw=1, label="Pareto front")
        if name != "score_vs_k" and dist_tol is not None:
            (ax.axhline if name == "distance_vs_k" else ax.axvline)(dist_tol, color="r", ls="--", lw=1,
                                                                    label=f"{dist_tol:g} {unit}")
        if name != "distance_vs_k" and ref_score is not None:
            ax.axhline(ref_score, color="k", lw=1, label=f"{ref_label} score")
            ax.axhspan(ref_score - score_tol, ref_score + score_tol, color="k", alpha=0.08)
        ax.set(xscale="log", yscale="log" if name == "distance_vs_k" else "linear", xlabel=xlabel, ylabel=ylabel,
               title=title)
        if ax.get_legend_handles_labels()[0]:  # a distances-only sweep has nothing on its score plots
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)


