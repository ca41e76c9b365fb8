"""PCM adapters of one PushT policy side by side on one set of seeds, in one run, paired per episode.

    python scripts/compare_adapters.py --adapters checkpoints/pusht_pcm runs/pusht_pcm_new --seed 300000 --episodes 50
    python scripts/compare_adapters.py --adapters checkpoints/pusht_pcm runs/pusht_pcm_new --episodes 200 \
        --out runs/compare.json                       # evaluation seeds 100000..: report only, never to choose

In one process, on seeds seed..seed+episodes-1 (200 steps each, the sweep's protocol, ``pusht.task``):
1. DDIM-T (T = 50) reference rollouts, every chunk's observation and x_T recorded; its mean score.
2. Distances: on ``--conditions`` of those (observation, x_T) pairs, the mean action distance in px of each
   adapter's PCM output after exactly k calls (k in ``--ks``, tol 0) to DDIM-T's output on the same x_T.
3. Scores: each adapter's closed-loop rollouts at exactly k calls (``--score-ks``, tol 0, cold start), the same
   x_T per (seed, chunk) for every row; each row paired per episode with DDIM-T and with the first adapter at the
   same k (mean difference, percentile-bootstrap 95% interval, sign-flip p: ``pusht.peer_stats``).
Each adapter runs its own tuned spec (``adapter.json``). Prints the table and the distance ratios to the first
adapter; ``--out`` writes every episode's score (JSON, atomic). Exit 2 with one line for bad settings.

``--paired-with`` a ``scripts/peers_paired.py`` JSON of the same seeds (``results/peers/round2/paired.json``) puts
the adapters beside that run's peers: each of its rows at k is paired with each adapter's row at k (peer minus
adapter). Closed-loop episodes drift between machines, so this is done only when this run's DDIM-50 reference
reproduces that file's episode for episode; otherwise exit 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapters", nargs="+", type=Path, required=True, help="adapter folders; the first is the baseline")
    p.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints/pusht_base")
    p.add_argument("--seed", type=int, default=300000, help="first episode seed (training: 300000; evaluation: 100000)")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--conditions", type=int, default=400, help="(observation, x_T) pairs for the distances")
    p.add_argument("--ks", default="1,2,3,4,5", help="budgets k of the distances")
    p.add_argument("--score-ks", default="1,2,3", help="budgets k of the rollouts; '' for none")
    p.add_argument("--paired-with", type=Path, default=None,
                   help="a peers_paired.py JSON on the same seeds whose rows are paired with the adapters' at each k")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="JSON (atomic); a file git tracks needs --force")
    p.add_argument("--force", action="store_true")
    a = p.parse_args(argv)
    from pcm_policy.evaluation import budgets

    try:
        vars(a).update(budgets(ks=a.ks, score_ks=a.score_ks))
    except ValueError as e:
        p.exit(2, f"error: {e}\n")
    errors = [(not a.ks or min(a.episodes, a.conditions, a.max_steps, a.threads) < 1,
               "--ks needs a k; --episodes, --conditions, --max-steps and --threads must be >= 1"),
              (len(set(map(str, a.adapters))) < len(a.adapters), "--adapters names a folder twice"),
              (not 0 <= a.seed <= 2**32 - a.episodes, f"--seed must keep the seeds in 0..2^32-1, got {a.seed}")]
    errors += [(not (f / "adapter.json").is_file(), f"--adapters: {f} is not an adapter folder (no adapter.json); "
                                                     "name one written by scripts/train_pct.py") for f in a.adapters]
    for bad, msg in errors:
        if bad:
            p.exit(2, f"error: {msg}\n")
    from pcm_policy.device import check_threads
    from pcm_policy.io import check_out_arg

    a.threads = check_threads(a.threads)
    check_out_arg(p, a.out, a.force)
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    from pcm_policy.adapters import load_sampler
    from pcm_policy.evaluation import distances_vs_k
    from pcm_policy.evaluation.sweep import limited
    from pcm_policy.io import read_json, write_json
    from pcm_policy.pusht.checkpoint import CheckpointError, load_adapter_folder, load_policy
    from pcm_policy.pusht.peer_stats import paired_difference
    from pcm_policy.pusht.task import PushTEval, make_task
    from pcm_policy.sampling import SamplerSpec, make_sampler

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    evaluation = PushTEval(a.seed, a.episodes, a.max_steps)
    try:
        base = load_policy(a.checkpoint).freeze()
        policies = []
        for folder in a.adapters:
            p = load_policy(a.checkpoint)
            spec, _ = load_adapter_folder(p, folder)
            policies.append((folder, p.freeze(), spec.replace(tol=0.0)))
    except (CheckpointError, FileNotFoundError, KeyError, ValueError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    peers = None
    if a.paired_with is not None:
        try:
            peers = read_json(a.paired_with, "peers_paired.py output")
            held, peer_rows = (peers["reference"]["first_seed"], len(peers["reference"]["scores"])), peers["rows"]
        except (FileNotFoundError, ValueError, KeyError, TypeError) as e:
            print(f"error: --paired-with {a.paired_with}: not a peers_paired.py output ({e})", file=sys.stderr)
            return 2
        if held != (a.seed, a.episodes):
            print(f"error: {a.paired_with} holds {held[1]} episodes from seed {held[0]}; run with --seed {held[0]} "
                  f"--episodes {held[1]}", file=sys.stderr)
            return 2
    task = make_task(base, evaluation=evaluation, progress=False)
    ref = task.score(None, None)["detail"]
    print(f"DDIM-50 reference: {ref['mean_score']:.3f} / {100 * ref['success_rate']:.0f}% over {a.episodes} episodes "
          f"(seeds {a.seed}..{a.seed + a.episodes - 1}); {time.perf_counter() - t0:.0f} s", flush=True)
    if peers is not None:
        off = [i for i, (x, y) in enumerate(zip(ref["scores"], peers["reference"]["scores"], strict=True)) if x != y]
        if off:
            i = off[0]
            print(f"error: this machine's DDIM-50 episodes differ from {a.paired_with}'s in {len(off)} of {a.episodes} "
                  f"(seed {a.seed + i}: {ref['scores'][i]:.4f} vs {peers['reference']['scores'][i]:.4f}); pair rows "
                  "run on one machine only", file=sys.stderr)
            return 2
    cond, x_T = task.split("eval", a.conditions)
    with torch.no_grad():  # the reference trajectory (N, T+1, H, A), as the sweep's
        ddim = make_sampler(SamplerSpec.named("ddim", num_steps=50), base.noise_scheduler)
        traj = ddim(base.model_fn, x_T, cond, return_trajectory=True)[1].trajectory.transpose(0, 1)
    out = {"reference": {"sampler": "ddim", "k": 50, "mean_score": ref["mean_score"],
                         "success_rate": ref["success_rate"], "scores": ref["scores"]},
           "settings": {k: [str(f) for f in v] if k == "adapters" else str(v) if isinstance(v, Path) else v
                        for k, v in vars(a).items() if k != "force"},
           "adapters": []}
    for folder, p, spec in policies:
        ptask = make_task(p, evaluation=evaluation, progress=False)

        def make(name, k, spec=spec, ptask=ptask):  # held to k calls as the sweep's
            return load_sampler(limited(ptask, spec, k), ptask.scheduler)

        with torch.no_grad():
            px = distances_vs_k("pcm", make, p.model_fn, a.ks, cond, x_T, traj, ptask.distance)
        rows = {}
        for k in a.score_ks:
            d = ptask.score(spec, k)["detail"]
            rows[k] = {"mean_score": d["mean_score"], "success_rate": d["success_rate"], "scores": d["scores"],
                       "vs_ddim50": paired_difference(d["scores"], ref["scores"])}
        out["adapters"].append({"folder": str(folder), "spec": spec.to_dict(),
                                "distance_px": dict(zip(a.ks, px, strict=True)), "rows": rows})
        print(f"{folder}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    first = out["adapters"][0]
    for ad in out["adapters"][1:]:
        for k, row in ad["rows"].items():
            row["vs_first"] = paired_difference(row["scores"], first["rows"][k]["scores"])
    if peers is not None:  # peer minus adapter, per episode, for every full row of that run at the adapter's k
        out["paired_with"] = str(a.paired_with)
        for ad in out["adapters"]:
            for k, row in ad["rows"].items():
                row["peers_minus_this"] = {r["sampler"]: paired_difference(r["scores"], row["scores"])
                                           for r in peer_rows if r["k"] == k and len(r["scores"]) == a.episodes}

    def fmt(r):
        return f"{r['diff']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]"

    print(f"\n{'adapter':40s} {'k':>2s} {'px':>6s} {'px / first':>10s} {'score':>6s} {'succ%':>6s}  "
          f"{'- DDIM-50 [95% CI]':26s}  - first [95% CI]")
    for ad in out["adapters"]:
        for k in a.ks:
            row = ad["rows"].get(k)
            ratio = ad["distance_px"][k] / first["distance_px"][k]
            line = f"{ad['folder'][-40:]:40s} {k:2d} {ad['distance_px'][k]:6.2f} {ratio:10.3f}"
            if row is not None:
                vs_first = row.get("vs_first")
                line += (f" {row['mean_score']:6.3f} {100 * row['success_rate']:6.1f}  {fmt(row['vs_ddim50']):26s}  "
                         f"{fmt(vs_first) if vs_first else '-'}")
            print(line)
    if peers is not None:
        print(f"\npeer minus adapter at k [95% CI] ({a.paired_with})")
        for ad in out["adapters"]:
            for k, row in ad["rows"].items():
                for name, d in row["peers_minus_this"].items():
                    print(f"{ad['folder'][-40:]:40s} {k:2d} {name:14s} {fmt(d)}")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    if a.out is not None:
        out["command"] = "python scripts/compare_adapters.py " + " ".join(sys.argv[1:] if argv is None else argv)
        write_json(a.out, out)
        print(f"json: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
