"""Roll out the PushT diffusion policy with a chosen sampler; print a summary, write JSON / video.

    python scripts/rollout.py --sampler pcm --seed 0
    python scripts/rollout.py --sampler ddim --seed 100000 --episodes 50 --json results/ddim.json
    python scripts/rollout.py --sampler picard --k 10 --seed 0 --video picard.mp4
    python scripts/rollout.py --sampler pcm --seed 100000 --episodes 50 --budget-ms 50

Samplers (``pcm_policy.sampling.spec``): ddim (sequential DDIM-50; --k truncates), ddim-k (DDIM
re-discretised to --k steps), ddpm (100 ancestral steps), picard, taa (Picard + triangular Anderson
acceleration, training-free), pcm (Picard + the shipped adapter's model switching and its tuned
settings), newton, srds (Parareal over the DDIM grid; --k caps its batched calls), dpmsolver++ and unipc
(diffusers' DPM-Solver++ 2M / UniPC in --k steps on the policy's schedule, x0 clipped to its range:
``pcm_policy.solvers``). Flags left unset take the sampler's defaults (for pcm: the adapter's spec).
A lerobot policy folder as --checkpoint (``pretrained_model/``, a ``checkpoints/<step>`` folder or a
lerobot-train output folder; state-only PushT: ``observation.state`` + ``observation.environment_state``) runs
in the same env and protocol through ``pcm_policy.lerobot.envpolicy`` (its own pre/post-processors), in the
lerobot environment: ``HF_HUB_OFFLINE=1 PYTHONPATH=. .venv-lerobot/bin/python scripts/rollout.py --checkpoint
DIR --sampler taa``; --sampler pcm then needs its own --adapter (default: DIR/pcm, where one is shipped
beside the policy, as in checkpoints/lerobot_pusht).
The iterative samplers warm-start each chunk from the previous chunk's prediction (--no-warm-start:
from their first iterate) and converge per sample; --budget-ms stops a chunk's iterations when its
time budget is spent (checked between iterations, the first always runs) and acts on what they reached.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

BASE, ADAPTER = ROOT / "checkpoints/pusht_base", ROOT / "checkpoints/pusht_pcm"
MAX_SEED = 2**32 - 1  # the env's legacy reset draws from np.random.RandomState(seed)
PCM_ONLY = ("adapter", "k_on", "k_off", "space", "jump_restart_from")  # options only the pcm sampler reads
MAX_EPISODES, MAX_STEPS = 10_000, 100_000  # one batched lockstep run: every env is made up front


def parse_args(argv=None):
    from pcm_policy.sampling import INITS, ITERATIVE, SAMPLERS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sampler", default="pcm", help=f"one of {', '.join(SAMPLERS)} (default pcm)")
    p.add_argument("--seed", type=int, default=0, help="first episode seed (evaluation set: 100000)")
    p.add_argument("--episodes", type=int, default=1, help="seeds seed..seed+N-1, run in lockstep")
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--k", type=int, default=None, help="iteration budget (default: run to tolerance)")
    p.add_argument("--tol", type=float, default=None, help="Picard/PCM/Newton tolerance (default 0.1)")
    p.add_argument("--window", type=int, default=None, help="Picard window (default: all steps)")
    p.add_argument("--num-steps", type=int, default=50, help="DDIM steps T of the trajectory")
    p.add_argument("--checkpoint", type=Path, default=BASE)
    p.add_argument("--adapter", type=Path, default=None, help=f"PCM adapter folder (default {ADAPTER.name})")
    p.add_argument("--k-on", type=int, default=None, help="override the adapter's schedule")
    p.add_argument("--k-off", type=int, default=None, help="override the adapter's schedule")
    p.add_argument("--space", choices=("weight", "feature"), default=None, help="override the switching space")
    p.add_argument("--jump-restart-from", type=int, default=None,
                   help="pcm: after call 1 restart Picard's guesses after this grid position from the jump's estimate "
                        "(sampling.Jump.restart; 25 was chosen on training seeds; exactness kept, docs/pusht.md)")
    p.add_argument("--safeguard", type=float, default=None,
                   help="Picard/PCM iterate safeguard kappa (clamps unconverged positions; exactness kept); "
                        "PCM default: the adapter's")
    p.add_argument("--taa-memory", type=int, default=None,
                   help="taa/pcm: triangular Anderson memory m >= 2 (default: the sampler's; PCM: the adapter's)")
    p.add_argument("--taa-mixing", type=float, default=None,
                   help="taa/pcm: TAA mixing beta in (0, 1] (default: the sampler's; PCM: the adapter's). "
                        "--taa-memory 2 --taa-mixing 0.7 takes fewer iterations at tol 0.1 (docs/pusht.md)")
    p.add_argument("--init", choices=INITS, default=None,
                   help="Picard/PCM/Newton first iterate: x_T everywhere (noise) or scaled by the noise level "
                        "(prior); exactness kept either way. Default noise; PCM: the adapter's")
    p.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=None,
                   help="picard/taa/pcm/newton: start each chunk from the previous chunk's prediction, shifted by "
                        "the executed actions (exactness kept); on by default for them, --no-warm-start: off")
    p.add_argument("--budget-ms", type=float, default=None,
                   help="picard/taa/pcm/newton: time budget per chunk in ms; the sampler returns its current "
                        "iterate when it is spent (read between iterations; the first iteration always runs)")
    p.add_argument("--video", type=Path, default=None, help="mp4 or gif of the first episode")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--force", action="store_true", help="allow --json / --video to replace files git tracks (results/)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (capped at the machine's cores)")
    p.add_argument("--device", default="cpu", help="torch device of the policy: cpu (default), cuda or cuda:N")
    p.add_argument("--eager", action="store_true",
                   help="run the UNet eagerly instead of as frozen TorchScript graphs (same outputs, slower)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="replay the UNet's CUDA calls from captured CUDA graphs (sampling.CudaGraphs; with --device "
                        "cuda, best with --eager); a no-op on a CPU")
    a = p.parse_args(argv)
    iterative = a.sampler in ITERATIVE
    errors = [
        (a.sampler not in SAMPLERS, f"unknown sampler {a.sampler!r}; choose one of {', '.join(SAMPLERS)}"),
        (not 0 <= a.seed <= MAX_SEED - max(a.episodes - 1, 0),
         f"--seed must be in 0..{MAX_SEED} for every episode (seeds --seed..--seed+--episodes-1), got {a.seed}"),
        (a.k is not None and a.k < 1, f"--k must be >= 1, got {a.k}"),
        (a.num_steps < 1, f"--num-steps (DDIM steps T) must be >= 1 (at most the policy's training timesteps, "
                          f"100 for the shipped policy), got {a.num_steps}"),
        (a.k is not None and a.sampler == "ddim" and a.k > a.num_steps,
         f"--k truncates the {a.num_steps}-step DDIM trajectory: it must be in 1..--num-steps={a.num_steps}, "
         f"got {a.k} (re-discretised DDIM in k steps: --sampler ddim-k)"),
        (a.k is not None and iterative and a.k > a.num_steps,
         f"--k must be in 1..--num-steps={a.num_steps} for {a.sampler}: it converges exactly in at most T "
         f"iterations, got {a.k}"),
        (a.tol is not None and not (math.isfinite(a.tol) and a.tol >= 0),
         f"--tol must be a finite number >= 0, got {a.tol}"),
        (a.episodes < 1 or a.max_steps < 1, "--episodes and --max-steps must be >= 1"),
        (a.episodes > MAX_EPISODES, f"--episodes runs every episode at once, in lockstep: at most {MAX_EPISODES}, got "
                                    f"{a.episodes}; split a larger evaluation into --seed ranges"),
        (a.max_steps > MAX_STEPS, f"--max-steps must be at most {MAX_STEPS}, got {a.max_steps}"),
        (a.window is not None and not 1 <= a.window <= a.num_steps,
         f"--window must be in 1..--num-steps={a.num_steps}, got {a.window}"),
        (a.window is not None and not iterative, f"--window is for picard, taa, pcm and newton, not {a.sampler}"),
        (a.jump_restart_from is not None and not 0 <= a.jump_restart_from < a.num_steps,
         f"--jump-restart-from must be a grid position in 0..{a.num_steps - 1}, got {a.jump_restart_from}"),
        (a.safeguard is not None and not (math.isfinite(a.safeguard) and a.safeguard > 0),
         f"--safeguard must be a finite number > 0, got {a.safeguard}"),
        (a.taa_memory is not None and a.taa_memory < 2, f"--taa-memory must be >= 2, got {a.taa_memory}"),
        (a.taa_mixing is not None and not 0 < a.taa_mixing <= 1, f"--taa-mixing must be in (0, 1], got {a.taa_mixing}"),
        ((a.taa_memory, a.taa_mixing) != (None, None) and a.sampler not in ("taa", "pcm"),
         f"--taa-memory / --taa-mixing need --sampler taa or pcm, not {a.sampler}"),
        (a.sampler == "ddim-k" and a.k is None, "--sampler ddim-k needs --k (the number of DDIM steps)"),
        (a.sampler in ("dpmsolver++", "unipc") and a.k is None, f"--sampler {a.sampler} needs --k (its steps)"),
        (a.warm_start and not iterative, "--warm-start needs picard, taa, pcm or newton"),
        (a.budget_ms is not None and not iterative, "--budget-ms needs picard, taa, pcm or newton"),
        (a.budget_ms is not None and not (math.isfinite(a.budget_ms) and a.budget_ms >= 0),
         f"--budget-ms must be a finite number >= 0, got {a.budget_ms}"),
        (a.video is not None and a.video.suffix not in (".mp4", ".gif"), "--video must end in .mp4 or .gif"),
    ]
    for bad, msg in errors:
        if bad:
            p.exit(2, f"error: {msg}\n")
    from pcm_policy.device import check_threads
    from pcm_policy.io import check_not_shipped

    try:  # every output path before any work: a 50-episode evaluation is not lost to an unwritable --json
        a.threads = check_threads(a.threads)
        for flag, path in (("--json", a.json), ("--video", a.video)):
            if path is not None:
                check_not_shipped(path, a.force, "--force", flag)
    except ValueError as e:
        p.exit(2, f"error: {e}\n")
    if a.warm_start is None:
        a.warm_start = iterative
    ignored = [f"--{n.replace('_', '-')}" for n in PCM_ONLY if getattr(a, n) is not None
               and not (n == "adapter" and a.sampler == "consistency")]  # the student's adapter
    if ignored and a.sampler != "pcm":
        print(f"note: --sampler {a.sampler} ignores {', '.join(ignored)} (only --sampler pcm reads them)",
              file=sys.stderr)
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from pcm_policy import paper
    from pcm_policy.adapters import load_sampler
    from pcm_policy.device import pick_device
    from pcm_policy.pusht.checkpoint import CheckpointError, load_policy
    from pcm_policy.pusht.rollout import run_rollouts, summarize

    torch.set_num_threads(args.threads)
    from pcm_policy.lerobot import adapter_beside, is_policy_folder

    lerobot = is_policy_folder(args.checkpoint)  # a lerobot policy folder: its own processors, our env's protocol
    try:
        if lerobot:
            if args.sampler == "pcm" and args.adapter is None:
                args.adapter = adapter_beside(args.checkpoint)  # <folder>/pcm, shipped beside the policy
                if args.adapter is None:
                    raise ValueError("--sampler pcm on a lerobot policy needs --adapter FOLDER (its PCM adapter, "
                                     "trained with scripts/train_pct.py task=lerobot; none in FOLDER/pcm); or pick "
                                     "taa, picard, ddim")
            from pcm_policy.lerobot.envpolicy import EnvPolicy

            policy = EnvPolicy.from_folder(args.checkpoint, str(pick_device(args.device)))
        else:
            policy = load_policy(args.checkpoint, pick_device(args.device))
        given = dict(num_steps=args.num_steps, k=args.k, tol=args.tol, window=args.window, init=args.init,
                     safeguard=args.safeguard, taa_memory=args.taa_memory, taa_mixing=args.taa_mixing)
        if args.sampler == "pcm":  # the adapter's spec, where the command line does not override it
            given.update(switch_k_on=args.k_on, switch_k_off=args.k_off, switch_space=args.space)
            if args.jump_restart_from is not None:
                given.update(jump_restart=(0,), jump_restart_from=args.jump_restart_from)
        if args.sampler == "consistency" and args.adapter is None:
            raise ValueError("--sampler consistency needs --adapter FOLDER (a consistency-distilled student, trained "
                             "with scripts/train_consistency.py)")
        source = args.adapter or ADAPTER if args.sampler == "pcm" else args.adapter if args.sampler == "consistency" \
            else args.sampler
        sampler = load_sampler(source,
                               policy.noise_scheduler, module=policy.model,
                               full_copy=None if lerobot else lambda: paper.add_full_copy(policy), **given)
        spec = sampler.spec
        if not lerobot:
            policy.freeze(not args.eager)
        if args.cuda_graphs:
            if lerobot:
                raise ValueError("--cuda-graphs captures this package's own policies; drop it for a lerobot folder")
            policy.cuda_graphs()
    except (CheckpointError, ValueError, FileNotFoundError, ImportError) as e:  # ImportError: lerobot missing
        print(f"error: {e}", file=sys.stderr)
        return 2

    seeds = list(range(args.seed, args.seed + args.episodes))
    label = spec.label()

    def caption(c):
        if c is None:
            return f"{label} | start"
        return f"{label} | chunk {c['chunk']} | {c['iterations']} it | {1000 * c['latency_s']:.0f} ms"

    t0 = time.perf_counter()
    try:
        out = run_rollouts(policy, sampler, seeds, max_steps=args.max_steps,
                           record={seeds[0]} if args.video else None, caption=caption, progress=args.episodes > 1,
                           warm_start=args.warm_start,
                           budget_s=None if args.budget_ms is None else args.budget_ms / 1000)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: nothing written (a rollout keeps no partial results); run the command again",
              file=sys.stderr)
        return 130
    wall = time.perf_counter() - t0
    summary = summarize(out["episodes"])
    print(f"{'seed':>7} {'score':>6} {'success':>7} {'steps':>5} {'iters/chunk':>11} {'ms/chunk':>8}")
    for e in out["episodes"]:
        its = sum(c["iterations"] for c in e["chunks"]) / len(e["chunks"])
        ms = 1000 * sorted(c["latency_s"] for c in e["chunks"])[len(e["chunks"]) // 2]
        print(f"{e['seed']:>7} {e['score']:>6.3f} {e['success']!s:>7} {e['steps']:>5} {its:>11.1f} {ms:>8.1f}")
    print(f"{label}: mean score {summary['mean_score']:.3f}, success {100 * summary['success_rate']:.0f}%, "
          f"{summary['mean_iterations']:.2f} iterations/chunk per sample ({summary['mean_batch_iterations']:.2f} "
          f"per batched call), "
          f"median {1000 * summary['median_latency_s']:.1f} ms/chunk, "
          f"{wall:.1f} s total, {args.threads} thread(s), {args.device}{', eager' if args.eager else ''}"
          f"{', warm start' if args.warm_start else ''}")
    if out["cold_restarts"]:
        print(f"note: {out['cold_restarts']} chunk sample(s) diverged (non-finite iterate) and were re-solved from a "
              "cold first iterate")
    if args.budget_ms is not None:
        print(f"budget {args.budget_ms:g} ms/chunk: stopped {100 * summary['budget_hit_rate']:.1f}% of the samples' "
              f"chunks before they converged")
    if args.video:
        from envs.pusht.video import write_video

        write_video(out["frames"][seeds[0]], args.video, fps=10)
        print(f"video: {args.video}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        from pcm_policy.io import write_json

        write_json(args.json, {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                               "sampler": spec.to_dict(), "summary": summary, "episodes": out["episodes"]})
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
