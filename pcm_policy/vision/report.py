"""What an image evaluation writes: metrics.json, metrics.csv, table.md (Tables 3-4 of the paper in shape),
grid.png (Figures 3-4: rows Sequential / Picard / PCM, columns k) and pareto.png (Figure 2: distance to the
converged output vs k), plus fid_vs_k.png. Written by ``evaluate.evaluate``; cell images from OUT/cells."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..evaluation import k_match, write_csv
from ..evaluation.report import save_image_grid
from ..io import write_json, write_text

__all__ = ["write_report"]

COLUMNS = ("sampler", "k", "latent_rmse", "psnr", "uint8_diff", "fid", "sfid", "kid", "precision", "recall",
           "clip_score", "cmmd", "class_accuracy")
GRID_ROWS = ("sequential", "picard", "pcm")
FID_TOL, UINT8_TOL = 0.01, 1.0  # k_match: FID within 1% of the converged output's, < 1 uint8 level


def _fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.{digits}g}" if abs(v) < 1e-2 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def write_report(out: Path, *, results: dict, converged: dict, skipped: dict, notes: list, T: int, num_samples: int,
                 n_reference: int, reference_resized: bool, stand_in: str | None, settings: dict,
                 inception: dict | None, elapsed: float) -> dict:
    """Write the files of the module doc to ``out`` and return the metrics.json dict."""
    ref_fid = converged.get("fid")
    if inception is None and (out / "metrics.json").is_file():  # every cell cached: keep the last measurement
        old = json.loads((out / "metrics.json").read_text()).get("inception_throughput")
        inception = {**old, "measured_in_an_earlier_run": True} if old else None
    km = {}
    for s, rows in results.items():
        scored = [{**r, "distance": r["uint8_diff"], "score": r["fid"]} for r in rows]
        km[s] = k_match(scored, ref_fid, FID_TOL * ref_fid if ref_fid is not None else 0.0, UINT8_TOL)
    speedup = {s: T / k if k else None for s, k in km.items()}
    if km.get("picard") and km.get("pcm"):
        speedup["picard_over_pcm"] = km["picard"] / km["pcm"]
    title = f"Image quality vs k: N = {num_samples} samples, {n_reference} reference images, T = {T}"
    disclaimer = (f"{stand_in}" if stand_in else None)
    result = {
        "n": num_samples, "title": title, "stand_in": disclaimer,
        "results": [r for rows in results.values() for r in rows], "converged": converged,
        "k_match": km, "speedup": speedup,
        "k_match_rule": f"smallest k with |FID - FID(DDIM-{T})| <= {FID_TOL:.0%} of it and mean |image - DDIM-{T} "
                        f"image| < {UINT8_TOL:g} uint8 level" + ("" if ref_fid is not None else
                                                                 " (FID not computed: the image distance alone)"),
        "skipped": skipped, "notes": notes,
        "reference": {"n": n_reference, "resized_to_generated_size": reference_resized},
        "inception_throughput": inception, "settings": settings, "elapsed_s": elapsed,
    }
    write_json(out / "metrics.json", result)
    write_csv(out / "metrics.csv", [{c: r.get(c) for c in COLUMNS} for r in [converged, *result["results"]]])
    write_text(out / "table.md", _table(result, results, converged, T))
    _figures(out, results, converged, T, disclaimer)
    print(_table(result, results, converged, T))
    return result


def _table(result: dict, results: dict, converged: dict, T: int) -> str:
    ks = sorted({r["k"] for rows in results.values() for r in rows})
    lines = [f"# {result['title']}", ""]
    if result["stand_in"]:
        lines += [f"**{result['stand_in']}**", ""]
    lines += [f"Converged output = sequential DDIM-{T} on the same seeds: FID {_fmt(converged.get('fid'), 4)}.", "",
              f"## FID vs k (Table 3 in shape){' - stand-in model' if result['stand_in'] else ''}", "",
              "| sampler | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for s, rows in results.items():
        by_k = {r["k"]: r for r in rows}
        lines.append(f"| {s} | " + " | ".join(_fmt(by_k[k].get("fid"), 4) if k in by_k else "-" for k in ks) + " |")
    kk = ks[-1]
    cols = ("fid", "sfid", "inception_score", "kid", "precision", "recall", "cmmd", "clip_score", "class_accuracy",
            "latent_rmse", "psnr", "uint8_diff")
    lines += ["", f"## All metrics at k = {kk} (Table 4 in shape){' - stand-in model' if result['stand_in'] else ''}",
              "", "| sampler | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for s, rows in [("sequential (converged, k = T)", [converged]), *results.items()]:
        r = next((r for r in rows if r["k"] == kk), rows[0] if s.startswith("sequential (") else None)
        if r:
            lines.append(f"| {s} | " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    lines += ["", "class_accuracy: prompt-class accuracy of a digit classifier, a stand-in for the CLIP score.", "",
              "## k_match and speed-up", "", f"Rule: {result['k_match_rule']}.", "",
              "| sampler | k_match | speed-up T / k_match |", "|---|---|---|"]
    for s, k in result["k_match"].items():
        sp = result["speedup"].get(s)
        lines.append(f"| {s} | {k if k else 'not reached'} | {_fmt(sp) if sp else '-'} |")
    if "picard_over_pcm" in result["speedup"]:
        lines.append(f"\nPCM over Picard: {_fmt(result['speedup']['picard_over_pcm'])}x")
    lines += ["", "## Not computed", ""] + [f"- {m}: {why}" for m, why in result["skipped"].items()]
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    if result["stand_in"]:
        lines += ["", f"**{result['stand_in']}**"]
    return "\n".join(lines) + "\n"


def _figures(out: Path, results: dict, converged: dict, T: int, disclaimer: str | None) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; figures skipped")
        return
    sub = f"\n{disclaimer}" if disclaimer else ""
    for name, key, ylabel, title in (("pareto", "latent_rmse", "latent RMSE to DDIM-T (same seed)",
                                      "Distance to the converged output vs k (Figure 2 in shape)"),
                                     ("fid_vs_k", "fid", "FID", "FID vs k")):
        fig, ax = plt.subplots(figsize=(7, 4.8))
        for s, rows in results.items():
            pts = [(r["k"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*[(k, max(v, 1e-6) if key == "latent_rmse" else v) for k, v in pts], strict=True),
                        "o-", label=s)
        if key == "fid" and converged.get("fid") is not None:
            ax.axhline(converged["fid"], color="k", lw=1, label=f"DDIM-{T}")
        ax.set(xlabel="k (sequential model calls)", ylabel=ylabel, title=title + sub,
               yscale="log" if key == "latent_rmse" else "linear")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)
    rows = [s for s in GRID_ROWS if s in results]
    if not rows:
        return
    ks = sorted({r["k"] for s in rows for r in results[s]})
    conv = np.load(out / "cells" / "converged.npz")["images"]
    n = min(len(conv), 4)

    def cell(s, k):
        path = out / "cells" / f"{s}_k{k}.npz"
        return conv[:n] if k is None else np.load(path)["images"][:n] if path.exists() else None

    save_image_grid(out / "grid.png", rows, [*ks, None], cell, T, n,
                    "Rows: sampler, columns: k (Figures 3-4 in shape)" + sub)
