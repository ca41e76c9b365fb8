"""The report of an evaluation sweep (``evaluation.sweep``), for any task: sweep.csv, table.md, the
figures (score_vs_k.png, distance_vs_k.png, pareto.png: ``evaluation.plots``) and, where the task has images
(``task.images``), grid.png: rows sampler, columns k, the reference DDIM-T last (Figures 3-4 of the paper in
shape)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..io import write_text
from . import plots, write_csv

__all__ = ["GRID_ROWS", "image_grid", "table", "write_report"]

GRID_ROWS = ("ddim", "sequential", "picard", "pcm")  # samplers shown in the image grid, where swept
GRID_SAMPLES = 4


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.{digits}g}"
    return str(v)


def table(result: dict) -> str:
    """A markdown table: one row per (sampler, k) with every column of the rows, then k_match and speed-ups."""
    rows = [r for rs in result["results"].values() for r in rs]
    cols = list(rows[0])
    ref = result.get("reference", {})
    lines = [f"# Sweep of {result['settings'].get('task', 'a task')}: distance ({result['distance_unit']}) and score "
             "vs k", "", f"Reference: DDIM-{ref.get('k')}" + (f", score {_fmt(ref.get('score', ref.get('mean_score')))}"
                                                                  if ref.get("score", ref.get("mean_score")) is not None
                                                                  else ""), "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    lines += ["", "| sampler | k_match |", "|---|---|"]
    lines += [f"| {s} | {k if k else 'not reached'} |" for s, k in result["k_match"].items()]
    lines += ["", "Speed-ups: " + ", ".join(f"{k} {_fmt(v)}" for k, v in result["speedups"].items())]
    return "\n".join(lines) + "\n"


def save_image_grid(path: Path, rows: list[str], cols: list, cell, T: int, n: int, title: str) -> None:
    """A PNG of image cells: row = sampler, column = k (None: the DDIM-T reference); ``cell(sampler, k)`` gives the
    uint8 images (n, H, W, 3) stacked down the cell, or None to leave it empty. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.4 * len(cols), 1.4 * n * len(rows) / 2 + 0.8),
                             squeeze=False)
    for i, s in enumerate(rows):
        for j, k in enumerate(cols):
            ax, imgs = axes[i][j], cell(s, k)
            if imgs is not None:
                ax.imshow(np.concatenate(list(imgs), axis=0))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"DDIM-{T}" if k is None else f"k={k}", fontsize=8)
            if j == 0:
                ax.set_ylabel(s, fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@torch.no_grad()
def image_grid(task, samplers: dict, ks: list[int], out: Path, n: int = GRID_SAMPLES, note: str | None = None
               ) -> Path | None:
    """grid.png: the first ``n`` eval conditions sampled by each of ``GRID_ROWS`` (where in ``samplers``, a
    {name: SamplerSpec}) at every k, and by DDIM-T; decoded by ``task.images``, or the score's own images
    (``task.score_images``) where the task keeps them; ``note`` goes under the title. None without images or
    matplotlib."""
    from ..sampling import SamplerSpec, make_sampler
    from .sweep import limited

    rows = [s for s in GRID_ROWS if s in samplers]
    import textwrap

    title = "\n".join(["Rows: sampler, columns: k", *textwrap.wrap(note or "", 18 * (len(ks) + 1))])  # fits the width
    if task.images is None or not rows:
        return None
    try:
        import matplotlib  # noqa: F401 (save_image_grid draws with it)
    except ImportError:
        print("note: matplotlib is not installed; grid skipped")
        return None
    if task.score_images is not None:
        n = len(task.score_images(None, None)[:n])

        def cell(s, k):
            return task.score_images(None if k is None else limited(task, samplers[s], k), k)[:n]

        save_image_grid(out / "grid.png", rows, [*ks, None], cell, task.num_steps, n, title)
        return out / "grid.png"
    cond, x_T = task.split("eval", n)
    ref = make_sampler(SamplerSpec.named("ddim", num_steps=task.num_steps), task.scheduler)(task.model_fn, x_T, cond)[0]

    def cell(s, k):
        if k is None:
            x = ref
        else:
            x = make_sampler(limited(task, samplers[s], k), task.scheduler)(task.model_fn, x_T, cond)[0]
        return task.images(x)

    save_image_grid(out / "grid.png", rows, [*ks, None], cell, task.num_steps, len(x_T), title)
    return out / "grid.png"


def write_report(out: str | Path, result: dict, *, score_label: str = "score", task=None, samplers=None,
                 print_table: bool = True, extra: str = "") -> None:
    """sweep.csv, table.md and the figures of ``result`` (``run_sweep``'s) in ``out``; with ``task`` (and its
    ``samplers``), grid.png where the task has images (``settings["stand_in"]``, where given, under its title).
    ``extra``: a task's own markdown, appended to table.md."""
    out = Path(out)
    rows = [r for rs in result["results"].values() for r in rs]
    write_csv(out / "sweep.csv", rows)
    text = table(result) + (f"\n{extra}" if extra else "")
    write_text(out / "table.md", text)
    st, ref = result["settings"], result.get("reference", {})
    ref_score = ref.get("score", ref.get("mean_score"))
    score_tol = st["score_tol"] * (abs(ref_score) if st.get("score_tol_rel") and ref_score is not None else 1.0)
    dist_tol = st["dist_tol"] if st.get("match_field", "distance") == "distance" else None  # else not this axis
    plots(out, result["results"], ref_score, f"DDIM-{ref.get('k')}", result["distance_unit"], dist_tol, score_tol,
          score_label)
    if task is not None and samplers:
        image_grid(task, samplers, st["ks"], out, note=st.get("stand_in"))
    if print_table:
        print(text)
