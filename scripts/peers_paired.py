"""Paired closed-loop comparison of the sweep's score rows (PushT): every row against DDIM-50 and, at each k,
against PCM, per episode (same seeds, same x_T per (seed, chunk)), with bootstrap 95% intervals.

    python scripts/peers_paired.py --sweep-out runs/peers_eval200_ddimk --sweeps runs/s10d_sweeps/sweep*.json \
        --out results/peers/paired_eval200.json

``--paired`` reads an earlier output of this script instead of the sweep's cache (its reference and full rows), to
pair new rows with it. --rollouts adds rows of ``scripts/rollout.py --json`` files (fewer episodes, seeds from the
sweep's first): each is paired with the same seeds' episodes of the sweep's rows (episodes do not depend on which
others share the batch, ``pusht.rollout``).

Reads the sweep's per-row cache (OUT/runs/<sampler>_k<k>.json and reference_score.json: each episode's score,
kept by ``pusht.task``'s score) and the distances to DDIM-50 from the given sweep.json files (a later file wins
for the same sampler and k). Differences: ``peer_stats.paired_difference`` (percentile bootstrap over episodes,
10,000 resamples; sign-flip p-value). Success rate: the row's own (coverage > 0.95); the paired success
difference counts an episode as a success when its score is 1 (coverage >= 0.95), which the script checks
against the row's success rate.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def load_rows(folder: Path) -> tuple[dict, dict]:
    """(reference detail, {(sampler, k): detail}) from a sweep's cache folder ``folder``/runs."""
    runs = folder / "runs"
    ref_path = runs / "reference_score.json"
    if not ref_path.is_file():
        raise FileNotFoundError(f"{ref_path} not found: run scripts/eval_sweep.py with --out {folder} first")
    ref = json.loads(ref_path.read_text())["value"]
    rows = {}
    for f in sorted(runs.glob("*_k*.json")):
        m = re.fullmatch(r"(.+)_k(\d+)", f.stem)
        if m and not f.stem.startswith("distance_"):
            rows[(m[1], int(m[2]))] = json.loads(f.read_text())["value"]["detail"]
    return ref.get("detail", ref), rows


def load_paired(path: Path) -> tuple[dict, dict, dict]:
    """(reference detail, {(sampler, k): detail}, {(sampler, k): distance px}) from a JSON this script wrote: its
    reference and the rows that ran every reference episode (rows on fewer seeds do not record which seeds)."""
    d = json.loads(path.read_text())
    ref = {key: d["reference"][key] for key in ("scores", "mean_score", "success_rate")}
    full = [r for r in d["rows"] if len(r["scores"]) == len(ref["scores"])]
    rows = {(r["sampler"], r["k"]): {key: r[key] for key in ("scores", "mean_score", "success_rate", "mean_iterations",
                                                              "mean_nfe")} for r in full}
    return ref, rows, {(r["sampler"], r["k"]): r["distance_px"] for r in full}


def markdown(out: dict, against: str) -> str:
    """Two markdown tables: every row against DDIM-50; the rows of k <= 5 against ``against``, one column per k."""
    def ci(r):
        return f"{r['diff']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]"

    def vs(r):
        d = r.get(f"vs_{against}")
        return "" if d is None else f"; {ci(d)}" + (f" (n={d['n']})" if d["n"] != r["episodes"] else "")

    ref = out["reference"]
    lines = [f"DDIM-50: {ref['mean_score']:.3f} / {100 * ref['success_rate']:.1f}% ({ref['episodes']} episodes)", "",
             "| sampler | k | episodes | score / success | px to DDIM-50 | - DDIM-50 [95% CI] | p |",
             "|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        px = "-" if r["distance_px"] is None else f"{r['distance_px']:.2f}"
        lines.append(f"| {r['sampler']} | {r['k']} | {r['episodes']} | {r['mean_score']:.3f} / "
                     f"{100 * r['success_rate']:.1f}% | {px} | {ci(r['vs_ddim50'])} | "
                     f"{r['vs_ddim50']['p_value']:.4f} |")
    ks = sorted({r["k"] for r in out["rows"] if r["k"] <= 5})
    names = list(dict.fromkeys(r["sampler"] for r in out["rows"] if r["k"] <= 5))
    names = [n for n in names if n != against] + [against]
    lines += ["", f"| sampler (score / success, episodes; - {against} [95% CI]) | "
              + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for n in names:
        cells = []
        for k in ks:
            rs = [r for r in out["rows"] if r["sampler"] == n and r["k"] == k]
            cells.append(" <br> ".join(f"{r['mean_score']:.3f} / {100 * r['success_rate']:.0f}% ({r['episodes']})"
                                       + vs(r) for r in rs) or "-")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--sweep-out", type=Path, help="the sweep's --out folder (its runs/ cache)")
    src.add_argument("--paired", type=Path, help="instead: a JSON this script wrote earlier (its reference and its "
                                                  "rows over every reference episode), to pair new --rollouts with")
    p.add_argument("--sweeps", type=Path, nargs="*", default=[], help="sweep.json files with the distances")
    p.add_argument("--rollouts", type=Path, nargs="*", default=[], help="rollout.py JSON files (rows on fewer seeds)")
    p.add_argument("--seed", type=int, default=100000, help="the sweep's first episode seed")
    p.add_argument("--against", default="pcm", help="the sampler every row is also compared with at its k")
    p.add_argument("--markdown", action="store_true", help="also print the two tables as markdown")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--force", action="store_true", help="allow --out to replace a file git tracks")
    a = p.parse_args(argv)
    import numpy as np

    from pcm_policy.io import check_not_shipped, write_json
    from pcm_policy.pusht.peer_stats import paired_difference

    try:
        if a.out is not None:
            check_not_shipped(a.out, a.force, "--force", "--out")
        ref, rows, dist = load_rows(a.sweep_out) + ({},) if a.paired is None else load_paired(a.paired)
        extra = {}
        for f in a.rollouts:
            r = json.loads(f.read_text())
            idx = [e["seed"] - a.seed for e in r["episodes"]]
            if min(idx) < 0 or max(idx) >= len(ref["scores"]):
                raise ValueError(f"{f}: seeds outside the sweep's {a.seed}..{a.seed + len(ref['scores']) - 1}")
            k = r["sampler"]["k"]
            if k is None:  # no --k: a sequential sampler's calls are its steps; an iterative one's vary
                if r["sampler"]["name"] != "ddim":
                    raise ValueError(f"{f}: a {r['sampler']['name']} rollout without --k has no fixed number of "
                                     f"calls to pair at; rerun it with --k")
                k = r["sampler"]["num_steps"]
            extra[(r["sampler"]["name"], int(k))] = {
                "scores": [e["score"] for e in r["episodes"]], "index": idx, "file": str(f),
                "mean_score": r["summary"]["mean_score"], "success_rate": r["summary"]["success_rate"],
                "mean_iterations": r["summary"]["mean_iterations"], "mean_nfe": r["summary"]["mean_nfe"]}
        for s in a.sweeps:
            for name, rs in json.loads(s.read_text())["results"].items():
                dist.update({(name, r["k"]): r["distance"] for r in rs})
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ref_scores = np.asarray(ref["scores"])
    out = {"reference": {"sampler": "ddim", "k": 50, "episodes": len(ref_scores), "mean_score": ref["mean_score"],
                         "success_rate": ref["success_rate"], "first_seed": a.seed,
                         "scores": [float(v) for v in ref_scores]}, "rows": []}
    print(f"DDIM-50: {ref['mean_score']:.3f} / {100 * ref['success_rate']:.1f}% over {len(ref_scores)} episodes")
    print(f"{'sampler':12s} {'k':>3s} {'n':>4s} {'score':>6s} {'succ%':>6s} {'px':>7s}  {'- DDIM-50 [95% CI] p':31s}"
          f"  - {a.against} [95% CI] p")
    every = {**{c: {**d, "index": list(range(len(ref_scores)))} for c, d in rows.items()}, **extra}
    for (name, k), d in sorted(every.items(), key=lambda x: (x[0][1], x[0][0], len(x[1]["scores"]))):
        sc, idx = np.asarray(d["scores"]), d["index"]
        if len(sc) != len(idx):
            print(f"note: {name} k={k} has {len(sc)} episodes, the reference {len(ref_scores)}: skipped")
            continue
        succ1 = float((sc >= 1.0).mean())
        vs_ref = paired_difference(sc, ref_scores[idx])
        vs_ref["success_diff"] = succ1 - float((ref_scores[idx] >= 1.0).mean())
        row = {"sampler": name, "k": k, "episodes": len(sc), "mean_score": d["mean_score"],
               "success_rate": d["success_rate"], "score_one_rate": succ1, "distance_px": dist.get((name, k)),
               "mean_iterations": d.get("mean_iterations"), "mean_nfe": d.get("mean_nfe"),
               "source": d.get("file", str(a.paired or a.sweep_out / "runs")), "vs_ddim50": vs_ref}
        other = every.get((a.against, k))
        if name != a.against and other is not None:  # paired on the seeds both rows ran
            mine, theirs = dict(zip(idx, sc, strict=True)), dict(zip(other["index"], other["scores"], strict=True))
            both = sorted(set(mine) & set(theirs))
            row[f"vs_{a.against}"] = paired_difference([mine[i] for i in both], [theirs[i] for i in both])
        row["scores"] = [float(v) for v in sc]
        out["rows"].append(row)

        def fmt(r):
            return f"{r['diff']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] {r['p_value']:.4f}"

        px = "-" if row["distance_px"] is None else f"{row['distance_px']:.2f}"
        print(f"{name:12s} {k:3d} {len(sc):4d} {d['mean_score']:6.3f} {100 * d['success_rate']:6.1f} {px:>7s}  "
              f"{fmt(vs_ref):31s}  " + (fmt(row[f'vs_{a.against}']) if f"vs_{a.against}" in row else "-"))
        if abs(succ1 - d["success_rate"]) > 1e-9:
            print(f"note: {name} k={k}: score-1 rate {succ1:.3f} differs from the success rate {d['success_rate']:.3f}")
    if a.markdown:
        print(markdown(out, a.against))
    if a.out is not None:
        out["command"] = "python scripts/peers_paired.py " + " ".join(sys.argv[1:] if argv is None else argv)
        write_json(a.out, out)
        print(f"json: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
