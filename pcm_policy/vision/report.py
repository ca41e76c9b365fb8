"""The image evaluation's own tables, from the generic sweep's result (``evaluation.sweep.run_sweep`` over the
image Task of ``vision.task.sweep_task``): Table 3 of the paper in shape (FID vs k), Table 4 in shape (every
metric at the largest k), k_match with T / k_match, the metrics not computed and why. Appended to the generic
report's table.md (``evaluation.report.write_report(..., extra=paper_tables(result))``)."""

from __future__ import annotations

import math

__all__ = ["paper_tables"]

TABLE4 = ("fid", "sfid", "inception_score", "kid", "precision", "recall", "cmmd", "clip_score", "class_accuracy",
          "latent_rmse", "psnr", "uint8_diff")


def _fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.{digits}g}" if abs(v) < 1e-2 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def paper_tables(result: dict) -> str:
    """Markdown: the tables of the module doc. ``result["settings"]`` holds ``T``, ``n``, ``reference`` (None or
    absent for a distances-only sweep),
    ``skipped``, ``notes`` and ``stand_in`` (``sweep_task``'s settings and the CLI's note)."""
    st, results, conv = result["settings"], result["results"], result["reference"]
    T, stand_in = conv["k"], st.get("stand_in")
    ks = sorted({r["k"] for rows in results.values() for r in rows})
    tag = " - stand-in model" if stand_in else ""
    ref = f"{st['reference']['n']} reference images" if st.get("reference") else "no reference (distances only)"
    lines = [f"# Image quality vs k: N = {st.get('n')} samples, {ref}, T = {T}", ""]
    if stand_in:
        lines += [f"**{stand_in}**", ""]
    lines += [f"Converged output = sequential DDIM-{T} on the same seeds: FID {_fmt(conv.get('fid'), 4)}.", "",
              f"## FID vs k (Table 3 in shape){tag}", "",
              "| sampler | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for s, rows in results.items():
        by_k = {r["k"]: r for r in rows}
        lines.append(f"| {s} | " + " | ".join(_fmt(by_k[k].get("fid"), 4) if k in by_k else "-" for k in ks) + " |")
    kk = ks[-1]
    lines += ["", f"## All metrics at k = {kk} (Table 4 in shape){tag}", "",
              "| sampler | " + " | ".join(TABLE4) + " |", "|---|" + "---|" * len(TABLE4)]
    for s, rows in [("sequential (converged, k = T)", [conv]), *results.items()]:
        r = conv if rows[0] is conv else next((r for r in rows if r["k"] == kk), None)
        if r:
            lines.append(f"| {s} | " + " | ".join(_fmt(r.get(c)) for c in TABLE4) + " |")
    lines += ["", "class_accuracy: prompt-class accuracy of a digit classifier, a stand-in for the CLIP score.", "",
              "## k_match and speed-up", "",
              f"Rule: smallest k with |FID - FID(DDIM-{T})| <= {st['score_tol']:.0%} of it and mean |image - "
              f"DDIM-{T} image| < {st['dist_tol']:g} uint8 level" +
              ("" if conv.get("fid") is not None else " (FID not computed: the image distance alone)") + ".", "",
              "| sampler | k_match | speed-up T / k_match |", "|---|---|---|"]
    for s, k in result["k_match"].items():
        lines.append(f"| {s} | {k if k else 'not reached'} | {_fmt(T / k) if k else '-'} |")
    if result["k_match"].get("picard") and result["k_match"].get("pcm"):
        lines.append(f"\nPCM over Picard: {_fmt(result['k_match']['picard'] / result['k_match']['pcm'])}x")
    lines += ["", "## Not computed", ""] + [f"- {m}: {why}" for m, why in st.get("skipped", {}).items()]
    if st.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in st["notes"]]
    if stand_in:
        lines += ["", f"**{stand_in}**"]
    return "\n".join(lines) + "\n"
