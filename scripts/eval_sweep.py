"""Score and action distance vs k for Sequential, DDIM-k, Picard, Picard+TAA, PCM and Newton (PushT).

    python scripts/eval_sweep.py                                  # the full sweep (hours on a CPU)
    python scripts/eval_sweep.py --score-ks 1,2,4,8,50            # rollouts at these k only
    python scripts/eval_sweep.py --device cuda --jobs 8           # on a GPU, 8 rollout processes sharing it
    python scripts/eval_sweep.py --samplers ddim,picard --episodes 2 --max-steps 16 --ks 1,2 --out /tmp/sw

1. Reference: sequential DDIM-T (T = --num-steps, 50) rollouts on seeds seed..seed+episodes-1; every
   chunk's observations and initial noise (``chunk_noise``) are recorded. Its mean score is the target.
2. Distances: on up to --distance-conditions of those (condition, noise) pairs (evenly spaced), the mean
   over pairs and the H predicted actions of the Euclidean action distance to DDIM-T's output, in
   normalised units and pixels (normalised / the action normaliser's scale), for every sampler and k.
   ddim (truncated) is the DDIM-T trajectory's position k; Picard, PCM and Newton run once (tol 0,
   max_iters = max k, all iterates kept) and iterate k is read (the last one if converged earlier).
3. Scores: rollouts with each sampler at each k of --score-ks, tol 0 (exactly k iterations), on the same
   seeds and therefore the same noise per (seed, chunk).

k_match = the smallest k whose mean score is within 0.02 of the reference (|difference| <= 0.02) AND
whose mean distance is < 1 px; speedups T / k_match(pcm) and k_match(picard) / k_match(pcm).
A lerobot policy folder as --checkpoint (state-only PushT, run in .venv-lerobot) is swept in the same env and
protocol through ``pcm_policy.lerobot.envpolicy`` (its own processors); pcm then needs its own --adapter (default:
the folder's own ``pcm/``, where one is shipped beside the policy).
Every run and every sampler's distances are cached under OUT/runs/ (keyed by their settings; rerunning
skips them). Writes OUT/sweep.json, sweep.csv, score_vs_k.png, distance_vs_k.png and pareto.png.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

from pcm_policy.evaluation.report import write_report  # noqa: E402
from pcm_policy.evaluation.sweep import SweepConfig, run_sweep  # noqa: E402
from pcm_policy.pusht.checkpoint import CheckpointError  # noqa: E402
from pcm_policy.pusht.task import (  # noqa: E402
    SWEEP_PEERS,  # noqa: E402
    PushTEval,
    sweep_task,
)
from pcm_policy.pusht.task import SWEEP_SAMPLERS as NAMES  # noqa: E402
from pcm_policy.sampling import INITS  # noqa: E402

DEFAULT_ADAPTER = ROOT / "checkpoints/pusht_pcm"
KS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50)
SCORE_TOL, PX_TOL = 0.02, 1.0


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"error: {message}\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samplers", default=None,
                   help=f"comma list of {', '.join(NAMES + SWEEP_PEERS)} (default: {', '.join(NAMES)})")
    p.add_argument("--ks", default=",".join(map(str, KS)), help="iteration budgets k")
    p.add_argument("--score-ks", default=None, help="the ks whose rollouts (scores) are run (default: all)")
    p.add_argument("--score-samplers", default=None,
                   help="samplers whose rollouts are run, among --samplers (default: every one of them but newton, "
                        "whose T sequential JVPs per iteration make it a distance-only reference curve); none: "
                        "distances only (the reference rollouts still run: they give the conditions)")
    p.add_argument("--seed", type=int, default=100000, help="first episode seed (evaluation set: 100000)")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--num-steps", type=int, default=50, help="DDIM steps T of the reference trajectory")
    p.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints/pusht_base")
    p.add_argument("--adapter", type=Path, default=DEFAULT_ADAPTER, help="PCM adapter folder (needed for pcm)")
    p.add_argument("--init", choices=INITS, default=None,
                   help="Picard/PCM/Newton first iterate (default noise; PCM: the adapter's)")
    p.add_argument("--distance-conditions", type=int, default=400)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    p.add_argument("--jobs", type=int, default=1,
                   help="rollout runs in this many parallel processes (one per core; on a GPU they share it)")
    p.add_argument("--device", default="cpu", help="torch device of the policy: cpu (default), cuda or cuda:N")
    p.add_argument("--eager", action="store_true",
                   help="run the UNet eagerly instead of as frozen TorchScript graphs (same outputs, slower)")
    p.add_argument("--out", type=Path, default=ROOT / "runs/sweep",
                   help="output folder (default runs/sweep; the quoted results/sweep* folders are tracked by git "
                        "and need --force)")
    p.add_argument("--force", action="store_true", help="allow writing into files git tracks (results/, checkpoints/)")
    a = p.parse_args(argv)
    try:
        a.ks = [int(k) for k in a.ks.split(",")]
        a.score_ks = None if a.score_ks is None else [int(k) for k in a.score_ks.split(",")]
    except ValueError as e:
        p.exit(2, f"error: --ks and --score-ks must be comma lists of integers ({e})\n")
    a.samplers_given = a.samplers is not None
    a.samplers = ",".join(NAMES) if a.samplers is None else a.samplers
    a.samplers = list(dict.fromkeys(a.samplers.split(",")))
    a.score_samplers = ([s for s in a.samplers if s != "newton"] if a.score_samplers is None
                        else [] if a.score_samplers == "none" else a.score_samplers.split(","))
    bad = [s for s in a.samplers if s not in NAMES + SWEEP_PEERS]
    unswept = [s for s in a.score_samplers if s not in a.samplers]
    errors = [(bad, f"unknown sampler(s) {', '.join(bad)}; choose from {', '.join(NAMES + SWEEP_PEERS)}"),
              (unswept, f"--score-samplers {','.join(unswept)} not in --samplers {','.join(a.samplers)}; score a "
                        "sampler of the sweep, or none for distances only"),
              (min(a.episodes, a.max_steps, a.num_steps, a.distance_conditions, a.threads, a.jobs) < 1,
               "--episodes, --max-steps, --num-steps, --distance-conditions, --threads and --jobs must be >= 1"),
              (not 0 <= a.seed <= 2**32 - a.episodes,
               f"--seed must be in 0..2^32-1 for every episode (the env's reset seed), got {a.seed}")]
    for cond, msg in errors:
        if cond:
            p.exit(2, f"error: {msg}\n")
    return a


def lerobot_sweep_task(checkpoint, adapter, samplers, *, num_steps: int = 50, init: str | None = None,
                       device: str = "cpu", evaluation: PushTEval | None = None):
    """``sweep_task`` for a lerobot policy folder: the PushT Task (this env, its evaluation protocol) on the
    policy seen through ``pcm_policy.lerobot.envpolicy.EnvPolicy`` (its own processors); pcm needs the policy's
    own adapter folder. The cache key names the policy's weights (sha256 of model.safetensors). Picklable as a
    ``functools.partial``. Raises PolicyFolderError / ValueError, ImportError without lerobot."""
    import hashlib

    from pcm_policy.adapters import load_adapter_folder
    from pcm_policy.lerobot.adapter import resolve_policy_folder
    from pcm_policy.lerobot.envpolicy import EnvPolicy
    from pcm_policy.pusht.task import make_task
    from pcm_policy.sampling import ITERATIVE, K_STEPS, SamplerSpec

    bad = [s for s in samplers if s not in NAMES + SWEEP_PEERS]
    if bad:
        raise ValueError(f"unknown sampler(s) {', '.join(bad)}; choose from {', '.join(NAMES + SWEEP_PEERS)}")
    folder = resolve_policy_folder(checkpoint)
    policy = EnvPolicy.from_folder(folder, device)
    specs = {s: SamplerSpec.named(s, num_steps=num_steps, tol=0.0, init=init if s in ITERATIVE else None,
                                  k=1 if s in K_STEPS else None) for s in samplers if s != "pcm"}
    if "pcm" in samplers:
        spec, _ = load_adapter_folder(policy.model, adapter)
        specs["pcm"] = spec.replace(num_steps=num_steps, tol=0.0, **({"init": init} if init else {}))
    task = make_task(policy, evaluation=evaluation, num_steps=num_steps)
    h = hashlib.sha256()
    with open(folder / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    task.key["lerobot_policy"] = h.hexdigest()[:16]
    if policy.device.type != "cpu":
        task.key["device"] = policy.device.type
    return task, {s: specs[s] for s in samplers}


def main(argv=None) -> int:
    import torch

    from pcm_policy.lerobot import adapter_beside, is_policy_folder

    a = parse_args(argv)
    lerobot = is_policy_folder(a.checkpoint)
    try:
        torch.set_num_threads(a.threads)
        evaluation = PushTEval(a.seed, a.episodes, a.max_steps)
        if lerobot:  # a lerobot policy folder: this env and protocol, the policy's own processors
            if a.adapter == DEFAULT_ADAPTER:  # this package's adapter does not fit; the policy's own is <folder>/pcm
                a.adapter = adapter_beside(a.checkpoint) or DEFAULT_ADAPTER
            if "pcm" in a.samplers and a.adapter == DEFAULT_ADAPTER:
                if a.samplers_given:
                    raise ValueError("pcm on a lerobot policy needs --adapter FOLDER (its own PCM adapter, trained "
                                     "with scripts/train_pct.py task=lerobot); or leave pcm out of --samplers")
                a.samplers = [s for s in a.samplers if s != "pcm"]
                print("note: no --adapter for this lerobot policy: pcm left out of the sweep", file=sys.stderr)
            factory = functools.partial(lerobot_sweep_task, a.checkpoint, a.adapter, a.samplers,
                                        num_steps=a.num_steps, init=a.init, device=a.device, evaluation=evaluation)
        else:
            factory = functools.partial(sweep_task, a.checkpoint, a.adapter, a.samplers, num_steps=a.num_steps,
                                        init=a.init, device=a.device, eager=a.eager, evaluation=evaluation)
        task, specs = factory()
        cfg = SweepConfig(samplers=specs, ks=a.ks, score_ks=a.score_ks, out=a.out,
                          score_samplers=[s for s in a.score_samplers if s in specs],
                          conditions=a.distance_conditions, score_tol=SCORE_TOL, dist_tol=PX_TOL, jobs=a.jobs,
                          force=a.force, settings={k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()
                                                            if k != "samplers_given"})
        result = run_sweep(task, cfg, factory=factory)
        write_report(a.out, result, score_label="mean score")
    except (CheckpointError, FileNotFoundError, KeyError, ValueError, ImportError) as e:  # ImportError: no lerobot
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    print(f"wrote {a.out / 'sweep.json'}, sweep.csv, table.md and plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
