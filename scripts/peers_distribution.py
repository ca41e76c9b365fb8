"""Distribution, not only score: each sampler's action-chunk distribution at budget k against DDIM-50's, at start
states where DDIM-50's actions are multimodal (PushT, training seeds only).

    python scripts/peers_distribution.py --out results/peers/distribution.json

1. Screen: for the start states of training seeds FIRST..LAST (legacy reset, history of the first observation),
   draw --screen-draws x_T and run DDIM-50; split its chunks into two modes (2-means,
   ``peer_stats.mode_split``) and keep the --observations states with the largest separation among those whose
   smaller mode holds at least --min-share of the draws.
2. For each kept state: DDIM-50 on --draws x_T (the reference), then DDIM-50 and every sampler at k = 1..K on
   --draws FRESH x_T' (independent of the reference's, so a two-sample test applies). Per sampler and k: the
   unbiased MMD^2 against the reference (RBF kernel on the chunk in env pixels, median-heuristic bandwidth of
   the reference vs DDIM-50 on x_T', fixed for the state), its permutation p-value, the share of draws in the
   reference's mode 0, the mode agreement (the share of draws x_T' whose chunk falls in the same mode as
   DDIM-50's from the same x_T') and the mean per-sample distance (px) to DDIM-50 on the same x_T'. DDIM-50 on
   x_T' is the noise floor: two finite samples of the same distribution.
   --states S1 S2 ... skips the screen and uses those seeds' start states.

Evaluation seeds (100000-100049) are refused.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

SAMPLERS = ("ddim-k", "dpmsolver++", "unipc", "srds", "taa", "pcm")


def outputs_vs_k(name, base, pcm, spec, ks, cond, x_T):
    """{k: output} of sampler ``name`` at every k (k-step solvers: one run per k; the others: one run at max k,
    what they would return after k calls read off ``stats.outputs``)."""
    from pcm_policy.pusht.peers import peer_sampler
    from pcm_policy.sampling import K_STEPS

    pol = pcm if name == "pcm" else base
    if name in K_STEPS:
        return {k: peer_sampler(name, base, spec, k)(pol.model_fn, x_T, cond)[0] for k in ks}
    st = peer_sampler(name, base, spec, max(ks))(pol.model_fn, x_T, cond, return_iterates=True)[1]
    its = st.outputs or [X[-1] for X in st.iterates]
    return {k: its[min(k, len(its) - 1)] for k in ks}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs=2, default=(400_000, 400_023), metavar=("FIRST", "LAST"),
                   help="training seeds whose start states are screened (inclusive)")
    p.add_argument("--screen-draws", type=int, default=64)
    p.add_argument("--observations", type=int, default=3, help="states kept (most bimodal)")
    p.add_argument("--min-share", type=float, default=0.2, help="smallest share of the smaller mode to keep a state")
    p.add_argument("--states", type=int, nargs="*", default=None, help="use these seeds' states (no screen)")
    p.add_argument("--draws", type=int, default=256, help="x_T per state and sampler")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), help=f"among {', '.join(SAMPLERS)}")
    p.add_argument("--permutations", type=int, default=200)
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoints/pusht_base"))
    p.add_argument("--adapter", type=Path, default=Path("checkpoints/pusht_pcm"))
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    p.add_argument("--force", action="store_true", help="allow --out to replace a file git tracks")
    a = p.parse_args(argv)
    import numpy as np
    import torch

    from pcm_policy.io import check_not_shipped, write_json
    from pcm_policy.pusht.checkpoint import CheckpointError
    from pcm_policy.pusht.peer_stats import assign_modes, bimodality, mmd_test, mode_split
    from pcm_policy.pusht.peers import check_seeds, load_peer_policies, reset_conditions
    from pcm_policy.sampling import make_sampler

    torch.set_num_threads(1)
    try:
        seeds = list(range(a.seeds[0], a.seeds[1] + 1)) if not a.states else list(a.states)
        check_seeds(seeds)
        bad = [s for s in a.samplers if s not in SAMPLERS]
        if bad or not seeds or min(a.ks + [a.draws, a.screen_draws, a.observations]) < 1 or not 0 < a.min_share < 0.5:
            raise ValueError(f"need samplers among {', '.join(SAMPLERS)} (got {bad}), FIRST <= LAST, ks, draws and "
                             "observations >= 1 and 0 < --min-share < 0.5")
        if a.out is not None:
            check_not_shipped(a.out, a.force, "--force", "--out")
        base, pcm, spec = load_peer_policies(a.checkpoint, a.adapter)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0, scale = time.perf_counter(), base.normalizer["action"].scale.cpu().numpy()
    ddim50 = make_sampler("ddim", base.noise_scheduler, num_steps=50)
    shape = (base.cfg.horizon, base.cfg.action_dim)

    def px(x):
        return x.detach().cpu().numpy() / scale

    def draws(n, seed):
        return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))

    with torch.no_grad():
        conds = reset_conditions(base, seeds)
        screen = []
        for i, s in enumerate([] if a.states else seeds):
            c = conds[i:i + 1].expand(a.screen_draws, -1)
            x = px(ddim50(base.model_fn, draws(a.screen_draws, 1), c)[0])
            m, b = mode_split(x), bimodality(x)
            screen.append({"seed": s, "share": m["share"], "separation": m["separation"], "bimodality": b})
            print(f"screen seed {s}: bimodality {b:.2f}, mode-0 share {m['share']:.2f}, separation "
                  f"{m['separation']:.2f}", flush=True)
        ok = [r for r in screen if a.min_share <= r["share"] <= 1 - a.min_share]
        kept = sorted(ok, key=lambda r: -r["bimodality"])[:a.observations] if not a.states else \
            [{"seed": s} for s in a.states]
        print(f"kept seeds {[r['seed'] for r in kept]} ({time.perf_counter() - t0:.0f} s)", flush=True)
        states = []
        for r in kept:
            c = conds[seeds.index(r["seed"])][None].expand(a.draws, -1)
            x_ref, x_new = draws(a.draws, 2), draws(a.draws, 3)
            ref = px(ddim50(base.model_fn, x_ref, c)[0])
            floor = px(ddim50(base.model_fn, x_new, c)[0])
            modes = mode_split(ref)
            both = np.concatenate([ref, floor]).reshape(2 * a.draws, -1)
            d = np.sqrt(((both[:, None] - both[None]) ** 2).sum(-1))
            bw = float(np.median(d[np.triu_indices(len(both), 1)]))

            def row(x, modes=modes, ref=ref, floor=floor, bw=bw):
                t = mmd_test(ref, x, permutations=a.permutations, bandwidth=bw)
                lab = assign_modes(x, modes["centres"])
                return {"mmd2": t["mmd2"], "p_value": t["p_value"], "share_mode0": float((lab == 0).mean()),
                        "mode_agreement": float((lab == assign_modes(floor, modes["centres"])).mean()),
                        "distance_px": float(np.linalg.norm(x - floor, axis=-1).mean())}

            res = {"seed": r["seed"], "ref_share_mode0": modes["share"], "separation": modes["separation"],
                   "bimodality": bimodality(ref),
                   "bandwidth_px": bw, "centres_first_last_px": [[c_[:2].tolist(), c_[-2:].tolist()]
                                                                 for c_ in modes["centres"]],
                   "floor": row(floor), "samplers": {}}
            print(f"seed {r['seed']}: bimodality {res['bimodality']:.2f}, reference mode-0 share {modes['share']:.2f}, "
                  f"floor MMD^2 {res['floor']['mmd2']:.4f} (p {res['floor']['p_value']:.2f})", flush=True)
            for name in a.samplers:
                outs = outputs_vs_k(name, base, pcm, spec, a.ks, c, x_new)
                res["samplers"][name] = [{"k": k, **row(px(outs[k]))} for k in a.ks]
                print(f"  {name:12s} " + " ".join(f"k={q['k']}: {q['mmd2']:.4f}/{q['share_mode0']:.2f}/"
                                                    f"{q['mode_agreement']:.2f}"
                                                    for q in res["samplers"][name]), flush=True)
            states.append(res)
    out = {"command": "python scripts/peers_distribution.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                        "pcm_spec": spec.to_dict(), "units": "env pixels", "seconds": time.perf_counter() - t0},
           "screen": screen, "states": states}
    if a.out is not None:
        write_json(a.out, out)
        print(f"json: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
