"""PushT conditions for comparing samplers off the evaluation seeds: start states and visited states.

Evaluation seeds (100000-100049) never tune or pick anything here; these helpers draw training-seed
conditions (PCT's rollout seeds start at 400000, ``pct_data.TrajDataConfig.rollout_seed``).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["EVAL_SEEDS", "check_seeds", "reset_conditions", "rollout_conditions"]

EVAL_SEEDS = range(100_000, 100_050)


def check_seeds(seeds) -> None:
    """ValueError if any seed is an evaluation seed (those never tune or select settings)."""
    bad = sorted(set(seeds) & set(EVAL_SEEDS))
    if bad:
        raise ValueError(f"seeds {bad[:3]}... are evaluation seeds (100000-100049), which never tune anything; "
                         "use training seeds (e.g. 400000 on)")


def reset_conditions(policy, seeds) -> torch.Tensor:
    """Conditions ``(len(seeds), cond_dim)`` of the env's start states (legacy reset of each seed; the first
    observation repeated over the history, as a rollout's first chunk sees it)."""
    from envs.pusht import PushTEnv

    obs = []
    for s in seeds:
        o, _ = PushTEnv(obs_type=policy.cfg.obs_type).reset(seed=s)
        obs.append(np.stack([o] * policy.cfg.n_obs_steps))
    return policy.condition(torch.as_tensor(np.stack(obs), dtype=torch.float32))


@torch.no_grad()
def rollout_conditions(policy, seeds, *, max_steps: int = 96, k: int = 10) -> torch.Tensor:
    """Conditions of every chunk of DDIM-``k`` rollouts of ``policy`` on ``seeds`` (``max_steps`` env steps
    each): states the policy visits, not only start states. Returns ``(N, cond_dim)``."""
    from ..sampling import make_sampler
    from .rollout import run_rollouts

    check_seeds(seeds)
    shown = []
    run_rollouts(policy, make_sampler("ddim-k", policy.noise_scheduler, k=k), list(seeds), max_steps=max_steps,
                 on_chunk=lambda c, obs, out: shown.append(obs.clone()))
    return policy.condition(torch.cat(shown))


# ---------------------------------------------------------------------------------------- the peer bench
PEERS = ("ddim-k", "dpmsolver++", "unipc", "srds", "picard", "taa", "pcm")
EXACT = ("picard", "taa", "pcm")  # compared with diffusers' ParaDiGMS at a matched distance


def load_peer_policies(checkpoint, adapter, device="cpu"):
    """(frozen base policy, frozen adapted copy, the adapter's PCM spec)."""
    import copy

    from .checkpoint import load_adapter_folder, load_policy

    base = load_policy(checkpoint, device)
    pcm = copy.deepcopy(base)
    spec, _ = load_adapter_folder(pcm, adapter)
    return base.freeze(), pcm.freeze(), spec


def peer_sampler(name: str, base, pcm_spec, k: int | None, tol: float = 0.0, num_steps: int = 50):
    """(sampler, policy whose model_fn it runs) for one peer at budget ``k`` (steps or batched calls)."""
    from ..sampling import SamplerSpec
    from ..solvers import make_any_sampler

    if name == "consistency":  # the consistency-distilled student (its adapter on the policy it runs) in k calls
        return make_any_sampler(SamplerSpec.named(name, num_steps=num_steps, k=k), base.noise_scheduler)

    if name == "pcm":
        return make_any_sampler(pcm_spec.replace(num_steps=num_steps, tol=tol, k=k), base.noise_scheduler)
    if name in ("ddim-k", "dpmsolver++", "unipc"):
        return make_any_sampler(SamplerSpec.named(name, k=k), base.noise_scheduler)
    return make_any_sampler(SamplerSpec.named(name, num_steps=num_steps, tol=tol, k=k), base.noise_scheduler)


def solver_configs(base, cond, x_T, ref, ks, distance) -> dict:
    """Mean ``distance`` to ``ref`` of DPM-Solver++ and UniPC at each k in ``ks`` under the configurations a user
    might pick: diffusers' ``from_config`` of the policy's scheduler (linspace, no clip: its default-valued
    ``leading`` is dropped), and each spacing without and with the clip (``solvers.solver_scheduler``)."""
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    from ..sampling import make_sampler
    from ..solvers import solver_scheduler

    cls = {"dpmsolver++": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler}
    out = {}
    for name, c in cls.items():
        makers = {"from_config": lambda c=c: c.from_config(base.noise_scheduler.config)}
        for sp in ("leading", "linspace", "trailing"):
            for clip in (False, True):
                makers[f"{sp}, {'clip' if clip else 'no clip'}"] = lambda sp=sp, clip=clip, name=name: solver_scheduler(
                    name, base.noise_scheduler, clip=clip, timestep_spacing=sp)
        for label, mk in makers.items():
            run = [make_sampler(name, base.noise_scheduler, k=k, solver_scheduler=mk()) for k in ks]
            out[f"{name} {label}"] = [float(distance(r(base.model_fn, x_T, cond)[0], ref).mean()) for r in run]
    return out


def bench_peers(*, seeds=range(400_000, 400_002), max_steps: int = 48, conditions: int = 12, ks=(1, 2, 3, 4, 5),
                peers=PEERS, num_steps: int = 50, paradigms_tols=(0.4, 0.2, 0.1, 0.05, 0.02, 0.01),
                checkpoint="checkpoints/pusht_base", adapter="checkpoints/pusht_pcm", x_seed: int = 0,
                solver_ks=None, student=None, progress=print) -> dict:
    """Every peer on the same conditions and x_T: mean pixel distance to DDIM-``num_steps`` at each budget k
    (k steps or k batched calls), and diffusers' ParaDiGMS against Picard / TAA / PCM at a matched distance.

    Conditions: the chunks of DDIM-10 rollouts on training ``seeds`` (never evaluation seeds), at most
    ``conditions`` of them, evenly spaced. ``student``: the adapter folder of a consistency-distilled student
    (``training.consistency``), measured as the peer "consistency" (k calls) when ``peers`` names it. Returns the
    JSON-ready result (``settings``, ``anytime``: {peer: rows},
    ``paradigms``: runs per method and the cheapest within ParaDiGMS's distance at tol 0.1; with ``solver_ks``,
    ``solver_configs``: ``solver_configs`` at those k).
    """
    import time

    from ..evaluation.paradigms_ref import cheapest_within, sample_paradigms, timed
    from ..sampling import make_sampler
    from .pct_data import pixel_distance

    check_seeds(seeds)
    bad = [p for p in peers if p not in PEERS and not (p == "consistency" and student is not None)]
    if bad or min(ks) < 1 or conditions < 1:
        raise ValueError(f"peers must be among {', '.join(PEERS)} (and consistency with a student adapter) and ks, "
                         f"conditions >= 1; got {bad}, {ks}, "
                         f"{conditions}")
    t0 = time.perf_counter()
    base, pcm, pcm_spec = load_peer_policies(checkpoint, adapter)
    cd = load_peer_policies(checkpoint, student)[1] if student is not None else None
    cond = rollout_conditions(base, seeds, max_steps=max_steps)
    cond = cond[np.unique(np.linspace(0, len(cond) - 1, min(conditions, len(cond))).round().astype(int))]
    shape = (len(cond), base.cfg.horizon, base.cfg.action_dim)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(x_seed))
    ref, _ = make_sampler("ddim", base.noise_scheduler, num_steps=num_steps)(base.model_fn, x_T, cond)
    px = pixel_distance(base)
    progress(f"{len(cond)} conditions from seeds {seeds[0]}..{seeds[-1]}, reference DDIM-{num_steps} "
             f"({time.perf_counter() - t0:.0f} s)")

    def run(sampler, policy):
        (x, st), wall = timed(sampler, policy.model_fn, x_T, cond)
        return {"distance": float(px(x, ref).mean()), "max_distance": float(px(x, ref).max()),
                "iterations": int(st.iterations), "mean_sample_iterations": float(np.mean(st.sample_iterations or
                                                                                     [st.iterations])),
                "nfe": float(st.nfe), "wall_s": wall}

    anytime = {}
    for name in peers:
        pol = pcm if name == "pcm" else cd if name == "consistency" else base
        anytime[name] = [{"k": k, **run(peer_sampler(name, base, pcm_spec, k, num_steps=num_steps), pol)} for k in ks]
        progress(f"{name:12s} " + " ".join(f"{r['distance']:8.2f}" for r in anytime[name]))
    runs = {"paradigms": []}
    for tol in paradigms_tols:
        sched = paradigms_scheduler(base.noise_scheduler)
        runs["paradigms"].append({"tol": tol, **run(lambda f, x, c, s=sched, tol=tol: sample_paradigms(
            f, x, c, scheduler=s, num_steps=num_steps, tol=tol), base)})
        for name in EXACT:
            runs.setdefault(name, []).append(
                {"tol": tol, **run(peer_sampler(name, base, pcm_spec, None, tol=tol, num_steps=num_steps),
                                   pcm if name == "pcm" else base)})
    configs = None if not solver_ks else solver_configs(base, cond, x_T, ref, solver_ks, px)
    target = next((r["distance"] for r in runs["paradigms"] if r["tol"] == 0.1), runs["paradigms"][-1]["distance"])
    matched = {m: cheapest_within(rs, target) for m, rs in runs.items()}
    return {"settings": {"seeds": [seeds[0], seeds[-1]], "max_steps": max_steps, "conditions": len(cond),
                         "ks": list(ks), "num_steps": num_steps, "x_seed": x_seed, "checkpoint": str(checkpoint),
                         "adapter": str(adapter), "pcm_spec": pcm_spec.to_dict(), "distance_unit": "px",
                         "paradigms_tols": list(paradigms_tols), "seconds": time.perf_counter() - t0,
                         **({"student": str(student)} if student is not None else {})},
            "anytime": anytime, "paradigms": {"target_distance": target, "runs": runs, "matched": matched},
            **({"solver_configs": {"ks": list(solver_ks), "distance": configs}} if configs else {})}


def paradigms_scheduler(scheduler):
    """diffusers' DDIMParallelScheduler on ``scheduler``'s schedule, with the DDIM settings ``step_grid`` uses for
    it (final abar 1, the same spacing and clip), so both solve the same sequential DDIM."""
    from diffusers import DDIMParallelScheduler

    keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "clip_sample",
            "clip_sample_range", "prediction_type", "timestep_spacing", "steps_offset")
    cfg = dict(scheduler.config)
    return DDIMParallelScheduler(**{k: cfg[k] for k in keep if k in cfg}, set_alpha_to_one=True)


def format_peers(res: dict) -> str:
    """The two tables of ``bench_peers`` as text."""
    ks = res["settings"]["ks"]
    lines = [f"distance to DDIM-{res['settings']['num_steps']} (px, mean over {res['settings']['conditions']} "
             f"conditions) with a budget of k batched calls (k steps for ddim-k / dpmsolver++ / unipc)",
             f"{'sampler':12s} " + " ".join(f"{'k=' + str(k):>8s}" for k in ks)]
    for name, rows in res["anytime"].items():
        lines.append(f"{name:12s} " + " ".join(f"{r['distance']:8.2f}" for r in rows))
    p = res["paradigms"]
    lines += ["", f"exact samplers at a matched distance (<= {p['target_distance']:.3f} px: diffusers' ParaDiGMS at "
              f"its default tol 0.1), cheapest tol of {res['settings']['paradigms_tols']}",
              f"{'method':12s} {'tol':>6s} {'dist px':>8s} {'calls':>6s} {'calls/smp':>9s} {'NFE/smp':>8s} "
              f"{'wall s':>7s}"]
    for m, r in p["matched"].items():
        lines.append(f"{m:12s} " + ("no tol reached it" if r is None else
                                    f"{r['tol']:6.2f} {r['distance']:8.3f} {r['iterations']:6d} "
                                    f"{r['mean_sample_iterations']:9.2f} {r['nfe']:8.1f} {r['wall_s']:7.2f}"))
    if "solver_configs" in res:
        sc = res["solver_configs"]
        lines += ["", "DPM-Solver++ / UniPC configurations: distance to the reference (px) at k steps",
                  f"{'configuration':34s} " + " ".join(f"{'k=' + str(k):>9s}" for k in sc["ks"])]
        lines += [f"{label:34s} " + " ".join(f"{d:9.2f}" for d in row) for label, row in sc["distance"].items()]
    return "\n".join(lines)
