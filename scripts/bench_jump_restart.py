"""PCM with and without the jump restart (``Jump.restart``), side by side on one set of PushT seeds (issue 23).

    python scripts/bench_jump_restart.py --seed 300000 --episodes 16 --out runs/jump_restart_train.json   # tuning
    python scripts/bench_jump_restart.py --seed 100000 --episodes 50 --out results/jump_restart_eval.json

"old" is the shipped adapter's spec (``checkpoints/pusht_pcm``): Picard + TAA from the prior with the jump riding
beside it. "new" is the same spec with the jump restart: after call 1, every guess after grid position
``--restart-from`` (and after the anchor) is replaced by the deterministic DDIM path through that position's
current value with x0 fixed at the jump's estimate (``picard.restart_path``), TAA's memory starting afresh. Only
guesses change, so the fixed point and tol-0 exactness are the same (tests/test_jump_restart.py).

Measured, in one process, for both:
1. open loop, on ``--conditions`` (observation, x_T) pairs of the DDIM-50 reference rollouts on the seeds (the
   sweep's "eval" conditions): px to DDIM-50 after exactly k = 1..8 calls, and at tol 0.1 the calls per chunk and
   the px to DDIM-50;
2. closed loop, the rollout defaults (tol 0.1, warm start): mean score, success, calls per chunk per sample, NFE;
3. closed loop at exactly k calls (tol 0, cold) for ``--score-ks``: mean score, success; and k_match (the smallest
   k with px under 1 and score within 0.02 of DDIM-50's, the sweep's rule) over those ks.
Prints new / old ratios. Evaluation seeds (100000..) tune nothing: ``--restart-from`` was chosen on training seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=300000, help="first episode seed (training: 300000; evaluation: 100000)")
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--conditions", type=int, default=200, help="open-loop (observation, x_T) pairs")
    p.add_argument("--ks", default="1,2,3,4,5,6,8", help="open-loop budgets k")
    p.add_argument("--score-ks", default="4,5", help="closed-loop budgets k (tol 0); '' for none")
    p.add_argument("--restart-from", type=int, default=None,
                   help="grid position (default: the adapter's spec, else 25)")
    p.add_argument("--checkpoint", default=str(ROOT / "checkpoints/pusht_base"))
    p.add_argument("--adapter", default=str(ROOT / "checkpoints/pusht_pcm"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="JSON (atomic); a tracked file needs --force")
    p.add_argument("--force", action="store_true")
    a = p.parse_args(argv)
    from pcm_policy.evaluation import budgets

    try:
        vars(a).update(budgets(ks=a.ks, score_ks=a.score_ks))
    except ValueError as e:
        p.exit(2, f"error: {e}\n")
    if not a.ks or min(a.episodes, a.conditions, a.max_steps, a.threads) < 1:
        p.exit(2, "error: --ks needs a k; --episodes, --conditions, --max-steps and --threads must be >= 1\n")
    if a.restart_from is not None and not 0 <= a.restart_from < 50:
        p.exit(2, f"error: --restart-from must be a grid position in 0..49, got {a.restart_from}\n")
    from pcm_policy.io import check_out_arg

    check_out_arg(p, a.out, a.force)
    return a


def specs(shipped, restart_from):
    """{"old": the shipped spec without a restart, "new": with the restart after call 1 from ``restart_from``}."""
    jump = shipped.jump
    if jump.restart and restart_from is None:  # the adapter already restarts: "old" drops it
        return {"old": shipped.replace(jump=dataclasses.replace(jump, restart=())), "new": shipped}
    rf = 25 if restart_from is None else restart_from
    return {"old": shipped.replace(jump=dataclasses.replace(jump, restart=())),
            "new": shipped.replace(jump=dataclasses.replace(jump, restart=(0,), restart_from=rf))}


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    from pcm_policy.device import check_threads
    from pcm_policy.evaluation import distances_vs_k, k_match
    from pcm_policy.io import run_record, write_json
    from pcm_policy.pusht.checkpoint import load_adapter_folder, load_policy
    from pcm_policy.pusht.rollout import run_rollouts, summarize
    from pcm_policy.pusht.task import PushTEval, make_task
    from pcm_policy.sampling import SamplerSpec, make_sampler

    torch.set_num_threads(check_threads(a.threads))
    t0 = time.time()
    policy = load_policy(a.checkpoint)
    shipped, _ = load_adapter_folder(policy, a.adapter)
    policy.freeze(True)
    sp = specs(shipped, a.restart_from)
    seeds = list(range(a.seed, a.seed + a.episodes))
    task = make_task(policy, evaluation=PushTEval(seed=a.seed, episodes=a.episodes, max_steps=a.max_steps),
                     progress=False)
    ref_score = task.score(None, None)  # DDIM-50 rollouts (their chunks are the open-loop conditions)
    cond, x_T = task.conditions("eval", a.conditions)
    ddim = make_sampler(SamplerSpec.named("ddim"), policy.noise_scheduler)
    with torch.no_grad():
        traj = ddim(policy.model_fn, x_T, cond, return_trajectory=True)[1].trajectory.transpose(0, 1)
    print(f"DDIM-50 on seeds {seeds[0]}-{seeds[-1]}: score {ref_score['score']:.3f}, "
          f"success {100 * ref_score['success_rate']:.0f}%; {len(x_T)} open-loop conditions", flush=True)
    res = {"setup": {**run_record("scripts/bench_jump_restart.py", argv or sys.argv[1:]), "threads": a.threads,
                     "seeds": [seeds[0], seeds[-1]],
                     "conditions": len(x_T), "specs": {n: s.to_dict() for n, s in sp.items()}},
           "ddim50": {k: ref_score[k] for k in ("score", "success_rate")}, "open_loop": {}, "closed_loop": {},
           "fixed_k": {}, "k_match": {}}
    for name, spec in sp.items():
        with torch.no_grad():
            d = distances_vs_k("pcm", lambda _n, k, spec=spec: make_sampler(spec.replace(tol=0.0, k=k),
                                                                            policy.noise_scheduler),
                               policy.model_fn, a.ks, cond, x_T, traj, task.distance)
            x, st = make_sampler(spec.replace(tol=0.1), policy.noise_scheduler)(policy.model_fn, x_T, cond)
        res["open_loop"][name] = {"px_at_k": dict(zip(a.ks, d, strict=True)),
                                  "tol01_calls": sum(st.sample_iterations) / len(x_T),
                                  "tol01_px": task.distance(x, traj[:, -1]).mean().item()}
        print(f"{name}: open loop done ({time.time() - t0:.0f} s)", flush=True)
        sampler = make_sampler(spec.replace(tol=0.1), policy.noise_scheduler)
        with torch.no_grad():
            eps = run_rollouts(policy, sampler, seeds, max_steps=a.max_steps, warm_start=True)["episodes"]
        res["closed_loop"][name] = summarize(eps)
        print(f"{name}: closed loop done ({time.time() - t0:.0f} s)", flush=True)
        rows = []
        for k in a.score_ks:
            s = task.score(spec, k)
            res["fixed_k"].setdefault(name, {})[k] = {f: s[f] for f in ("score", "success_rate", "mean_iterations")}
            px = res["open_loop"][name]["px_at_k"].get(k)
            rows.append({"k": k, "score": s["score"], "distance": float("inf") if px is None else px})
        res["k_match"][name] = k_match(rows, ref_score["score"], 0.02, 1.0)
        print(f"{name}: fixed k done ({time.time() - t0:.0f} s)", flush=True)
    res["setup"]["seconds"] = round(time.time() - t0, 1)
    print(report(res))
    if a.out is not None:
        write_json(a.out, res)
        print(f"wrote {a.out}")
    return 0


def report(res: dict) -> str:
    o, n = "old", "new"
    ol, cl, fk = res["open_loop"], res["closed_loop"], res["fixed_k"]
    lines = [f"seeds {res['setup']['seeds'][0]}-{res['setup']['seeds'][1]}, {res['setup']['conditions']} open-loop "
             f"conditions; DDIM-50 score {res['ddim50']['score']:.3f}",
             f"{'':34} {'old':>9} {'new':>9} {'new/old':>8}"]

    def row(label, a, b, fmt=".3f"):
        ratio = f"{b / a:8.3f}" if a else "       -"
        lines.append(f"{label:34} {a:9{fmt}} {b:9{fmt}} {ratio}")

    for k in ol[o]["px_at_k"]:
        row(f"px to DDIM-50 after k = {k}", ol[o]["px_at_k"][k], ol[n]["px_at_k"][k])
    row("open loop, tol 0.1: calls/chunk", ol[o]["tol01_calls"], ol[n]["tol01_calls"])
    row("open loop, tol 0.1: px to DDIM-50", ol[o]["tol01_px"], ol[n]["tol01_px"])
    row("closed loop tol 0.1: calls/chunk", cl[o]["mean_iterations"], cl[n]["mean_iterations"])
    row("closed loop tol 0.1: NFE/chunk", cl[o]["mean_nfe"], cl[n]["mean_nfe"], ".1f")
    row("closed loop tol 0.1: score", cl[o]["mean_score"], cl[n]["mean_score"])
    row("closed loop tol 0.1: success", cl[o]["success_rate"], cl[n]["success_rate"])
    for k in fk.get(o, {}):
        row(f"score at exactly k = {k}", fk[o][k]["score"], fk[n][k]["score"])
        row(f"success at exactly k = {k}", fk[o][k]["success_rate"], fk[n][k]["success_rate"])
    lines.append(f"{'k_match (over --score-ks)':34} {res['k_match'][o]!s:>9} {res['k_match'][n]!s:>9}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
